package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
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
