package harness

import (
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// BlobRangeGets counts the GET requests for repo's blob dgst that the registry answered with
// 206 Partial Content (a Range request, a download resumed), from its access log.
func (r *Registry) BlobRangeGets(repo, dgst string) int {
	return strings.Count(r.proc.Log(), `"GET /v2/`+repo+`/blobs/`+dgst+` HTTP/1.1" 206`)
}

// Histogram scrapes the daemon's /metrics and returns the sample count of the histogram name
// and its cumulative bucket counts by upper bound. It fails the test when name is not exported.
func (lb *Lifeboat) Histogram(t testing.TB, name string) (count uint64, buckets map[float64]uint64) {
	t.Helper()
	fam, ok := lb.families(t)[name]
	if !ok || len(fam.GetMetric()) == 0 || fam.GetMetric()[0].GetHistogram() == nil {
		t.Fatalf("harness: lifeboat exports no histogram %s", name)
	}
	h := fam.GetMetric()[0].GetHistogram()
	buckets = map[float64]uint64{}
	for _, b := range h.GetBucket() {
		buckets[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	return h.GetSampleCount(), buckets
}

// families scrapes the daemon's /metrics.
func (lb *Lifeboat) families(t testing.TB) map[string]*dto.MetricFamily {
	t.Helper()
	if lb.MetricsAddr == "" {
		t.Fatal("harness: start lifeboat with LifeboatOptions.Metrics to read its metrics")
	}
	resp, err := http.Get("http://" + lb.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("harness: parse /metrics: %v", err)
	}
	return families
}
