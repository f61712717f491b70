package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// mirrorResults holds what mirrorBench measured.
type mirrorResults struct {
	warm, cold       result
	ttfbCold, ttfbUp []time.Duration
	rssTags          int64 // lifeboat's peak RSS (bytes) over all its tag loads; 0 if unknown

	// Tag loads through lifeboat and through the distribution registry in proxy mode (the
	// anchor), alternating over tagRounds rounds, with the upstream up and then stopped.
	tagRounds          int
	headUp, headDown   tagLoads
	proxyUp, proxyDown tagLoads
}

// tagLoads are the percentiles of one party's tag loads, one of each per round. The proxy may
// answer some requests with an error: those are counted, not timed, and a round it answered
// none of has no percentiles.
type tagLoads struct {
	p50, p99 []time.Duration
	failed   int
}

// load runs one tag load against url into l; strict fails it if any request failed.
func (l *tagLoads) load(url string, strict bool) error {
	ds, failed := paced(url, tagRate, tagRequests)
	if strict && failed > 0 {
		return fmt.Errorf("%d of %d tag HEADs failed", failed, tagRequests)
	}
	l.failed += failed
	if len(ds) > 0 {
		l.p50, l.p99 = append(l.p50, percentile(ds, 0.5)), append(l.p99, percentile(ds, 0.99))
	}
	return nil
}

// daemon is a child process of the benchmark, its output in the log file of its directory.
type daemon struct{ *launch.Process }

// stop stops the daemon: SIGTERM, then SIGKILL if it has not exited within 15 s.
func (d *daemon) stop() { _ = d.Stop(15 * time.Second) }

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitHTTP waits until url answers 200, for at most 30 s or until d exits.
func waitHTTP(url string, d *daemon) error {
	err := launch.WaitFor(30*time.Second, d.Exited(), func() error {
		return launch.GetOK(http.DefaultClient, url)
	})
	if err != nil {
		return fmt.Errorf("%s did not come up: %v\n%s", url, err, d.Log())
	}
	return nil
}

// startDaemon starts bin with args and env added to the benchmark's environment, its output in
// dir/log.
func startDaemon(dir string, bin string, args []string, env []string) (*daemon, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p, err := launch.Start(filepath.Base(bin), cmd, filepath.Join(dir, "log"))
	if err != nil {
		return nil, err
	}
	return &daemon{p}, nil
}

// startRegistry runs the distribution registry (from bin/tools) on a free loopback port.
func startRegistry(scratch, tools string) (*daemon, string, error) {
	return runRegistry(filepath.Join(scratch, "registry"), tools, "  delete:\n    enabled: true\n", "")
}

// runRegistry runs the distribution registry with its storage in dir on a free loopback port:
// storage adds to the storage section, extra to the top of the configuration.
func runRegistry(dir, tools, storage, extra string) (*daemon, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\n%shttp:\n  addr: %s\n%s",
		filepath.Join(dir, "data"), storage, addr, extra)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
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

// startLifeboat runs `lifeboat serve` with a fresh root and docker.io pointing at upstream.
func startLifeboat(dir, bin, upstream string) (*daemon, string, error) {
	return startLifeboatWith(dir, bin, upstream, lifeboatOpts{})
}

// lifeboatOpts are the settings a benchmark changes from startLifeboat's.
type lifeboatOpts struct {
	// metrics is the metrics address, which serves pprof too; "" turns metrics off.
	metrics string
	// verifyBeforeSend is [cache] verify_before_send when set.
	verifyBeforeSend *int64
}

// startLifeboatWith is startLifeboat with opts.
func startLifeboatWith(dir, bin, upstream string, opts lifeboatOpts) (*daemon, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	var cacheExtra string
	if opts.verifyBeforeSend != nil {
		cacheExtra = fmt.Sprintf("verify_before_send = \"%d\"\n", *opts.verifyBeforeSend)
	}
	cfg := fmt.Sprintf("root = %q\n[mirror]\naddress = %q\n[plugin]\naddress = %q\n[admin]\naddress = %q\n[metrics]\naddress = %q\npprof = %t\n[cache]\nmax_size = \"16GiB\"\n%s[log]\nlevel = \"warn\"\n[registry.\"docker.io\"]\nendpoints = [\"http://%s\"]\n",
		filepath.Join(dir, "root"), addr, filepath.Join(dir, "l.sock"), filepath.Join(dir, "a.sock"), opts.metrics, opts.metrics != "", cacheExtra, upstream)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		return nil, "", err
	}
	d, err := startDaemon(dir, bin, []string{"serve", "--config", filepath.Join(dir, "config.toml")}, nil)
	if err != nil {
		return nil, "", err
	}
	return d, addr, waitHTTP("http://"+addr+"/v2/", d)
}

// fetch GETs url to io.Discard and returns the time to the first byte and in all.
func fetch(url string, want int64) (ttfb, total time.Duration, err error) {
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	buf := make([]byte, 1<<20)
	n, err := resp.Body.Read(buf[:1])
	ttfb = time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	// io.Discard's own ReadFrom reads 8 KiB at a time, which would make the client the
	// bottleneck: hide it so that the copy uses this 1 MiB buffer.
	m, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, buf)
	if err != nil {
		return 0, 0, err
	}
	if int64(n)+m != want {
		return 0, 0, fmt.Errorf("GET %s: %d bytes, want %d", url, int64(n)+m, want)
	}
	return ttfb, time.Since(start), nil
}

// waitCached waits until lifeboat answers a HEAD of url from its cache: the fill that a cold GET
// started has committed the blob, so that the next GET measures a warm hit (the proxy's warm
// GET waits for its commit likewise).
func waitCached(url string) error {
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Head(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.Header.Get(oci.HeaderCache) == "hit" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("HEAD %s: not cached within 30 s of a GET (%s %q)", url, oci.HeaderCache, resp.Header.Get(oci.HeaderCache))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// headClient keeps enough idle connections for the paced tag load.
var headClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}

func head(url string) (time.Duration, error) {
	req, _ := http.NewRequest(http.MethodHead, url, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1)+", "+string(types.DockerManifestSchema2))
	start := time.Now()
	resp, err := headClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HEAD %s: %s", url, resp.Status)
	}
	return time.Since(start), nil
}

// mirrorBench compares fetching a blob through lifeboat (warm and cold) with fetching it
// straight from the upstream registry, and measures tag HEAD latency with the upstream up and
// down.
func mirrorBench(ctx context.Context, scratch, tools, lifeboat string, size int64, rounds, tagRounds int) (mirrorResults, error) {
	var res mirrorResults
	reg, regAddr, err := startRegistry(scratch, tools)
	if err != nil {
		return res, err
	}
	defer reg.stop()

	dgst, size, err := pushBlobImage(ctx, regAddr, "library/bench:1", size)
	if err != nil {
		return res, err
	}
	blobPath := "/v2/library/bench/blobs/" + dgst.String()
	direct := "http://" + regAddr + blobPath

	warm := result{name: "warm hit, blob GET through lifeboat", baseline: "same GET from the registry", bytes: size}
	cold := result{name: "cold miss, blob GET through lifeboat", baseline: "same GET from the registry", bytes: size}
	var ttfbCold, ttfbUp []time.Duration
	upstream := func() error {
		t, d, err := fetch(direct, size)
		if err != nil {
			return err
		}
		ttfbUp = append(ttfbUp, t)
		cold.base = append(cold.base, d)
		warm.base = append(warm.base, d)
		return nil
	}
	n := 0
	throughLifeboat := func() error {
		n++
		dir := filepath.Join(scratch, fmt.Sprintf("lifeboat-%d", n))
		defer os.RemoveAll(dir)
		lb, addr, err := startLifeboat(dir, lifeboat, regAddr)
		if err != nil {
			return err
		}
		defer lb.stop()
		t, d, err := fetch("http://"+addr+blobPath, size)
		if err != nil {
			return err
		}
		ttfbCold = append(ttfbCold, t)
		cold.subject = append(cold.subject, d)
		if err := waitCached("http://" + addr + blobPath); err != nil {
			return err
		}
		if _, d, err = fetch("http://"+addr+blobPath, size); err != nil {
			return err
		}
		warm.subject = append(warm.subject, d)
		return nil
	}
	if err := alternate(rounds, throughLifeboat, upstream); err != nil {
		return res, err
	}
	res.warm, res.cold = warm, cold
	res.ttfbCold, res.ttfbUp = ttfbCold, ttfbUp

	// Tag HEAD latency through lifeboat and through the proxy anchor, then the same with the
	// registry stopped (lifeboat answers stale from its cache).
	lb, addr, err := startLifeboat(filepath.Join(scratch, "lifeboat-tags"), lifeboat, regAddr)
	if err != nil {
		return res, err
	}
	defer lb.stop()
	px, pxAddr, err := startProxy(filepath.Join(scratch, "proxy-tags"), tools, regAddr)
	if err != nil {
		return res, err
	}
	defer px.stop()
	const tagPath = "/v2/library/bench/manifests/1"
	tagURL, proxyURL := "http://"+addr+tagPath, "http://"+pxAddr+tagPath
	if _, err := head(tagURL); err != nil {
		return res, err
	}
	if err := getManifest(proxyURL); err != nil {
		return res, fmt.Errorf("cache the tag in the proxy: %w", err)
	}
	res.tagRounds = tagRounds
	if err := alternate(tagRounds, func() error { return res.headUp.load(tagURL, true) }, func() error { return res.proxyUp.load(proxyURL, false) }); err != nil {
		return res, err
	}
	reg.stop()
	if err := alternate(tagRounds, func() error { return res.headDown.load(tagURL, true) }, func() error { return res.proxyDown.load(proxyURL, false) }); err != nil {
		return res, fmt.Errorf("tag HEAD with the upstream down: %w", err)
	}
	// This lifeboat has served nothing but tags, so its high-water mark is that of the loads.
	res.rssTags = peakRSS(lb)
	return res, nil
}

// Tag resolution load: tagRequests HEADs sent at tagRate per second, each on its own schedule
// (an open loop: a slow answer does not hold back the next request).
const (
	tagRate     = 500
	tagRequests = 2000
)

// paced sends n HEADs to url at rate per second and returns the latencies of those answered
// with success, and how many were not.
func paced(url string, rate, n int) (answered []time.Duration, failed int) {
	out := make([]time.Duration, n)
	ok := make([]bool, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := head(url)
			out[i], ok[i] = d, err == nil
		}()
	}
	wg.Wait()
	for i, d := range out {
		if ok[i] {
			answered = append(answered, d)
		} else {
			failed++
		}
	}
	return answered, failed
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func renderMirror(b *strings.Builder, r mirrorResults, size int64) {
	fmt.Fprintf(b, "\n## Registry mirror, one %d MiB blob (real registry and lifeboat processes on loopback)\n\n", size>>20)
	fmt.Fprintf(b, "Each round a GET straight from the registry alternates with a fresh lifeboat's cold miss then warm\n"+
		"hit; the same straight GET is the baseline of both.\n\n")
	fmt.Fprintf(b, "| operation | MiB/s | baseline | baseline MiB/s | ratio |\n|---|---:|---|---:|---:|\n")
	for _, t := range []result{r.warm, r.cold} {
		b.WriteString(t.row())
	}
	fmt.Fprintf(b, "\nTime to first byte: cold miss through lifeboat %s, straight from the registry %s.\n",
		durSpread(r.ttfbCold), durSpread(r.ttfbUp))
	fmt.Fprintf(b, "\nThese GETs are measured again, from rounds of their own, against the distribution proxy under\n"+
		"\"Against the distribution registry\" below: the two sections' figures for the same operation differ by\n"+
		"as much as their ranges do, and neither is the one figure for it.\n")
	fmt.Fprintf(b, "\nEvery party runs on the same machine: on a cold miss lifeboat receives, hashes, writes and\n"+
		"sends every byte on the cores the registry and the client also use, so the cold ratio is bound by\n"+
		"CPU here; a warm hit is sent from the cache file with sendfile.\n")
	fmt.Fprintf(b, "\n| tag HEAD, %d requests at %d/s, %d rounds | lifeboat p50 | lifeboat p99 | distribution proxy p50 | proxy p99 | proxy requests failed |\n|---|---:|---:|---:|---:|---:|\n",
		tagRequests, tagRate, r.tagRounds)
	pct := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "–"
		}
		return durSpread(ds)
	}
	fmt.Fprintf(b, "| upstream up (lifeboat revalidates) | %s | %s | %s | %s | %d |\n",
		pct(r.headUp.p50), pct(r.headUp.p99), pct(r.proxyUp.p50), pct(r.proxyUp.p99), r.proxyUp.failed)
	fmt.Fprintf(b, "| upstream stopped (lifeboat answers stale from its cache) | %s | %s | %s | %s | %d |\n",
		pct(r.headDown.p50), pct(r.headDown.p99), pct(r.proxyDown.p50), pct(r.proxyDown.p99), r.proxyDown.failed)
	fmt.Fprintf(b, "\nEach round runs one load through lifeboat and one through the proxy, the first swapped each round;\n"+
		"the percentiles are the median (min–max) of the rounds' own, the failures summed over the rounds.\n"+
		"The proxy is the distribution registry in proxy mode (`ttl: 0`) in front of the same registry,\n"+
		"with the tag fetched through it once first. Stopped: connections to the registry are refused; a\n"+
		"blackholed upstream is measured under \"Against the distribution registry\" below.\n")
	if r.rssTags > 0 {
		fmt.Fprintf(b, "\nPeak RSS of lifeboat over all its tag loads (a fresh process that served only them): %.0f MiB.\n", mib(r.rssTags))
	}
}

type mirrorJSON struct {
	WarmHit         throughputJSON `json:"warm_hit"`
	ColdMiss        throughputJSON `json:"cold_miss"`
	TTFBColdSeconds float64        `json:"cold_miss_time_to_first_byte_seconds"`
	TTFBUpSeconds   float64        `json:"upstream_time_to_first_byte_seconds"`
	TagRequests     int            `json:"tag_head_requests"`
	TagRatePerS     int            `json:"tag_head_rate_per_s"`
	TagRounds       int            `json:"tag_head_rounds"` // the percentiles are medians over the rounds
	TagUp           latencyJSON    `json:"tag_head_upstream_up"`
	TagDown         latencyJSON    `json:"tag_head_upstream_stopped"`
	TagPeakRSSMiB   float64        `json:"tag_head_lifeboat_peak_rss_mib,omitempty"` // absent when /proc could not be read

	ProxyTagUp   proxyLatencyJSON `json:"tag_head_distribution_proxy_upstream_up"`
	ProxyTagDown proxyLatencyJSON `json:"tag_head_distribution_proxy_upstream_stopped"`
}

// proxyLatencyJSON is the proxy's tag HEAD latencies over the requests it answered with
// success; the percentiles are null when it answered none.
type proxyLatencyJSON struct {
	P50Seconds *float64 `json:"p50_seconds"`
	P99Seconds *float64 `json:"p99_seconds"`
	Failed     int      `json:"failed"`
}

func proxyLatencies(l tagLoads) proxyLatencyJSON {
	j := proxyLatencyJSON{Failed: l.failed}
	if len(l.p50) > 0 {
		p50, p99 := median(l.p50).Seconds(), median(l.p99).Seconds()
		j.P50Seconds, j.P99Seconds = &p50, &p99
	}
	return j
}

type latencyJSON struct {
	P50Seconds float64 `json:"p50_seconds"`
	P99Seconds float64 `json:"p99_seconds"`
}

// latencies is the median over the rounds of each round's percentile.
func latencies(l tagLoads) latencyJSON {
	return latencyJSON{P50Seconds: median(l.p50).Seconds(), P99Seconds: median(l.p99).Seconds()}
}

func (r mirrorResults) json() mirrorJSON {
	return mirrorJSON{
		WarmHit: r.warm.json(), ColdMiss: r.cold.json(),
		TTFBColdSeconds: median(r.ttfbCold).Seconds(), TTFBUpSeconds: median(r.ttfbUp).Seconds(),
		TagRequests: tagRequests, TagRatePerS: tagRate, TagRounds: r.tagRounds,
		TagUp: latencies(r.headUp), TagDown: latencies(r.headDown), TagPeakRSSMiB: mib(r.rssTags),
		ProxyTagUp: proxyLatencies(r.proxyUp), ProxyTagDown: proxyLatencies(r.proxyDown),
	}
}

// pushBlobImage pushes to the registry at regAddr an image of one uncompressed layer of about
// size random bytes, and returns the layer's digest and its exact size (a tar: a little larger).
func pushBlobImage(ctx context.Context, regAddr, repoTag string, size int64) (v1.Hash, int64, error) {
	layer, err := random.Layer(size, types.OCIUncompressedLayer)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	ref, err := name.ParseReference(regAddr+"/"+repoTag, name.Insecure)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("push the benchmark image: %w", err)
	}
	dgst, err := layer.Digest()
	if err != nil {
		return v1.Hash{}, 0, err
	}
	n, err := layer.Size()
	return dgst, n, err
}
