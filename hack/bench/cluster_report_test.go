package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

// blobs is a round of failedBlobs cold blobs: the first took first, the others rest.
func blobs(first, rest time.Duration) []time.Duration {
	ds := []time.Duration{first}
	for range failedBlobs - 1 {
		ds = append(ds, rest)
	}
	return ds
}

// TestRenderFailedPaths: the peers-unreachable rows part each round's first blob from the
// others, every row's baseline is every blob of the cluster off, and the ratios are of times.
func TestRenderFailedPaths(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	r := clusterResults{
		fromPeer: []time.Duration{time.Second}, fromRegistry: []time.Duration{time.Second},
		coldOff:         [][]time.Duration{blobs(10*ms, 10*ms), blobs(10*ms, 10*ms)},
		coldUnreachable: [][]time.Duration{blobs(500*ms, 20*ms), blobs(520*ms, 20*ms)},
		coldStopped:     [][]time.Duration{blobs(30*ms, 30*ms), blobs(30*ms, 30*ms)},
	}
	for _, tc := range []struct {
		name string
		dead int
		want []string
	}{
		{"home stopped throughout", 0, []string{
			"the first of each round (it trips the breaker); baseline: a lone node (the cluster off), per blob | 510ms (500ms–520ms) | 10ms (10ms–10ms) | 51.00 |",
			"the next 7 cold blobs of each round, per blob | 20ms (20ms–20ms) | 10ms (10ms–10ms) | 2.00 |",
			"through another member, per blob; baseline: the cluster off | 30ms (30ms–30ms) | 10ms (10ms–10ms) | 3.00 |",
			"declared H dead before R's last blob in none of the rounds.",
		}},
		{"home declared dead once", 1, []string{"declared H dead before R's last blob in 1 of the rounds"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := r
			r.stoppedDeclaredDead = tc.dead
			var b strings.Builder
			renderFailedPaths(&b, r)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("report lacks %q:\n%s", w, b.String())
				}
			}
			j := r.json()
			near := func(x, y float64) bool { return math.Abs(x-y) < 1e-9 }
			if !near(j.PeersUnreachableFirstRatio, 51) || !near(j.PeersUnreachableNextRatio, 2) || !near(j.StoppedHomeRatio, 3) || len(j.ColdBlobStoppedHomeSeconds) != 2 {
				t.Errorf("JSON ratios %v, %v, %v over %d rounds, want 51, 2, 3 over 2",
					j.PeersUnreachableFirstRatio, j.PeersUnreachableNextRatio, j.StoppedHomeRatio, len(j.ColdBlobStoppedHomeSeconds))
			}
		})
	}
}
