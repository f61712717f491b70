package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	simulated "github.com/lifeboat-dev/lifeboat/outage"
)

// claimResults are the tight figures behind claims the tests assert only with margins that
// hold on a busy machine: how close the slow outage mode runs to its rate cap (TestSlowRate),
// and how fast lifeboat answers an image it never cached during an outage, which is what a
// failing `ctr pull` waits for (TestOutageDrill, TestPullSurvivesUpstreamOutage).
type claimResults struct {
	rounds int

	slowRate, slowSize int64
	capped, uncapped   []time.Duration // the same body through the slow outage, and without it

	failFirst      time.Duration   // the first never-cached answer, meeting the outage fresh
	failing, stale []time.Duration // never-cached (404) and cached (stale 200) tag HEADs

	demoWall  []time.Duration // `lifeboat demo`, start to exit
	demoStep4 []time.Duration // its step 4: a never-cached image, the registry marked down
}

// claimsBench measures the claims; rounds alternate the subject and its baseline.
func claimsBench(ctx context.Context, scratch, tools, lifeboat string, rounds int) (claimResults, error) {
	res := claimResults{rounds: rounds, slowRate: 8 << 20, slowSize: 4 << 20}
	if err := slowCapBench(ctx, &res); err != nil {
		return res, fmt.Errorf("slow outage cap: %w", err)
	}
	if err := failFastBench(ctx, scratch, tools, lifeboat, &res); err != nil {
		return res, fmt.Errorf("never-cached answer during an outage: %w", err)
	}
	if err := demoBench(ctx, scratch, lifeboat, &res); err != nil {
		return res, fmt.Errorf("lifeboat demo: %w", err)
	}
	return res, nil
}

// demoBench runs `lifeboat demo --json` as a new user would, rounds times: the README calls it a
// tour of a few seconds, and its step 4 fails without waiting on the registry.
func demoBench(ctx context.Context, scratch, lifeboat string, res *claimResults) error {
	for i := range res.rounds {
		tmp := filepath.Join(scratch, "demo-"+strconv.Itoa(i))
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, lifeboat, "demo", "--json")
		cmd.Env = []string{"HOME=" + tmp, "TMPDIR=" + tmp, "PATH=/usr/bin:/bin"}
		start := time.Now()
		out, err := cmd.Output()
		wall := time.Since(start)
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		var rep struct {
			OK    bool `json:"ok"`
			Steps []struct {
				DurationMs float64 `json:"durationMs"`
			} `json:"steps"`
		}
		if err := json.Unmarshal(out, &rep); err != nil || !rep.OK || len(rep.Steps) < 4 {
			return fmt.Errorf("a demo that did not behave (%v): %.500s", err, out)
		}
		res.demoWall = append(res.demoWall, wall)
		res.demoStep4 = append(res.demoStep4, time.Duration(rep.Steps[3].DurationMs*float64(time.Millisecond)))
	}
	return nil
}

// slowCapBench reads one body through `slow` outage's rate cap and without it, alternately.
func slowCapBench(ctx context.Context, res *claimResults) error {
	body := make([]byte, res.slowSize)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	defer srv.Close()
	sim := simulated.New()
	if _, err := sim.Start(ctx, simulated.Spec{Mode: "slow", Rate: res.slowRate}); err != nil {
		return err
	}
	defer sim.Stop(ctx)
	capped := &http.Client{Transport: sim.Wrap("docker.io", http.DefaultTransport)}
	get := func(c *http.Client) (time.Duration, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v2/library/app/blobs/sha256:abc", nil)
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		start := time.Now() // as the test times it: from the answer's arrival
		if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != res.slowSize {
			return 0, fmt.Errorf("read %d of %d bytes: %v", n, res.slowSize, err)
		}
		return time.Since(start), nil
	}
	into := func(ds *[]time.Duration, c *http.Client) func() error {
		return func() error {
			d, err := get(c)
			*ds = append(*ds, d)
			return err
		}
	}
	return alternate(res.rounds, into(&res.capped, capped), into(&res.uncapped, http.DefaultClient))
}

// failFastBench runs lifeboat in front of a registry, caches one image, blackholes the upstream
// (`lifeboat outage start --mode blackhole`) and then HEADs, alternately, the cached image's tag
// (served stale) and a tag never cached (404).
func failFastBench(ctx context.Context, scratch, tools, lifeboat string, res *claimResults) error {
	base := filepath.Join(scratch, "claims")
	reg, regAddr, err := startRegistry(base, tools)
	if err != nil {
		return err
	}
	defer reg.stop()
	img, err := random.Image(4096, 1)
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(regAddr+"/library/claims:1", name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return err
	}
	lbDir := filepath.Join(base, "lifeboat")
	lb, lbAddr, err := startLifeboat(lbDir, lifeboat, regAddr)
	if err != nil {
		return err
	}
	defer lb.stop()
	cached := "http://" + lbAddr + "/v2/library/claims/manifests/1"
	never := "http://" + lbAddr + "/v2/library/never-cached/manifests/1"
	if _, err := headStatus(cached, http.StatusOK); err != nil { // caches the manifest
		return err
	}
	admin := "--admin-socket=" + filepath.Join(lbDir, "a.sock")
	if out, err := exec.CommandContext(ctx, lifeboat, "outage", "start", "--mode", "blackhole", admin).CombinedOutput(); err != nil {
		return fmt.Errorf("lifeboat outage start: %v\n%s", err, out)
	}
	if res.failFirst, err = headStatus(never, http.StatusNotFound); err != nil {
		return err
	}
	into := func(ds *[]time.Duration, url string, status int) func() error {
		return func() error {
			d, err := headStatus(url, status)
			*ds = append(*ds, d)
			return err
		}
	}
	if err := alternate(res.rounds, into(&res.failing, never, http.StatusNotFound), into(&res.stale, cached, http.StatusOK)); err != nil {
		return err
	}
	// Release the requests the blackhole holds, so that lifeboat stops promptly.
	if out, err := exec.CommandContext(ctx, lifeboat, "outage", "stop", admin).CombinedOutput(); err != nil {
		return fmt.Errorf("lifeboat outage stop: %v\n%s", err, out)
	}
	return nil
}

// headStatus times a manifest HEAD that must answer status.
func headStatus(url string, status int) (time.Duration, error) {
	req, _ := http.NewRequest(http.MethodHead, url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	start := time.Now()
	resp, err := headClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != status {
		return 0, fmt.Errorf("HEAD %s: %s, want %d", url, resp.Status, status)
	}
	return time.Since(start), nil
}

// capRatio is the throughput through the cap divided by the cap, for the reads of ds.
func (r claimResults) capRatio(d time.Duration) float64 {
	return float64(r.slowSize) / d.Seconds() / float64(r.slowRate)
}

func renderClaims(b *strings.Builder, r claimResults) {
	fmt.Fprintf(b, "\n## Figures the tests assert with wide margins\n\n")
	fmt.Fprintf(b, "Medians of %d rounds, the subject and its baseline alternating (the first swapped each round), with their range.\n\n", r.rounds)
	fmt.Fprintf(b, "| measured | subject | baseline | ratio |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(b, "| `slow` outage, %d MiB body at a %d MiB/s cap: throughput ÷ cap (TestSlowRate asserts 0.25–1.05) | %s | uncapped: %s | %s |\n",
		r.slowSize>>20, r.slowRate>>20, durSpread(r.capped), durSpread(r.uncapped), floatSpread(mapSlice(r.capped, r.capRatio), 2))
	fmt.Fprintf(b, "| upstream blackholed: HEAD of a tag never cached (404) ÷ of a cached one (stale 200); the first 404: %s (TestOutageDrill asserts a failing pull under %s) | %s | %s | %.2f |\n",
		r.failFirst.Round(time.Microsecond*10), "10 s", durSpread(r.failing), durSpread(r.stale), median(r.failing).Seconds()/median(r.stale).Seconds())
	fmt.Fprintf(b, "\n`lifeboat demo`, %d runs one after another, as a new user runs it: %s from start to exit (TestDemoBinary asserts under 20 s); "+
		"its step 4, a never-cached image during the outage with the registry marked down: %s (upstream_timeout is %s; TestDemo asserts only that the registry was down and the step under 10 s).\n",
		len(r.demoWall), durSpread(r.demoWall), durSpread(r.demoStep4), "500ms")
}

type claimsJSON struct {
	Rounds                int       `json:"rounds"`
	SlowRateBytesPerS     int64     `json:"slow_rate_bytes_per_s"`
	SlowBodyBytes         int64     `json:"slow_body_bytes"`
	SlowSeconds           []float64 `json:"slow_seconds"`
	UncappedSeconds       []float64 `json:"uncapped_seconds"`
	SlowToCapRatio        float64   `json:"slow_throughput_to_cap_ratio"` // of the median read
	NeverCachedFirstS     float64   `json:"blackholed_never_cached_first_seconds"`
	NeverCachedSeconds    []float64 `json:"blackholed_never_cached_seconds"`
	CachedStaleSeconds    []float64 `json:"blackholed_cached_stale_seconds"`
	NeverCachedToCachedRt float64   `json:"blackholed_never_cached_to_cached_ratio"` // of the medians
	DemoSeconds           []float64 `json:"demo_seconds"`
	DemoStep4Seconds      []float64 `json:"demo_step4_seconds"`
}

func (r claimResults) json() claimsJSON {
	secs := func(ds []time.Duration) []float64 {
		var s []float64
		for _, d := range ds {
			s = append(s, d.Seconds())
		}
		return s
	}
	return claimsJSON{
		Rounds: r.rounds, SlowRateBytesPerS: r.slowRate, SlowBodyBytes: r.slowSize,
		SlowSeconds: secs(r.capped), UncappedSeconds: secs(r.uncapped), SlowToCapRatio: r.capRatio(median(r.capped)),
		NeverCachedFirstS: r.failFirst.Seconds(), NeverCachedSeconds: secs(r.failing), CachedStaleSeconds: secs(r.stale),
		NeverCachedToCachedRt: median(r.failing).Seconds() / median(r.stale).Seconds(),
		DemoSeconds:           secs(r.demoWall), DemoStep4Seconds: secs(r.demoStep4),
	}
}
