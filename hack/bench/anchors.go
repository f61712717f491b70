package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// The anchor: the same distribution registry binary as the upstream, in proxy mode in front of
// it (proxy.remoteurl, ttl 0), with its own filesystem storage and loopback port.

const (
	fanOutClients   = 32
	fanOutLink      = 125_000_000      // bytes/s: the upstream over a 1 Gbit/s link, for the second fan-out
	outageReqCap    = 20 * time.Second // per tag resolution during the outage
	outageBudget    = 60 * time.Second // each party's whole outage measurement
	outageFollowUps = 100
	outageParallel  = 10
)

// anchorResults holds what anchorBench measured.
type anchorResults struct {
	size int64 // of the blob in blobs[0], the one the fan-out fetches

	// Warm hit and cold miss, one client, for each blob size.
	blobs []blobResults

	// Fan-out of fanOutClients cold clients.
	fanRounds              int
	fanBytesLB, fanBytesPX []int64         // upstream bytes for the fan-out
	fanSlowLB, fanSlowPX   []time.Duration // slowest client of the fan-out
	aloneLB, alonePX       []time.Duration // one client alone, cold
	rssLB, rssPX           int64           // peak RSS (bytes) during the fan-out, largest of the rounds

	// The same fan-out with the upstream behind a fanOutLink link, lifeboat only.
	linkBytesLB                       []int64
	linkSlowLB, linkAlone, linkDirect []time.Duration // linkDirect: one GET from the upstream over the link

	// Outage: the upstream blackholed after the tag was cached.
	outLB, outPX outage
}

// blobResults holds the single-client GETs of one blob: a cold miss then a warm hit on a fresh
// lifeboat and on a fresh proxy each round, alternating with a GET from the upstream direct.
type blobResults struct {
	size   int64
	rounds int

	lb, px          partyGets
	direct, ttfbDir []time.Duration // GETs from the upstream
}

// partyGets are one party's GETs of a blob over the rounds.
type partyGets struct {
	ttfb, cold, warm []time.Duration
	// CPU seconds per GiB the serving process used: for a cold miss from the GET to the blob's
	// commit, for a warm hit over the GET.
	cpuCold, cpuWarm []float64
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
	return runRegistry(dir, tools, "", fmt.Sprintf("proxy:\n  remoteurl: http://%s\n  ttl: 0s\n", upstream))
}

// proxyHasBlob reports whether the proxy has committed the blob to its storage and linked it
// into the repository, so that the next GET is served locally.
func proxyHasBlob(dir, repo, hex string) bool {
	_, err := os.Stat(filepath.Join(dir, "data", "docker", "registry", "v2", "repositories", repo, "_layers", "sha256", hex, "link"))
	return err == nil
}

// peakRSS returns the VmHWM of a running process in bytes, or 0.
func peakRSS(d *daemon) int64 {
	return procKB(fmt.Sprintf("/proc/%d/status", d.Pid()), "VmHWM:")
}

// anchorBench measures lifeboat against the distribution registry in proxy mode, and both
// against the upstream registry they front: single-client GETs of a size blob over rounds and
// of a largeSize blob over largeRounds, then the fan-out and the outage with the size blob.
func anchorBench(ctx context.Context, scratch, tools, lifeboat string, size int64, rounds int, largeSize int64, largeRounds, fanRounds int) (anchorResults, error) {
	var res anchorResults
	base := filepath.Join(scratch, "anchors")
	reg, regAddr, err := startRegistry(base, tools)
	if err != nil {
		return res, err
	}
	defer reg.stop()

	n := 0
	fresh := func(kind string) string {
		n++
		return filepath.Join(base, fmt.Sprintf("%s-%d", kind, n))
	}

	// 1 and 2: single-client GETs, the usual blob then the large one.
	dgst, size, err := pushBlobImage(ctx, regAddr, "library/anchor:1", size)
	if err != nil {
		return res, err
	}
	res.size = size
	blobPath := "/v2/library/anchor/blobs/" + dgst.String()
	small, err := blobBench(fresh, tools, lifeboat, regAddr, "library/anchor", dgst, size, rounds)
	if err != nil {
		return res, err
	}
	ldgst, lsize, err := pushBlobImage(ctx, regAddr, "library/anchor-large:1", largeSize)
	if err != nil {
		return res, err
	}
	large, err := blobBench(fresh, tools, lifeboat, regAddr, "library/anchor-large", ldgst, lsize, largeRounds)
	if err != nil {
		return res, err
	}
	res.blobs = []blobResults{small, large}

	// 3: fan-out. Each subject gets a fresh instance in front of its own counting forwarder,
	// once for one client alone and once for fanOutClients at once. The forwarder's link is
	// limited to link bytes/s, or not at all when link is 0.
	fanOnce := func(kind string, clients int, link int64) (slowest time.Duration, upstream, rss int64, err error) {
		fwd, err := startLinkForwarder(regAddr, link)
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
	res.fanRounds = fanRounds
	fanParty := func(kind string) func() error {
		return func() error {
			alone, _, _, err := fanOnce(kind, 1, 0)
			if err != nil {
				return err
			}
			slow, up, rss, err := fanOnce(kind, fanOutClients, 0)
			if err != nil {
				return err
			}
			if kind == "lifeboat" {
				res.aloneLB, res.fanSlowLB, res.fanBytesLB = append(res.aloneLB, alone), append(res.fanSlowLB, slow), append(res.fanBytesLB, up)
				res.rssLB = max(res.rssLB, rss)
			} else {
				res.alonePX, res.fanSlowPX, res.fanBytesPX = append(res.alonePX, alone), append(res.fanSlowPX, slow), append(res.fanBytesPX, up)
				res.rssPX = max(res.rssPX, rss)
			}
			return nil
		}
	}
	if err := alternate(fanRounds, fanParty("lifeboat"), fanParty("proxy")); err != nil {
		return res, err
	}
	// Over a limited link, lifeboat only (32 copies through the proxy would take over a minute
	// a round at this rate), alternating with one GET from the upstream over the link.
	overLink := func() error {
		fwd, err := startLinkForwarder(regAddr, fanOutLink)
		if err != nil {
			return err
		}
		_, direct, err := fetch("http://"+fwd.addr()+blobPath, size)
		fwd.close()
		if err != nil {
			return fmt.Errorf("GET from the upstream over the link: %w", err)
		}
		res.linkDirect = append(res.linkDirect, direct)
		return nil
	}
	lbOverLink := func() error {
		alone, _, _, err := fanOnce("lifeboat", 1, fanOutLink)
		if err != nil {
			return err
		}
		slow, up, _, err := fanOnce("lifeboat", fanOutClients, fanOutLink)
		if err != nil {
			return err
		}
		res.linkAlone, res.linkSlowLB, res.linkBytesLB = append(res.linkAlone, alone), append(res.linkSlowLB, slow), append(res.linkBytesLB, up)
		return nil
	}
	if err := alternate(fanRounds, lbOverLink, overLink); err != nil {
		return res, err
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
	// One round, each party with its own budget: the first HEAD of each meets the outage fresh.
	outageOf := func(into *outage, url string) func() error {
		return func() error {
			octx, cancel := context.WithTimeout(ctx, outageBudget)
			defer cancel()
			*into = measureOutage(octx, url)
			return nil
		}
	}
	err = runRound(0, outageOf(&res.outLB, "http://"+lbAddr+tag), outageOf(&res.outPX, "http://"+pxAddr+tag))
	return res, err
}

// blobBench times, over rounds, a cold miss then a warm hit of the blob dgst of repo on a fresh
// lifeboat and on a fresh proxy, and a GET from the upstream direct, the three alternating (see
// order), with the CPU time each serving process used. fresh names a new directory for an instance of kind.
func blobBench(fresh func(kind string) string, tools, lifeboat, regAddr, repo string, dgst v1.Hash, size int64, rounds int) (blobResults, error) {
	res := blobResults{size: size, rounds: rounds}
	blobPath := "/v2/" + repo + "/blobs/" + dgst.String()
	// round starts a fresh instance of kind, times a cold miss then a warm hit through it
	// into gets; committed waits until the instance has stored the blob, so that the warm GET
	// is a hit.
	round := func(kind string, gets *partyGets, start func(dir string) (*daemon, string, error), committed func(dir, url string) error) func() error {
		return func() error {
			dir := fresh(kind)
			defer os.RemoveAll(dir)
			srv, addr, err := start(dir)
			if err != nil {
				return err
			}
			defer srv.stop()
			url := "http://" + addr + blobPath
			var t, d time.Duration
			cpu, err := cpuPerGiB(srv.Pid(), size, func() error {
				if t, d, err = fetch(url, size); err != nil {
					return err
				}
				return committed(dir, url)
			})
			if err != nil {
				return fmt.Errorf("%s cold: %w", kind, err)
			}
			gets.ttfb, gets.cold, gets.cpuCold = append(gets.ttfb, t), append(gets.cold, d), append(gets.cpuCold, cpu)
			cpu, err = cpuPerGiB(srv.Pid(), size, func() error {
				_, d, err = fetch(url, size)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s warm: %w", kind, err)
			}
			gets.warm, gets.cpuWarm = append(gets.warm, d), append(gets.cpuWarm, cpu)
			return nil
		}
	}
	lbRound := round("lifeboat", &res.lb,
		func(dir string) (*daemon, string, error) { return startLifeboat(dir, lifeboat, regAddr) },
		func(_, url string) error { return waitCached(url) })
	pxRound := round("proxy", &res.px,
		func(dir string) (*daemon, string, error) { return startProxy(dir, tools, regAddr) },
		func(dir, _ string) error {
			// The proxy commits the blob after the last byte is sent.
			for deadline := time.Now().Add(30 * time.Second); !proxyHasBlob(dir, repo, dgst.Hex); {
				if time.Now().After(deadline) {
					return errors.New("the proxy did not store the blob within 30 s of serving it")
				}
				time.Sleep(10 * time.Millisecond)
			}
			return nil
		})
	directRound := func() error {
		t, d, err := fetch("http://"+regAddr+blobPath, size)
		if err != nil {
			return err
		}
		res.ttfbDir, res.direct = append(res.ttfbDir, t), append(res.direct, d)
		return nil
	}
	return res, alternate(rounds, lbRound, pxRound, directRound)
}

func getManifest(url string) error {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1)+", "+string(types.DockerManifestSchema2))
	return launch.DoOK(&http.Client{Timeout: outageReqCap}, req)
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

// followUpPct is the p-th percentile of the follow-ups that ran, counting timed-out ones as the
// slowest. ok is false when none ran; overCap is true when the percentile falls among the timed
// out ones, or when so many timed out that it would over all outageFollowUps whatever the ones
// not run would have done.
func (o outage) followUpPct(p float64) (d time.Duration, overCap, ok bool) {
	total := len(o.followUps) + o.timedOut
	if total == 0 {
		return 0, false, false
	}
	idx := min(total-1, int(float64(total)*p))
	if idx >= len(o.followUps) || float64(o.timedOut) > float64(outageFollowUps)*(1-p) {
		return 0, true, true
	}
	return percentile(o.followUps, p), false, true
}

func (o outage) pctString(p float64) string {
	d, over, ok := o.followUpPct(p)
	switch {
	case !ok:
		return "n/a"
	case over:
		return fmt.Sprintf("> %s (timed out)", fmtSec(outageReqCap))
	}
	return d.Round(time.Microsecond).String()
}

// pctRatio is lifeboat's percentile divided by the proxy's, or "–" when either is not a time.
func pctRatio(lb, px outage, p float64) string {
	a, aOver, aOK := lb.followUpPct(p)
	b, bOver, bOK := px.followUpPct(p)
	if aOver || bOver || !aOK || !bOK {
		return "–"
	}
	return fmt.Sprintf("%.4f", a.Seconds()/b.Seconds())
}

func (o outage) firstFailed() bool { return o.firstTimedOut || o.firstErr != nil }

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

// sizeName is n bytes rounded down to whole MiB, or GiB when that is a whole number of them.
func sizeName(n int64) string {
	if m := n >> 20; m >= 1024 && m%1024 == 0 {
		return fmt.Sprintf("%d GiB", m>>10)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// coldCPUGoal is the goal for lifeboat's CPU seconds per GiB of a cold miss, GET to
// commit.
const coldCPUGoal = 1.5

// fanOutGoal is the goal for the slowest fan-out client ÷ one client alone.
const fanOutGoal = 1.2

// goal marks a figure that has a goal with whether this run met it.
func goal(met bool) string {
	if met {
		return " (goal met)"
	}
	return " (goal not met)"
}

// linkName names a link rate in bytes/s as bits per second.
func linkName(bytesPerSec int64) string {
	bits := bytesPerSec * 8
	if bits%1_000_000_000 == 0 {
		return fmt.Sprintf("%d Gbit/s", bits/1_000_000_000)
	}
	return fmt.Sprintf("%d Mbit/s", bits/1_000_000)
}

// slowestToAlone is the fan-out's slowest client time divided by one client's alone.
func slowestToAlone(slow, alone []time.Duration) float64 {
	return median(slow).Seconds() / median(alone).Seconds()
}

// aggregateGiBps is what the fan-out delivered to all its clients together, per second.
func (r anchorResults) aggregateGiBps(slow []time.Duration) float64 {
	return float64(r.size) * fanOutClients / median(slow).Seconds() / (1 << 30)
}

func renderAnchors(b *strings.Builder, r anchorResults) {
	fmt.Fprintf(b, "\n## Against the distribution registry in proxy mode\n\n")
	var gets []string
	for _, br := range r.blobs {
		gets = append(gets, fmt.Sprintf("%d with the %s blob", br.rounds, sizeName(br.size)))
	}
	if last := len(r.blobs) - 1; r.blobs[last].rounds < r.blobs[0].rounds {
		gets[last] += " (fewer, to keep the run short)"
	}
	fmt.Fprintf(b, "The anchor is the same distribution registry binary as the upstream, in proxy mode in front of it\n"+
		"(`proxy.remoteurl`, `ttl: 0`, filesystem storage); each is a separate process on loopback, with a fresh\n"+
		"lifeboat root and fresh proxy storage for every cold measurement. The last column is lifeboat's figure\n"+
		"divided by the proxy's.\n\n"+
		"Medians with min–max in brackets. Single-client GETs: lifeboat, the proxy and the upstream direct\n"+
		"alternating, the order reversed every other round, rounds: %s. Fan-out: %d rounds, lifeboat and\n"+
		"the proxy alternating likewise (over the link, lifeboat and one GET over the link). Outage: one round\n"+
		"(the first HEAD of each party meets the outage fresh), lifeboat first, each party with its own time\n"+
		"budget. Fan-out and outage use the %s blob and its tag.\n\n"+
		"CPU is the user and system time of the serving process (lifeboat or the proxy) from\n"+
		"/proc/<pid>/stat, per GiB served: for a cold miss from the GET until the blob is committed to its\n"+
		"storage, for a warm hit over the GET alone. /proc counts in clock ticks of %s, so a figure is\n"+
		"only as fine as one tick per blob.\n\n", strings.Join(gets, "; "), r.fanRounds, sizeName(r.size), time.Duration(float64(time.Second)/clockTicks))
	fmt.Fprintf(b, "| measurement | lifeboat | distribution proxy | upstream direct | lifeboat ÷ proxy |\n|---|---:|---:|---:|---:|\n")
	row := func(what, lb, px, dir string, ratio float64) {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.2f |\n", what, lb, px, dir, ratio)
	}
	for _, br := range r.blobs {
		mb := func(ds []time.Duration) string { return rateSpread(br.size, ds) + " MiB/s" }
		row(fmt.Sprintf("warm hit, %s blob GET (higher is better)", sizeName(br.size)), mb(br.lb.warm), mb(br.px.warm), mb(br.direct), mibps(br.size, br.lb.warm)/mibps(br.size, br.px.warm))
	}
	for _, br := range r.blobs {
		mb := func(ds []time.Duration) string { return rateSpread(br.size, ds) + " MiB/s" }
		row(fmt.Sprintf("cold miss, %s blob GET (higher is better)", sizeName(br.size)), mb(br.lb.cold), mb(br.px.cold), mb(br.direct), mibps(br.size, br.lb.cold)/mibps(br.size, br.px.cold))
	}
	for _, br := range r.blobs {
		row(fmt.Sprintf("cold miss, %s blob, time to first byte (lower is better)", sizeName(br.size)), durSpread(br.lb.ttfb), durSpread(br.px.ttfb), durSpread(br.ttfbDir), median(br.lb.ttfb).Seconds()/median(br.px.ttfb).Seconds())
	}
	cpu := func(xs []float64) string { return floatSpread(xs, 2) + " CPU-s/GiB" }
	for _, br := range r.blobs {
		row(fmt.Sprintf("cold miss, %s blob: CPU of the serving process, GET to commit (lower is better; goal ≤ %.1f for lifeboat)", sizeName(br.size), coldCPUGoal),
			cpu(br.lb.cpuCold)+goal(median(br.lb.cpuCold) <= coldCPUGoal), cpu(br.px.cpuCold), "–", median(br.lb.cpuCold)/median(br.px.cpuCold))
		row(fmt.Sprintf("warm hit, %s blob: CPU of the serving process over the GET (lower is better)", sizeName(br.size)), cpu(br.lb.cpuWarm), cpu(br.px.cpuWarm), "–", median(br.lb.cpuWarm)/median(br.px.cpuWarm))
	}
	copies := func(xs []int64) string {
		return floatSpread(mapSlice(xs, func(n int64) float64 { return float64(n) / float64(r.size) }), 2) + " copies"
	}
	ms := func(ds []time.Duration) string {
		return spread(ds, func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }, time.Duration.String)
	}
	row(fmt.Sprintf("fan-out, %d cold clients: upstream bytes (goal 1 copy)", fanOutClients), copies(r.fanBytesLB)+goal(float64(median(r.fanBytesLB))/float64(r.size) < 1.01), copies(r.fanBytesPX), "–",
		float64(median(r.fanBytesLB))/float64(median(r.fanBytesPX)))
	row(fmt.Sprintf("fan-out, slowest of %d ÷ one client alone, of the medians (goal ≤ 1.2)", fanOutClients),
		fmt.Sprintf("%.2f (%s ÷ %s)%s", slowestToAlone(r.fanSlowLB, r.aloneLB), ms(r.fanSlowLB), ms(r.aloneLB),
			goal(slowestToAlone(r.fanSlowLB, r.aloneLB) <= fanOutGoal)),
		fmt.Sprintf("%.2f (%s ÷ %s)", slowestToAlone(r.fanSlowPX, r.alonePX), ms(r.fanSlowPX), ms(r.alonePX)),
		"–", slowestToAlone(r.fanSlowLB, r.aloneLB)/slowestToAlone(r.fanSlowPX, r.alonePX))
	fmt.Fprintf(b, "| fan-out over a %s upstream link, slowest of %d ÷ one client alone, of the medians (goal ≤ 1.2) | %.2f (%s ÷ %s)%s, %s upstream | not run | one GET over the link: %s | – |\n",
		linkName(fanOutLink), fanOutClients, slowestToAlone(r.linkSlowLB, r.linkAlone),
		ms(r.linkSlowLB), ms(r.linkAlone),
		goal(slowestToAlone(r.linkSlowLB, r.linkAlone) <= fanOutGoal), copies(r.linkBytesLB),
		ms(r.linkDirect))
	if r.rssLB > 0 && r.rssPX > 0 {
		row("fan-out, peak RSS (lower is better)", fmt.Sprintf("%.0f MiB", mib(r.rssLB)), fmt.Sprintf("%.0f MiB", mib(r.rssPX)), "–", float64(r.rssLB)/float64(r.rssPX))
	}
	firstRatio := "–"
	if !r.outLB.firstFailed() && !r.outPX.firstFailed() {
		firstRatio = fmt.Sprintf("%.4f", r.outLB.first.Seconds()/r.outPX.first.Seconds())
	}
	fmt.Fprintf(b, "| outage, first tag HEAD (lower is better) | %s | %s | – | %s |\n", r.outLB.firstString(), r.outPX.firstString(), firstRatio)
	for _, p := range []float64{0.5, 0.99} {
		fmt.Fprintf(b, "| outage, p%.0f of the next %d tag HEADs, %d at a time (lower is better) | %s | %s | – | %s |\n",
			p*100, outageFollowUps, outageParallel, r.outLB.pctString(p), r.outPX.pctString(p), pctRatio(r.outLB, r.outPX, p))
	}
	fmt.Fprintf(b, "\nFan-out: every party and all %d clients share the machine's %d CPUs, so delivering %d copies is itself\n"+
		"bound by CPU here (lifeboat delivered %.1f GiB/s to the clients in aggregate, the proxy %.1f GiB/s); the\n"+
		"upstream bytes are counted by a forwarder in front of the upstream, one per instance. Peak RSS is the\n"+
		"high-water mark of a fresh process that served only the fan-out, the largest over the rounds.\n",
		fanOutClients, runtime.NumCPU(), fanOutClients, r.aggregateGiBps(r.fanSlowLB), r.aggregateGiBps(r.fanSlowPX))
	fmt.Fprintf(b, "\nFan-out over a link: the same, with the forwarder sending the upstream's bytes at most at %s\n"+
		"(all connections together), as when the registry is across a network, so the upstream and not the\n"+
		"local delivery sets the pace. lifeboat only: the proxy's %d upstream copies would take over a minute\n"+
		"a round at that rate.\n", linkName(fanOutLink), fanOutClients)
	fmt.Fprintf(b, "\nOutage: the upstream of both is a forwarder that, once the tag is cached by each, closes every\n"+
		"connection and then accepts new ones and never answers. Each tag HEAD is cut at %s and each party's\n"+
		"outage measurement at %s. Follow-ups through lifeboat: %s; through the proxy: %s. The\n"+
		"percentiles are over the follow-ups that ran, timed-out ones counted as the slowest.\n",
		fmtSec(outageReqCap), fmtSec(outageBudget), r.outLB.note(), r.outPX.note())
}

// anchorsJSON is the anchor comparison; "distribution_proxy" is the anchor.
type anchorsJSON struct {
	Blobs  []blobJSON `json:"single_client_blob_gets"`
	FanOut fanOutJSON `json:"fan_out"`
	Outage outageJSON `json:"outage"`
}

type blobJSON struct {
	SizeBytes int64       `json:"blob_size_bytes"`
	Rounds    int         `json:"rounds"`
	WarmHit   byPartyJSON `json:"warm_hit_mib_per_s"`
	ColdMiss  byPartyJSON `json:"cold_miss_mib_per_s"`
	TTFB      byPartyJSON `json:"cold_miss_time_to_first_byte_seconds"`
	CPUCold   cpuJSON     `json:"cold_miss_cpu_seconds_per_gib"` // GET to commit
	CPUWarm   cpuJSON     `json:"warm_hit_cpu_seconds_per_gib"`
}

// cpuJSON is the CPU seconds per GiB of each serving process, the median of the rounds, and
// lifeboat's divided by the proxy's.
type cpuJSON struct {
	Lifeboat float64 `json:"lifeboat"`
	Proxy    float64 `json:"distribution_proxy"`
	Ratio    float64 `json:"lifeboat_to_proxy_ratio"`
	// Goal is the goal for lifeboat's figure, when it has one, and GoalMet whether it
	// was met.
	Goal    float64 `json:"lifeboat_goal,omitempty"`
	GoalMet *bool   `json:"lifeboat_goal_met,omitempty"`
}

func cpuByParty(lb, px []float64) cpuJSON {
	return cpuJSON{Lifeboat: median(lb), Proxy: median(px), Ratio: median(lb) / median(px)}
}

// withGoal adds a goal that lifeboat's figure is at most.
func (c cpuJSON) withGoal(atMost float64) cpuJSON {
	met := c.Lifeboat <= atMost
	c.Goal, c.GoalMet = atMost, &met
	return c
}

// byPartyJSON is one figure for each party, in the unit its parent's name gives, and
// lifeboat's divided by the proxy's.
type byPartyJSON struct {
	Lifeboat float64 `json:"lifeboat"`
	Proxy    float64 `json:"distribution_proxy"`
	Upstream float64 `json:"upstream_direct"`
	Ratio    float64 `json:"lifeboat_to_proxy_ratio"`
}

func byParty(lb, px, up float64) byPartyJSON {
	return byPartyJSON{Lifeboat: lb, Proxy: px, Upstream: up, Ratio: lb / px}
}

type fanOutJSON struct {
	Clients   int             `json:"clients"`
	SizeBytes int64           `json:"blob_size_bytes"`
	Rounds    int             `json:"rounds"`
	Lifeboat  fanOutPartyJSON `json:"lifeboat"`
	Proxy     fanOutPartyJSON `json:"distribution_proxy"`

	// The lifeboat fan-out again with the upstream behind a link of LinkBytesPerS.
	LinkBytesPerS      int64           `json:"link_bytes_per_s"`
	OverLink           fanOutPartyJSON `json:"lifeboat_over_link"`
	DirectOverLinkSecs float64         `json:"upstream_direct_over_link_seconds"`
}

type fanOutPartyJSON struct {
	UpstreamBytes       int64   `json:"upstream_bytes"`
	UpstreamCopies      float64 `json:"upstream_copies"`
	SlowestSeconds      float64 `json:"slowest_client_seconds"`
	AloneSeconds        float64 `json:"one_client_alone_seconds"`
	SlowestToAloneRatio float64 `json:"slowest_to_alone_ratio"`
	AggregateGiBPerS    float64 `json:"aggregate_gib_per_s"`
	PeakRSSMiB          float64 `json:"peak_rss_mib,omitempty"` // absent when /proc could not be read
}

type outageJSON struct {
	RequestCapSeconds float64         `json:"request_cap_seconds"`
	BudgetSeconds     float64         `json:"budget_seconds"`
	FollowUps         int             `json:"follow_ups"`
	Parallel          int             `json:"follow_ups_in_parallel"`
	Lifeboat          outagePartyJSON `json:"lifeboat"`
	Proxy             outagePartyJSON `json:"distribution_proxy"`
}

// outagePartyJSON is one party's outage figures. A percentile is null when it is over the
// request cap (its over_cap field says so) or when no follow-up ran.
type outagePartyJSON struct {
	FirstSeconds float64  `json:"first_tag_head_seconds"`
	FirstOutcome string   `json:"first_tag_head_outcome"` // answered, timed_out or failed
	P50Seconds   *float64 `json:"follow_ups_p50_seconds"`
	P50OverCap   bool     `json:"follow_ups_p50_over_cap"`
	P99Seconds   *float64 `json:"follow_ups_p99_seconds"`
	P99OverCap   bool     `json:"follow_ups_p99_over_cap"`
	Answered     int      `json:"follow_ups_answered"`
	TimedOut     int      `json:"follow_ups_timed_out"`
	Errors       int      `json:"follow_ups_errors"`
	NotRun       int      `json:"follow_ups_not_run"`
}

func (o outage) json() outagePartyJSON {
	j := outagePartyJSON{FirstSeconds: o.first.Seconds(), FirstOutcome: "answered",
		Answered: len(o.followUps), TimedOut: o.timedOut, Errors: o.errors, NotRun: o.notRun}
	switch {
	case o.firstTimedOut:
		j.FirstOutcome = "timed_out"
	case o.firstErr != nil:
		j.FirstOutcome = "failed"
	}
	pct := func(p float64) (*float64, bool) {
		d, over, ok := o.followUpPct(p)
		if over || !ok {
			return nil, over
		}
		s := d.Seconds()
		return &s, false
	}
	j.P50Seconds, j.P50OverCap = pct(0.5)
	j.P99Seconds, j.P99OverCap = pct(0.99)
	return j
}

func (r anchorResults) json() anchorsJSON {
	var j anchorsJSON
	for _, br := range r.blobs {
		j.Blobs = append(j.Blobs, blobJSON{
			SizeBytes: br.size, Rounds: br.rounds,
			WarmHit:  byParty(mibps(br.size, br.lb.warm), mibps(br.size, br.px.warm), mibps(br.size, br.direct)),
			ColdMiss: byParty(mibps(br.size, br.lb.cold), mibps(br.size, br.px.cold), mibps(br.size, br.direct)),
			TTFB:     byParty(median(br.lb.ttfb).Seconds(), median(br.px.ttfb).Seconds(), median(br.ttfbDir).Seconds()),
			CPUCold:  cpuByParty(br.lb.cpuCold, br.px.cpuCold).withGoal(coldCPUGoal),
			CPUWarm:  cpuByParty(br.lb.cpuWarm, br.px.cpuWarm),
		})
	}
	fan := func(bytes []int64, slow, alone []time.Duration, rss int64) fanOutPartyJSON {
		return fanOutPartyJSON{
			UpstreamBytes: median(bytes), UpstreamCopies: float64(median(bytes)) / float64(r.size),
			SlowestSeconds: median(slow).Seconds(), AloneSeconds: median(alone).Seconds(),
			SlowestToAloneRatio: slowestToAlone(slow, alone), AggregateGiBPerS: r.aggregateGiBps(slow), PeakRSSMiB: mib(rss),
		}
	}
	j.FanOut = fanOutJSON{Clients: fanOutClients, SizeBytes: r.size, Rounds: r.fanRounds,
		Lifeboat:      fan(r.fanBytesLB, r.fanSlowLB, r.aloneLB, r.rssLB),
		Proxy:         fan(r.fanBytesPX, r.fanSlowPX, r.alonePX, r.rssPX),
		LinkBytesPerS: fanOutLink, OverLink: fan(r.linkBytesLB, r.linkSlowLB, r.linkAlone, 0),
		DirectOverLinkSecs: median(r.linkDirect).Seconds()}
	j.Outage = outageJSON{RequestCapSeconds: outageReqCap.Seconds(), BudgetSeconds: outageBudget.Seconds(),
		FollowUps: outageFollowUps, Parallel: outageParallel, Lifeboat: r.outLB.json(), Proxy: r.outPX.json()}
	return j
}
