package endpoints

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// TestTimeoutWhileOthersAreAnswered: a timeout while the endpoint answers other requests is a
// slow (loaded) registry, not a gone one: it counts like any failure, and only a timeout with
// no answer at all meanwhile marks the endpoint down at once.
func TestTimeoutWhileOthersAreAnswered(t *testing.T) {
	t.Parallel()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	e := newEndpoint("registry.test", registrytest.NewDownClient("https://registry.test"), Health{FailureThreshold: 3}, stop)
	timedOut := context.DeadlineExceeded

	sent := time.Now()
	e.observe(t.Context(), time.Now(), nil) // another request, sent later, is answered
	e.observe(t.Context(), sent, timedOut)
	if !e.usable() {
		t.Fatal("a timeout while other requests were answered marked the endpoint down")
	}
	e.observe(t.Context(), time.Now(), timedOut) // nothing answered since it was sent
	if e.usable() {
		t.Fatal("a timeout with no answer at all meanwhile left the endpoint up")
	}
}

// TestIdleRegistriesForgotten: with AnyRegistry, an unlisted registry that is down and left
// unasked is forgotten by its own probe, which ends; the listed one stays, probing. Not
// parallel: it counts the process's goroutines.
func TestIdleRegistriesForgotten(t *testing.T) {
	var mu sync.Mutex
	clients := map[string]*registrytest.DownClient{}
	forgotten := map[string]bool{}
	tb, err := New(Options{
		Registries:        []string{"listed.test"},
		AnyRegistry:       true,
		OtherRegistryIdle: time.Hour, // nothing is idle yet
		NewClient: func(registry, endpoint string) (Client, error) {
			mu.Lock()
			defer mu.Unlock()
			c := registrytest.NewDownClient(endpoint)
			clients[registry] = c
			return c, nil
		},
		Forget: func(registry, endpoint string) {
			mu.Lock()
			defer mu.Unlock()
			forgotten[registry] = true
		},
		Health: Health{FailureThreshold: 1, ProbeInterval: time.Millisecond, ProbeMaxInterval: 2 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tb.Close)
	baseline := runtime.NumGoroutine()
	inUse := func() []string {
		var regs []string
		for _, st := range tb.Statuses() {
			regs = append(regs, st.Registry)
		}
		return slices.Compact(regs)
	}
	const others = 3
	for _, reg := range []string{"listed.test", "other-0.test", "other-1.test", "other-2.test"} {
		eps, err := tb.Get(reg)
		if err != nil {
			t.Fatal(err)
		}
		// Down at once (threshold 1): its probe starts.
		if _, _, err := Try(t.Context(), eps, "tags", func(ctx context.Context, c Client) ([]string, error) { return c.Tags(ctx, "x") }); !errdefs.IsUnavailable(err) {
			t.Fatalf("%s: %v, want unavailable", reg, err)
		}
	}
	if regs := inUse(); len(regs) != others+1 {
		t.Fatalf("in use: %v", regs)
	}
	tb.mu.Lock()
	tb.opts.OtherRegistryIdle = time.Millisecond
	tb.mu.Unlock()
	registrytest.Wait(t, "idle registries to be forgotten", func() bool { return slices.Equal(inUse(), []string{"listed.test"}) })
	registrytest.WaitGoroutines(t, "probes of idle registries", baseline+1) // the listed registry's probe
	listedPings := clients["listed.test"].Pings.Load()
	registrytest.Wait(t, "the listed registry's probe to ping again", func() bool { return clients["listed.test"].Pings.Load() > listedPings+5 })
	mu.Lock()
	defer mu.Unlock()
	if len(forgotten) != others || forgotten["listed.test"] {
		t.Errorf("forgotten: %v, want the %d unlisted registries", forgotten, others)
	}
}
