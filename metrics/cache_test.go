package metrics

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

type fakeStats struct{ used, budget, evicted int64 }

func (f fakeStats) Usage() (int64, int64) { return f.used, f.budget }
func (f fakeStats) Evictions() int64      { return f.evicted }

func TestCacheCollector(t *testing.T) {
	c := NewCacheCollector(fakeStats{used: 1234, budget: 5678, evicted: 9})
	want := `
# HELP lifeboat_cache_budget_bytes Size budget of the cache.
# TYPE lifeboat_cache_budget_bytes gauge
lifeboat_cache_budget_bytes 5678
# HELP lifeboat_cache_bytes Bytes of blob content in the cache.
# TYPE lifeboat_cache_bytes gauge
lifeboat_cache_bytes 1234
# HELP lifeboat_cache_evicted_blobs_total Blobs removed by the evictor.
# TYPE lifeboat_cache_evicted_blobs_total counter
lifeboat_cache_evicted_blobs_total 9
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

type fakeHealth []endpoints.Status

func (f fakeHealth) Endpoints() []endpoints.Status { return f }
func (f fakeHealth) DigestMismatches() int64       { return 2 }

type fakeSim outage.Status

func (f fakeSim) Status() outage.Status { return outage.Status(f) }

func TestUpstreamAndOutageCollectors(t *testing.T) {
	h := fakeHealth{
		{Registry: "docker.io", Endpoint: "https://registry-1.docker.io", Up: false, Failures: 3},
		{Registry: "ghcr.io", Endpoint: "https://ghcr.io", Up: true},
	}
	want := `
# HELP lifeboat_digest_mismatches_total Upstream content that failed digest verification and was not cached.
# TYPE lifeboat_digest_mismatches_total counter
lifeboat_digest_mismatches_total 2
# HELP lifeboat_upstream_up Whether the upstream endpoint is considered up (1) or its breaker is open (0).
# TYPE lifeboat_upstream_up gauge
lifeboat_upstream_up{endpoint="https://ghcr.io",registry="ghcr.io"} 1
lifeboat_upstream_up{endpoint="https://registry-1.docker.io",registry="docker.io"} 0
`
	if err := testutil.CollectAndCompare(NewUpstreamCollector(h), strings.NewReader(want), "lifeboat_upstream_up", "lifeboat_digest_mismatches_total"); err != nil {
		t.Fatal(err)
	}
	sim := fakeSim{Active: true, Spec: outage.Spec{Mode: "blackhole"}, Affected: 7}
	want = `
# HELP lifeboat_outage_simulated 1 while an upstream outage is being simulated, labelled with its mode.
# TYPE lifeboat_outage_simulated gauge
lifeboat_outage_simulated{mode="blackhole"} 1
`
	if err := testutil.CollectAndCompare(NewOutageCollector(sim), strings.NewReader(want), "lifeboat_outage_simulated"); err != nil {
		t.Fatal(err)
	}
}

func TestMirrorMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMirror(reg)
	m.Observe(mirror.Answer{Method: "GET", Route: "blob", Status: 200, Cache: resolver.Hit, Bytes: 100})
	m.Observe(mirror.Answer{Method: "GET", Route: "blob", Status: 200, Cache: resolver.Miss, Bytes: 50, Aborted: true})
	m.Observe(mirror.Answer{Method: "HEAD", Route: "manifest", Status: 404})
	m.Observe(mirror.Answer{Method: "GET", Route: "ping", Status: 200})
	want := `
# HELP lifeboat_mirror_requests_total Registry mirror answers by route (tag, manifest, blob, tags, ...), method, X-Lifeboat-Cache result (hit, miss, stale, revalidated, or error) and HTTP status.
# TYPE lifeboat_mirror_requests_total counter
lifeboat_mirror_requests_total{code="200",method="GET",result="error",route="blob"} 1
lifeboat_mirror_requests_total{code="200",method="GET",result="hit",route="blob"} 1
lifeboat_mirror_requests_total{code="200",method="GET",result="none",route="ping"} 1
lifeboat_mirror_requests_total{code="404",method="HEAD",result="error",route="manifest"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "lifeboat_mirror_requests_total"); err != nil {
		t.Fatal(err)
	}
}

func TestUpstreamMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	u := NewUpstream(reg)
	base := endpoints.Request{Registry: "docker.io", Endpoint: "https://registry-1.docker.io"}
	for _, r := range []struct {
		op  string
		err error
		n   int64
	}{
		{"head-manifest", nil, 0},
		{"head-manifest", errdefs.ErrUnavailable, 0},
		{"get-blob", errdefs.ErrNotFound, 0},
		{"blob-body", nil, 1234},
	} {
		req := base
		req.Op, req.Err, req.Bytes = r.op, r.err, r.n
		u.Observe(req)
	}
	want := `
# HELP lifeboat_upstream_fetched_bytes_total Blob bytes received from upstream endpoints.
# TYPE lifeboat_upstream_fetched_bytes_total counter
lifeboat_upstream_fetched_bytes_total{endpoint="https://registry-1.docker.io",registry="docker.io"} 1234
# HELP lifeboat_upstream_requests_total Requests to upstream endpoints by registry, endpoint, operation and result (ok, notfound, denied, failure, canceled, error).
# TYPE lifeboat_upstream_requests_total counter
lifeboat_upstream_requests_total{endpoint="https://registry-1.docker.io",op="blob-body",registry="docker.io",result="ok"} 1
lifeboat_upstream_requests_total{endpoint="https://registry-1.docker.io",op="get-blob",registry="docker.io",result="notfound"} 1
lifeboat_upstream_requests_total{endpoint="https://registry-1.docker.io",op="head-manifest",registry="docker.io",result="failure"} 1
lifeboat_upstream_requests_total{endpoint="https://registry-1.docker.io",op="head-manifest",registry="docker.io",result="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "lifeboat_upstream_requests_total", "lifeboat_upstream_fetched_bytes_total"); err != nil {
		t.Fatal(err)
	}
}

// fillingHealth is a Health that reports fills too, as *resolver.Resolver does.
type fillingHealth struct {
	fakeHealth
	st fill.Stats
}

func (f fillingHealth) Fills() fill.Stats { return f.st }

func TestFillMetrics(t *testing.T) {
	h := fillingHealth{st: fill.Stats{Running: 5, Abandoned: 2, Waiting: 1, Refused: 7, Cancelled: 3}}
	want := `
# HELP lifeboat_fills_abandoned Blob downloads in progress that no client reads any more.
# TYPE lifeboat_fills_abandoned gauge
lifeboat_fills_abandoned 2
# HELP lifeboat_fills_cancelled_total Abandoned blob downloads cancelled past the limit of abandoned downloads.
# TYPE lifeboat_fills_cancelled_total counter
lifeboat_fills_cancelled_total 3
# HELP lifeboat_fills_refused_total Requests refused (429) because every blob download slot stayed busy.
# TYPE lifeboat_fills_refused_total counter
lifeboat_fills_refused_total 7
# HELP lifeboat_fills_running Blob downloads from upstreams in progress.
# TYPE lifeboat_fills_running gauge
lifeboat_fills_running 5
# HELP lifeboat_fills_waiting Requests waiting for a blob download slot.
# TYPE lifeboat_fills_waiting gauge
lifeboat_fills_waiting 1
`
	names := []string{"lifeboat_fills_running", "lifeboat_fills_abandoned", "lifeboat_fills_waiting", "lifeboat_fills_refused_total", "lifeboat_fills_cancelled_total"}
	if err := testutil.CollectAndCompare(NewUpstreamCollector(h), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// A Health without fills exposes none of them.
	if n := testutil.CollectAndCount(NewUpstreamCollector(fakeHealth{}), names...); n != 0 {
		t.Errorf("a Health without fills exposed %d fill series", n)
	}
}
