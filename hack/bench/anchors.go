package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The anchor: the same distribution registry binary as the upstream, in proxy mode in front of
// it (proxy.remoteurl, ttl 0), with its own filesystem storage and loopback port.

const (
	fanOutClients   = 32
	outageReqCap    = 20 * time.Second // per tag resolution during the outage
	outageBudget    = 60 * time.Second // the whole outage measurement
	outageFollowUps = 100
	outageParallel  = 10
)

// anchorResults holds what anchorBench measured.
type anchorResults struct {
	size   int64
	rounds int

	// Warm hit and cold miss, one client: lifeboat, the proxy, the upstream direct.
	warmLB, warmPX, direct  []time.Duration
	coldLB, coldPX          []time.Duration
	ttfbLB, ttfbPX, ttfbDir []time.Duration

	// Fan-out of fanOutClients cold clients.
	fanRounds              int
	fanBytesLB, fanBytesPX []int64         // upstream bytes for the fan-out
	fanSlowLB, fanSlowPX   []time.Duration // slowest client of the fan-out
	aloneLB, alonePX       []time.Duration // one client alone, cold
	rssLB, rssPX           int64           // peak RSS (bytes) during the fan-out, largest of the rounds

	// Outage: the upstream blackholed after the tag was cached.
	outLB, outPX outage
}

type outage struct {
	first         time.Duration
	firstTimedOut bool
	firstErr      error           // answered with an error status or a failed connection
	followUps     []time.Duration // answered
	timedOut      int             // follow-ups cut at outageReqCap
	errors        int             // follow-ups answered with an error status or a failed connection
	notRun        int             // follow-ups left out once the p99 was known to exceed the cap
}

// startProxy runs the distribution registry in proxy mode in front of upstream, with storage
// in dir.
func startProxy(dir, tools, upstream string) (*daemon, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\nproxy:\n  remoteurl: http://%s\n  ttl: 0s\n",
		filepath.Join(dir, "data"), addr, upstream)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	d, err := startDaemon(dir, filepath.Join(tools, "registry"), []string{"serve", filepath.Join(dir, "config.yml")},
		[]string{"OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none"})
	if err != nil {
		return nil, "", err
	}
	return d, addr, waitHTTP("http://"+addr+"/v2/", d)
}

// proxyHasBlob reports whether the proxy has committed the blob to its storage and linked it
// into the repository, so that the next GET is served locally.
func proxyHasBlob(dir, repo, hex string) bool {
	_, err := os.Stat(filepath.Join(dir, "data", "docker", "registry", "v2", "repositories", repo, "_layers", "sha256", hex, "link"))
	return err == nil
}

// peakRSS returns the VmHWM of a running process in bytes, or 0.
func peakRSS(d *daemon) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// anchorBench measures lifeboat against the distribution registry in proxy mode, and both
// against the upstream registry they front.
func anchorBench(ctx context.Context, scratch, tools, lifeboat string, size int64, rounds int) (anchorResults, error) {
	res := anchorResults{rounds: rounds}
	base := filepath.Join(scratch, "anchors")
	reg, regAddr, err := startRegistry(base, tools)
	if err != nil {
		return res, err
	}
	defer reg.stop()

	dgst, size, err := pushBlobImage(ctx, regAddr, "library/anchor:1", size)
	if err != nil {
		return res, err
	}
	res.size = size
	blobPath := "/v2/library/anchor/blobs/" + dgst.String()
	n := 0
	fresh := func(kind string) string {
		n++
		return filepath.Join(base, fmt.Sprintf("%s-%d", kind, n))
	}

	// 1 and 2: cold miss then warm hit, each on a fresh lifeboat and a fresh proxy, alternating
	// with the upstream direct.
	lbRound := func() error {
		dir := fresh("lifeboat")
		defer os.RemoveAll(dir)
		lb, addr, err := startLifeboat(dir, lifeboat, regAddr)
		if err != nil {
			return err
		}
		defer lb.stop()
		t, d, err := fetch("http://"+addr+blobPath, size)
		if err != nil {
			return fmt.Errorf("lifeboat cold: %w", err)
		}
		res.ttfbLB, res.coldLB = append(res.ttfbLB, t), append(res.coldLB, d)
		if _, d, err = fetch("http://"+addr+blobPath, size); err != nil {
			return fmt.Errorf("lifeboat warm: %w", err)
		}
		res.warmLB = append(res.warmLB, d)
		return nil
	}
	pxRound := func() error {
		dir := fresh("proxy")
		defer os.RemoveAll(dir)
		px, addr, err := startProxy(dir, tools, regAddr)
		if err != nil {
			return err
		}
		defer px.stop()
		t, d, err := fetch("http://"+addr+blobPath, size)
		if err != nil {
			return fmt.Errorf("proxy cold: %w", err)
		}
		res.ttfbPX, res.coldPX = append(res.ttfbPX, t), append(res.coldPX, d)
		// The proxy commits the blob after the last byte is sent; wait for it, or the "warm"
		// GET would be another miss.
		for deadline := time.Now().Add(30 * time.Second); !proxyHasBlob(dir, "library/anchor", dgst.Hex); {
			if time.Now().After(deadline) {
				return errors.New("the proxy did not store the blob within 30 s of serving it")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if _, d, err = fetch("http://"+addr+blobPath, size); err != nil {
			return fmt.Errorf("proxy warm: %w", err)
		}
		res.warmPX = append(res.warmPX, d)
		return nil
	}
	for i := range rounds {
		t, d, err := fetch("http://"+regAddr+blobPath, size)
		if err != nil {
			return res, err
		}
		res.ttfbDir, res.direct = append(res.ttfbDir, t), append(res.direct, d)
		first, second := lbRound, pxRound
		if i%2 == 1 {
			first, second = pxRound, lbRound
		}
		if err := first(); err != nil {
			return res, err
		}
		if err := second(); err != nil {
			return res, err
		}
	}

	// 3: fan-out. Each subject gets a fresh instance in front of its own counting forwarder,
	// once for one client alone and once for fanOutClients at once.
	fanOnce := func(kind string, clients int) (slowest time.Duration, upstream, rss int64, err error) {
		fwd, err := startForwarder(regAddr)
		if err != nil {
			return 0, 0, 0, err
		}
		defer fwd.close()
		dir := fresh(kind)
		defer os.RemoveAll(dir)
		var d *daemon
		var addr string
		if kind == "lifeboat" {
			d, addr, err = startLifeboat(dir, lifeboat, fwd.addr())
		} else {
			d, addr, err = startProxy(dir, tools, fwd.addr())
		}
		if err != nil {
			return 0, 0, 0, err
		}
		defer d.stop()
		start0 := fwd.bytes()
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, t, err := fetch("http://"+addr+blobPath, size)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				}
				slowest = max(slowest, t)
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			return 0, 0, 0, fmt.Errorf("%s fan-out: %d of %d clients failed, first: %w", kind, len(errs), clients, errs[0])
		}
		return slowest, fwd.bytes() - start0, peakRSS(d), nil
	}
	res.fanRounds = min(rounds, 2)
	for i := range res.fanRounds {
		kinds := []string{"lifeboat", "proxy"}
		if i%2 == 1 {
			kinds = []string{"proxy", "lifeboat"}
		}
		for _, kind := range kinds {
			alone, _, _, err := fanOnce(kind, 1)
			if err != nil {
				return res, err
			}
			slow, up, rss, err := fanOnce(kind, fanOutClients)
			if err != nil {
				return res, err
			}
			if kind == "lifeboat" {
				res.aloneLB, res.fanSlowLB, res.fanBytesLB = append(res.aloneLB, alone), append(res.fanSlowLB, slow), append(res.fanBytesLB, up)
				res.rssLB = max(res.rssLB, rss)
			} else {
				res.alonePX, res.fanSlowPX, res.fanBytesPX = append(res.alonePX, alone), append(res.fanSlowPX, slow), append(res.fanBytesPX, up)
				res.rssPX = max(res.rssPX, rss)
			}
		}
	}

	// 4: outage. Both cache the tag through one forwarder, which is then blackholed.
	fwd, err := startForwarder(regAddr)
	if err != nil {
		return res, err
	}
	defer fwd.close()
	lbDir, pxDir := fresh("lifeboat"), fresh("proxy")
	defer os.RemoveAll(lbDir)
	defer os.RemoveAll(pxDir)
	lb, lbAddr, err := startLifeboat(lbDir, lifeboat, fwd.addr())
	if err != nil {
		return res, err
	}
	defer lb.stop()
	px, pxAddr, err := startProxy(pxDir, tools, fwd.addr())
	if err != nil {
		return res, err
	}
	defer px.stop()
	tag := "/v2/library/anchor/manifests/1"
	for _, a := range []string{lbAddr, pxAddr} {
		if err := getManifest("http://" + a + tag); err != nil {
			return res, fmt.Errorf("cache the tag: %w", err)
		}
		if _, err := head("http://" + a + tag); err != nil {
			return res, fmt.Errorf("cache the tag: %w", err)
		}
	}
	fwd.blackhole()
	octx, cancel := context.WithTimeout(ctx, outageBudget)
	defer cancel()
	res.outLB = measureOutage(octx, "http://"+lbAddr+tag)
	res.outPX = measureOutage(octx, "http://"+pxAddr+tag)
	return res, nil
}

func getManifest(url string) error {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1)+", "+string(types.DockerManifestSchema2))
	c := http.Client{Timeout: outageReqCap}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// headCapped is head with the request cut at outageReqCap (or when ctx ends).
func headCapped(ctx context.Context, url string) (d time.Duration, timedOut bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, outageReqCap)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1)+", "+string(types.DockerManifestSchema2))
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	d = time.Since(start)
	if err != nil {
		return d, ctx.Err() != nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return d, false, fmt.Errorf("HEAD %s: %s", url, resp.Status)
	}
	return d, false, nil
}

// measureOutage times the first tag resolution, then outageFollowUps more, outageParallel at a
// time. Once more than 1% of the follow-ups have timed out their p99 is known to exceed the cap,
// and the rest are not run; so are any still waiting when ctx ends.
func measureOutage(ctx context.Context, url string) outage {
	var o outage
	d, to, err := headCapped(ctx, url)
	o.first, o.firstTimedOut = d, to || (err != nil && ctx.Err() != nil)
	if err != nil && !o.firstTimedOut {
		o.firstErr = err
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		sem = make(chan struct{}, outageParallel)
	)
	for range outageFollowUps {
		select {
		case sem <- struct{}{}:
		case <-fctx.Done():
		}
		if fctx.Err() != nil {
			mu.Lock()
			o.notRun++
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d, to, err := headCapped(fctx, url)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case to && d >= outageReqCap-100*time.Millisecond:
				o.timedOut++
				if o.timedOut*100 > outageFollowUps {
					stop()
				}
			case fctx.Err() != nil:
				o.notRun++ // cut short because the answer was already known or the budget ran out
			case err != nil:
				o.errors++
			default:
				o.followUps = append(o.followUps, d)
			}
		}()
	}
	wg.Wait()
	return o
}

// p99 describes the 99th percentile of the follow-ups, counting timed-out ones as slowest.
func (o outage) p99() string {
	total := len(o.followUps) + o.timedOut
	if total == 0 {
		return "n/a"
	}
	idx := min(total-1, int(float64(total)*0.99))
	if idx >= len(o.followUps) || o.timedOut*100 > outageFollowUps {
		return fmt.Sprintf("> %s (timed out)", fmtSec(outageReqCap))
	}
	return percentile(o.followUps, 0.99).Round(time.Microsecond).String()
}

func (o outage) firstString() string {
	if o.firstTimedOut {
		return fmt.Sprintf("> %s (timed out)", fmtSec(outageReqCap))
	}
	if o.firstErr != nil {
		return fmt.Sprintf("failed after %s", o.first.Round(time.Millisecond))
	}
	return o.first.Round(time.Microsecond).String()
}

func (o outage) note() string {
	s := fmt.Sprintf("%d answered", len(o.followUps))
	if o.timedOut > 0 {
		s += fmt.Sprintf(", %d timed out", o.timedOut)
	}
	if o.errors > 0 {
		s += fmt.Sprintf(", %d errors", o.errors)
	}
	if o.notRun > 0 {
		why := "the outage time budget was spent"
		if o.timedOut*100 > outageFollowUps {
			why = "the p99 was already known to exceed the cap"
		}
		s += fmt.Sprintf(", %d not run (%s)", o.notRun, why)
	}
	return s
}

func fmtSec(d time.Duration) string { return fmt.Sprintf("%.0f s", d.Seconds()) }

func mibps(size int64, ds []time.Duration) float64 {
	return float64(size) / median(ds).Seconds() / (1 << 20)
}

func medianInt(xs []int64) int64 {
	ds := make([]time.Duration, len(xs))
	for i, x := range xs {
		ds[i] = time.Duration(x)
	}
	return int64(median(ds))
}

func renderAnchors(b *strings.Builder, r anchorResults) {
	fmt.Fprintf(b, "\n## Against the distribution registry in proxy mode\n\n")
	fmt.Fprintf(b, "The anchor is the same distribution registry binary as the upstream, in proxy mode in front of it\n"+
		"(`proxy.remoteurl`, `ttl: 0`, filesystem storage); each is a separate process on loopback. One %d MiB\n"+
		"blob; medians of %d alternating rounds (fan-out: %d rounds), a fresh lifeboat root and fresh proxy\n"+
		"storage for every cold measurement. The last column is lifeboat's figure divided by the proxy's.\n\n",
		r.size>>20, r.rounds, r.fanRounds)
	fmt.Fprintf(b, "| measurement | lifeboat | distribution proxy | upstream direct | lifeboat ÷ proxy |\n|---|---:|---:|---:|---:|\n")
	row := func(what, lb, px, dir string, ratio float64) {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.2f |\n", what, lb, px, dir, ratio)
	}
	mb := func(ds []time.Duration) string { return fmt.Sprintf("%.0f MiB/s", mibps(r.size, ds)) }
	dur := func(ds []time.Duration) string { return median(ds).Round(time.Microsecond).String() }
	row("warm hit, blob GET (higher is better)", mb(r.warmLB), mb(r.warmPX), mb(r.direct), mibps(r.size, r.warmLB)/mibps(r.size, r.warmPX))
	row("cold miss, blob GET (higher is better)", mb(r.coldLB), mb(r.coldPX), mb(r.direct), mibps(r.size, r.coldLB)/mibps(r.size, r.coldPX))
	row("cold miss, time to first byte (lower is better)", dur(r.ttfbLB), dur(r.ttfbPX), dur(r.ttfbDir), median(r.ttfbLB).Seconds()/median(r.ttfbPX).Seconds())
	copies := func(xs []int64) string { return fmt.Sprintf("%.2f copies", float64(medianInt(xs))/float64(r.size)) }
	row(fmt.Sprintf("fan-out, %d cold clients: upstream bytes (goal 1 copy)", fanOutClients), copies(r.fanBytesLB), copies(r.fanBytesPX), "–",
		float64(medianInt(r.fanBytesLB))/float64(medianInt(r.fanBytesPX)))
	slowRatio := func(slow, alone []time.Duration) float64 { return median(slow).Seconds() / median(alone).Seconds() }
	row(fmt.Sprintf("fan-out, slowest of %d ÷ one client alone (goal ≤ 1.2)", fanOutClients),
		fmt.Sprintf("%.2f (%s ÷ %s)", slowRatio(r.fanSlowLB, r.aloneLB), median(r.fanSlowLB).Round(time.Millisecond), median(r.aloneLB).Round(time.Millisecond)),
		fmt.Sprintf("%.2f (%s ÷ %s)", slowRatio(r.fanSlowPX, r.alonePX), median(r.fanSlowPX).Round(time.Millisecond), median(r.alonePX).Round(time.Millisecond)),
		"–", slowRatio(r.fanSlowLB, r.aloneLB)/slowRatio(r.fanSlowPX, r.alonePX))
	if r.rssLB > 0 && r.rssPX > 0 {
		row("fan-out, peak RSS (lower is better)", fmt.Sprintf("%.0f MiB", float64(r.rssLB)/(1<<20)), fmt.Sprintf("%.0f MiB", float64(r.rssPX)/(1<<20)), "–", float64(r.rssLB)/float64(r.rssPX))
	}
	outRatio := func(a, b time.Duration, aTO, bTO bool) string {
		if aTO || bTO {
			return "–"
		}
		return fmt.Sprintf("%.4f", a.Seconds()/b.Seconds())
	}
	fmt.Fprintf(b, "| outage, first tag HEAD (lower is better) | %s | %s | – | %s |\n", r.outLB.firstString(), r.outPX.firstString(),
		outRatio(r.outLB.first, r.outPX.first, r.outLB.firstTimedOut || r.outLB.firstErr != nil, r.outPX.firstTimedOut || r.outPX.firstErr != nil))
	lbTO, pxTO := r.outLB.p99() == "n/a" || strings.HasPrefix(r.outLB.p99(), ">"), r.outPX.p99() == "n/a" || strings.HasPrefix(r.outPX.p99(), ">")
	ratio := "–"
	if !lbTO && !pxTO {
		ratio = outRatio(percentile(r.outLB.followUps, 0.99), percentile(r.outPX.followUps, 0.99), false, false)
	}
	fmt.Fprintf(b, "| outage, p99 of the next %d tag HEADs, %d at a time (lower is better) | %s | %s | – | %s |\n", outageFollowUps, outageParallel, r.outLB.p99(), r.outPX.p99(), ratio)
	agg := func(slow []time.Duration) float64 {
		return float64(r.size) * fanOutClients / median(slow).Seconds() / (1 << 30)
	}
	fmt.Fprintf(b, "\nFan-out: every party and all %d clients share the machine's %d CPUs, so delivering %d copies is itself\n"+
		"bound by CPU here (lifeboat delivered %.1f GiB/s to the clients in aggregate, the proxy %.1f GiB/s); the\n"+
		"upstream bytes are counted by a forwarder in front of the upstream, one per instance.\n",
		fanOutClients, runtime.NumCPU(), fanOutClients, agg(r.fanSlowLB), agg(r.fanSlowPX))
	fmt.Fprintf(b, "\nOutage: the upstream of both is a forwarder that, once the tag is cached by each, closes every\n"+
		"connection and then accepts new ones and never answers. Each tag HEAD is cut at %s and the whole\n"+
		"outage measurement at %s. Follow-ups through lifeboat: %s; through the proxy: %s.\n",
		fmtSec(outageReqCap), fmtSec(outageBudget), r.outLB.note(), r.outPX.note())
}
