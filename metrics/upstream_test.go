package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lifeboat-dev/lifeboat/endpoints"
)

// TestUpstreamForget: the series of a forgotten endpoint go, those of the others stay.
func TestUpstreamForget(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	u := NewUpstream(reg)
	for _, ep := range []string{"https://a.test", "https://b.test"} {
		u.Observe(endpoints.Request{Registry: ep[8:], Endpoint: ep, Op: "tags", Duration: time.Millisecond})
		u.Observe(endpoints.Request{Registry: ep[8:], Endpoint: ep, Op: "blob-body", Bytes: 10})
	}
	count := func() int {
		n, err := testutil.GatherAndCount(reg)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	both := count()
	u.Forget("a.test", "https://a.test")
	if got, want := count(), both/2; got != want {
		t.Errorf("%d series after forgetting one of two endpoints, want %d", got, want)
	}
	if n := testutil.ToFloat64(u.fetched.WithLabelValues("b.test", "https://b.test")); n != 10 {
		t.Errorf("the other endpoint's fetched bytes: %v", n)
	}
}
