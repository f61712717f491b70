package endpoints

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// downClient is an endpoint that is always down: every request and every probe fails.
type downClient struct {
	endpoint string
	pings    atomic.Int64
}

var errDown = fmt.Errorf("connection refused: %w", errdefs.ErrUnavailable)

func (c *downClient) Endpoint() string { return c.endpoint }
func (c *downClient) Ping(context.Context) error {
	c.pings.Add(1)
	return errDown
}
func (c *downClient) HeadManifest(context.Context, string, string) (ocispec.Descriptor, time.Time, error) {
	return ocispec.Descriptor{}, time.Time{}, errDown
}
func (c *downClient) GetManifest(context.Context, string, string) (ocispec.Descriptor, []byte, error) {
	return ocispec.Descriptor{}, nil, errDown
}
func (c *downClient) GetBlob(context.Context, string, digest.Digest) (io.ReadCloser, int64, error) {
	return nil, 0, errDown
}
func (c *downClient) HeadBlob(context.Context, string, digest.Digest) (int64, error) {
	return 0, errDown
}
func (c *downClient) Tags(context.Context, string) ([]string, error) { return nil, errDown }
func (c *downClient) Referrers(context.Context, string, digest.Digest, string) ([]byte, string, error) {
	return nil, "", errDown
}

// TestTimeoutWhileOthersAreAnswered: a timeout while the endpoint answers other requests is a
// slow (loaded) registry, not a gone one: it counts like any failure, and only a timeout with
// no answer at all meanwhile marks the endpoint down at once.
func TestTimeoutWhileOthersAreAnswered(t *testing.T) {
	t.Parallel()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	e := newEndpoint("registry.test", &downClient{endpoint: "https://registry.test"}, Health{FailureThreshold: 3}, stop)
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
	clients := map[string]*downClient{}
	forgotten := map[string]bool{}
	tb, err := New(Options{
		Registries:        []string{"listed.test"},
		AnyRegistry:       true,
		OtherRegistryIdle: time.Hour, // nothing is idle yet
		NewClient: func(registry, endpoint string) (Client, error) {
			mu.Lock()
			defer mu.Unlock()
			c := &downClient{endpoint: endpoint}
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
	waitFor(t, "idle registries to be forgotten", func() bool { return slices.Equal(inUse(), []string{"listed.test"}) })
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline+1 { // the listed registry's probe
		if time.Now().After(deadline) {
			t.Fatalf("the probes of idle registries did not end: %d goroutines, want at most %d", runtime.NumGoroutine(), baseline+1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	listedPings := clients["listed.test"].pings.Load()
	waitFor(t, "the listed registry's probe to ping again", func() bool { return clients["listed.test"].pings.Load() > listedPings+5 })
	mu.Lock()
	defer mu.Unlock()
	if len(forgotten) != others || forgotten["listed.test"] {
		t.Errorf("forgotten: %v, want the %d unlisted registries", forgotten, others)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
