package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestMetrics pulls an image through the mirror as containerd does (tag, manifest by digest,
// config and layers), cold, warm, during a simulated outage and with the registry stopped, and
// checks after each that /metrics moved by what the client saw: answers by route and
// X-Lifeboat-Cache result, body bytes sent, blob bytes fetched upstream, cache bytes, and the
// endpoint's up gauge. Every lifeboat_ metric exposed is documented in docs/metrics.md, and
// every one documented is exposed.
func TestMetrics(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	img := reg.PushRandom(t, "library/metrics-random", "v1", 2, 64<<10)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {reg.URL()}},
		Metrics:   true,
	})
	pull := newMirrorPull(t, lb, "library/metrics-random", "v1", img)
	ep := map[string]string{"registry": "docker.io", "endpoint": reg.URL()}

	// A configured endpoint is listed, up, from the start.
	m := scrapeMetrics(t, lb)
	if up, ok := m.get("lifeboat_upstream_up", ep); !ok || up != 1 {
		t.Fatalf("lifeboat_upstream_up%v = %v (listed: %v) before any pull, want 1", ep, up, ok)
	}

	// Cold: the tag and the blobs come from the upstream; the manifest was fetched with the tag.
	before := m
	pull.run(t, "miss", "hit", "miss")
	m = scrapeAnswered(t, lb, before, pull.requests())
	m.checkAnswers(t, "cold", before, pull, "miss", "hit", "miss")
	m.checkDelta(t, "cold", before, "lifeboat_upstream_fetched_bytes_total", ep, float64(pull.blobBytes))
	// The cache holds the manifest and the blobs.
	m.checkDelta(t, "cold", before, "lifeboat_cache_bytes", nil, float64(pull.blobBytes+int64(len(pull.manifest))))

	// Warm: the upstream confirms the tag; nothing else is asked of it.
	before = m
	pull.run(t, "revalidated", "hit", "hit")
	m = scrapeAnswered(t, lb, before, pull.requests())
	m.checkAnswers(t, "warm", before, pull, "revalidated", "hit", "hit")
	m.checkDelta(t, "warm", before, "lifeboat_upstream_fetched_bytes_total", ep, 0)
	m.checkDelta(t, "warm", before, "lifeboat_cache_bytes", nil, 0)
	if up, _ := m.get("lifeboat_upstream_up", ep); up != 1 {
		t.Errorf("lifeboat_upstream_up = %v with the registry answering, want 1", up)
	}

	// A simulated outage: the tag is served stale, and the breaker opens after 3 failures.
	before = m
	if _, err := lb.CLI(t, "outage", "start", "--mode", "http-503"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		pull.run(t, "stale", "hit", "hit")
	}
	m = scrapeAnswered(t, lb, before, 3*pull.requests())
	m.checkDelta(t, "simulated outage", before, "lifeboat_mirror_requests_total", map[string]string{"route": "tag", "method": "HEAD", "result": "stale", "code": "200"}, 3)
	m.checkDelta(t, "simulated outage", before, "lifeboat_upstream_fetched_bytes_total", ep, 0)
	if up, _ := m.get("lifeboat_upstream_up", ep); up != 0 {
		t.Errorf("lifeboat_upstream_up = %v after 3 failed tag checks in a simulated outage, want 0", up)
	}
	if v, _ := m.get("lifeboat_outage_simulated", map[string]string{"mode": "http-503"}); v != 1 {
		t.Errorf("lifeboat_outage_simulated{mode=\"http-503\"} = %v during the outage, want 1", v)
	}
	if v, _ := m.get("lifeboat_outage_affected_requests", nil); v < 1 {
		t.Errorf("lifeboat_outage_affected_requests = %v during the outage, want at least 1", v)
	}
	if v, _ := m.get("lifeboat_upstream_requests_total", map[string]string{"registry": "docker.io", "op": "head-manifest", "result": "failure"}); v < 1 {
		t.Errorf("no failed head-manifest in lifeboat_upstream_requests_total during the outage")
	}

	// The outage ends: the probe finds the registry and the endpoint is up again.
	if _, err := lb.CLI(t, "outage", "stop"); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "lifeboat_upstream_up to be 1 after the outage", 10*time.Second, lb.Process().Exited(), func() error {
		if up, _ := scrapeMetrics(t, lb).get("lifeboat_upstream_up", ep); up != 1 {
			return fmt.Errorf("lifeboat_upstream_up = %v", up)
		}
		return nil
	})
	m = scrapeMetrics(t, lb)
	if v, _ := m.get("lifeboat_outage_simulated", map[string]string{"mode": ""}); v != 0 {
		t.Errorf("lifeboat_outage_simulated{mode=\"\"} = %v after the outage, want 0", v)
	}

	// The registry goes away: tag HEADs and a tag GET are stale, the GET's body counted.
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatalf("stopping the registry: %v", err)
	}
	before = m
	for range 2 {
		pull.run(t, "stale", "hit", "hit")
	}
	pull.getTag(t, "stale")
	m = scrapeAnswered(t, lb, before, 2*pull.requests()+1)
	stale := map[string]string{"route": "tag", "result": "stale"}
	m.checkDelta(t, "registry down", before, "lifeboat_mirror_requests_total", stale, 3)
	m.checkDelta(t, "registry down", before, "lifeboat_mirror_sent_bytes_total", stale, float64(len(pull.manifest)))
	m.checkDelta(t, "registry down", before, "lifeboat_mirror_requests_total", map[string]string{"route": "blob", "result": "hit"}, float64(2*len(pull.blobs)))
	m.checkDelta(t, "registry down", before, "lifeboat_upstream_fetched_bytes_total", ep, 0)
	if up, _ := m.get("lifeboat_upstream_up", ep); up != 0 {
		t.Errorf("lifeboat_upstream_up = %v with the registry stopped, want 0", up)
	}
	if v, _ := m.get("lifeboat_upstream_consecutive_failures", ep); v < 3 {
		t.Errorf("lifeboat_upstream_consecutive_failures = %v with the registry stopped, want at least 3", v)
	}

	checkMetricsDocumented(t, m)
}

// mirrorPull is one image pulled from the mirror with the requests containerd sends.
type mirrorPull struct {
	lb        *harness.Lifeboat
	repo, tag string
	digest    string
	manifest  []byte
	blobs     map[string]int64 // config and layers: digest → size
	blobBytes int64
}

func newMirrorPull(t *testing.T, lb *harness.Lifeboat, repo, tag string, img v1.Image) *mirrorPull {
	t.Helper()
	p := &mirrorPull{lb: lb, repo: repo, tag: tag, digest: harness.Digest(t, img), blobs: map[string]int64{}}
	var err error
	if p.manifest, err = img.RawManifest(); err != nil {
		t.Fatal(err)
	}
	mf, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]v1.Descriptor{mf.Config}, mf.Layers...) {
		p.blobs[d.Digest.String()] = d.Size
		p.blobBytes += d.Size
	}
	return p
}

const manifestAccept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"

// run pulls: HEAD of the tag, GET of the manifest by digest, GET of each blob; each answer
// must be 200 with the X-Lifeboat-Cache given and the right body.
func (p *mirrorPull) run(t *testing.T, tagResult, manifestResult, blobResult string) {
	t.Helper()
	p.request(t, http.MethodHead, "/manifests/"+p.tag, tagResult, nil)
	p.request(t, http.MethodGet, "/manifests/"+p.digest, manifestResult, p.manifest)
	for d, size := range p.blobs {
		body := p.request(t, http.MethodGet, "/blobs/"+d, blobResult, nil)
		if int64(len(body)) != size {
			t.Fatalf("blob %s: %d bytes, want %d", d, len(body), size)
		}
	}
}

// requests is how many requests run sends.
func (p *mirrorPull) requests() int { return 2 + len(p.blobs) }

// getTag is a GET of the manifest by tag.
func (p *mirrorPull) getTag(t *testing.T, result string) {
	t.Helper()
	p.request(t, http.MethodGet, "/manifests/"+p.tag, result, p.manifest)
}

func (p *mirrorPull) request(t *testing.T, method, path, result string, want []byte) []byte {
	t.Helper()
	url := p.lb.URL() + "/v2/" + p.repo + path + "?ns=docker.io"
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Lifeboat-Cache") != result {
		t.Fatalf("%s %s: %s, X-Lifeboat-Cache %q, want 200 and %q: %s", method, url, resp.Status, resp.Header.Get("X-Lifeboat-Cache"), result, body)
	}
	if want != nil && string(body) != string(want) {
		t.Fatalf("%s %s: body differs from the manifest pushed", method, url)
	}
	return body
}

// metricSet is one scrape of /metrics.
type metricSet map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, lb *harness.Lifeboat) metricSet {
	t.Helper()
	resp, err := http.Get("http://" + lb.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// scrapeAnswered scrapes /metrics once the mirror counted n more answers than before. A client
// holds a whole answer a moment before the mirror counts it (it counts an answer once its
// handler returned), so a scrape right after the last answer can miss it.
func scrapeAnswered(t *testing.T, lb *harness.Lifeboat, before metricSet, n int) metricSet {
	t.Helper()
	was, _ := before.get("lifeboat_mirror_requests_total", nil)
	var m metricSet
	harness.WaitFor(t, fmt.Sprintf("the mirror to count %d more answers", n), 10*time.Second, lb.Process().Exited(), func() error {
		m = scrapeMetrics(t, lb)
		if now, _ := m.get("lifeboat_mirror_requests_total", nil); now < was+float64(n) {
			return fmt.Errorf("counted %v more", now-was)
		}
		return nil
	})
	return m
}

// get sums the samples of a counter or gauge whose labels include match, and says whether any
// sample matched.
func (m metricSet) get(name string, match map[string]string) (float64, bool) {
	fam, ok := m[name]
	if !ok {
		return 0, false
	}
	var sum float64
	found := false
next:
	for _, s := range fam.GetMetric() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range match {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		sum += s.GetCounter().GetValue() + s.GetGauge().GetValue()
	}
	return sum, found
}

// checkDelta checks that the metric moved by want since before.
func (m metricSet) checkDelta(t *testing.T, phase string, before metricSet, name string, match map[string]string, want float64) {
	t.Helper()
	was, _ := before.get(name, match)
	now, _ := m.get(name, match)
	if now-was != want {
		t.Errorf("%s: %s%v moved by %v (%v → %v), want %v", phase, name, match, now-was, was, now, want)
	}
}

// checkAnswers checks the mirror's counters after one run of p: one tag HEAD, one manifest GET,
// one GET per blob, with those results, the bytes each sent, and nothing else counted.
func (m metricSet) checkAnswers(t *testing.T, phase string, before metricSet, p *mirrorPull, tagResult, manifestResult, blobResult string) {
	t.Helper()
	req := func(route, method, result string) map[string]string {
		return map[string]string{"route": route, "method": method, "result": result, "code": "200"}
	}
	m.checkDelta(t, phase, before, "lifeboat_mirror_requests_total", req("tag", "HEAD", tagResult), 1)
	m.checkDelta(t, phase, before, "lifeboat_mirror_requests_total", req("manifest", "GET", manifestResult), 1)
	m.checkDelta(t, phase, before, "lifeboat_mirror_requests_total", req("blob", "GET", blobResult), float64(len(p.blobs)))
	m.checkDelta(t, phase, before, "lifeboat_mirror_requests_total", nil, float64(2+len(p.blobs)))
	m.checkDelta(t, phase, before, "lifeboat_mirror_sent_bytes_total", map[string]string{"route": "tag"}, 0)
	m.checkDelta(t, phase, before, "lifeboat_mirror_sent_bytes_total", map[string]string{"route": "manifest", "result": manifestResult}, float64(len(p.manifest)))
	m.checkDelta(t, phase, before, "lifeboat_mirror_sent_bytes_total", map[string]string{"route": "blob", "result": blobResult}, float64(p.blobBytes))
	m.checkDelta(t, phase, before, "lifeboat_mirror_sent_bytes_total", nil, float64(int64(len(p.manifest))+p.blobBytes))
}

// checkMetricsDocumented: the lifeboat_ metrics exposed and those docs/metrics.md lists in its
// tables are the same.
func checkMetricsDocumented(t *testing.T, m metricSet) {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(harness.ModuleRoot(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, match := range regexp.MustCompile("(?m)^\\| `(lifeboat_[a-z_]+)` \\|").FindAllStringSubmatch(string(doc), -1) {
		// The cluster tier's metrics exist only with [cluster] join set; this daemon is alone.
		if !strings.HasPrefix(match[1], "lifeboat_cluster_") && !strings.HasPrefix(match[1], "lifeboat_peer_") {
			documented = append(documented, match[1])
		}
	}
	var exposed []string
	for name := range m {
		if strings.HasPrefix(name, "lifeboat_") {
			exposed = append(exposed, name)
		}
	}
	slices.Sort(documented)
	slices.Sort(exposed)
	if !slices.Equal(documented, exposed) {
		t.Errorf("docs/metrics.md documents %q; /metrics exposes %q", documented, exposed)
	}
}
