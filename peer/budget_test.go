package peer

import (
	"testing"
	"time"
)

func TestNewBudget(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	for _, tc := range []struct {
		name     string
		upstream time.Duration
		want     Budget
	}{
		// The figures the peers were tuned with, at the default upstream timeout.
		{"default", time.Second, Budget{PeerWait: 2 * time.Second, HeaderTimeout: 2 * time.Second, HeaderDelay: 250 * ms, HedgeDelay: 200 * ms, IdleTimeout: 10 * time.Second}},
		{"not set", 0, Budget{PeerWait: 2 * time.Second, HeaderTimeout: 2 * time.Second, HeaderDelay: 250 * ms, HedgeDelay: 200 * ms, IdleTimeout: 10 * time.Second}},
		// A slower registry: every wait on it grows in proportion; a stall in a body does not.
		{"5 s", 5 * time.Second, Budget{PeerWait: 10 * time.Second, HeaderTimeout: 10 * time.Second, HeaderDelay: 1250 * ms, HedgeDelay: time.Second, IdleTimeout: 10 * time.Second}},
		{"500 ms", 500 * ms, Budget{PeerWait: time.Second, HeaderTimeout: time.Second, HeaderDelay: 125 * ms, HedgeDelay: 100 * ms, IdleTimeout: 10 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := NewBudget(tc.upstream)
			if b != tc.want {
				t.Fatalf("NewBudget(%v) = %+v, want %+v", tc.upstream, b, tc.want)
			}
			// How the steps fit: a coalesced fill's headers (the home's wait for its registry,
			// then HeaderDelay) come within one peer's HeaderTimeout, which is no longer than the
			// resolver's wait for all of them; every holder a request may ask is asked within a
			// third of that wait.
			up := tc.upstream
			if up <= 0 {
				up = time.Second
			}
			if up+b.HeaderDelay >= b.HeaderTimeout || b.HeaderTimeout > b.PeerWait || (maxAttempts-1)*b.HedgeDelay >= b.PeerWait/3 {
				t.Errorf("the steps do not fit: %+v", b)
			}
		})
	}
}

// A Source's zero budget fields are the default's; those set are kept.
func TestSourceBudgetDefaults(t *testing.T) {
	t.Parallel()
	src := NewSource(newTestCluster("a"), SourceOptions{Budget: Budget{HedgeDelay: time.Minute}})
	want := NewBudget(time.Second)
	want.HedgeDelay = time.Minute
	if src.opts.Budget != want {
		t.Errorf("budget %+v, want %+v", src.opts.Budget, want)
	}
}
