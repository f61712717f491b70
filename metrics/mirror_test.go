package metrics

import (
	"maps"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// TestMirrorAnswers checks that the counts `lifeboat status` shows agree with the Prometheus
// counter: a failed answer is an error whatever its cache status, an answer without one is none.
func TestMirrorAnswers(t *testing.T) {
	m := NewMirror(prometheus.NewRegistry())
	for _, a := range []mirror.Answer{
		{Route: "blob", Method: http.MethodGet, Status: 200, Cache: resolver.Hit},
		{Route: "blob", Method: http.MethodGet, Status: 200, Cache: resolver.Hit},
		{Route: "blob", Method: http.MethodGet, Status: 200, Cache: resolver.Miss},
		{Route: "blob", Method: http.MethodGet, Status: 200, Cache: resolver.Miss, Aborted: true},
		{Route: "manifest", Method: http.MethodHead, Status: 200, Cache: resolver.Stale},
		{Route: "manifest", Method: http.MethodHead, Status: 404},
		{Route: "ping", Method: http.MethodGet, Status: 200},
	} {
		m.Observe(a)
	}
	want := map[string]int64{"hit": 2, "miss": 1, "stale": 1, "error": 2, "none": 1}
	if got := m.Answers(); !maps.Equal(got, want) {
		t.Errorf("answers %v, want %v", got, want)
	}
	if n := testutil.ToFloat64(m.requests.WithLabelValues("blob", http.MethodGet, "hit", "200")); n != 2 {
		t.Errorf("lifeboat_mirror_requests_total for blob hits: %v, want 2", n)
	}
}
