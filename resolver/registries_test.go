package resolver

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/rawhttp"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// TestUnlistedRegistriesAreRefused names registries the resolver does not mirror, through every
// call that takes one: each is refused as not mirrored, and nothing is dialled, created,
// observed or left running for it. Not parallel: it counts the process's goroutines.
func TestUnlistedRegistriesAreRefused(t *testing.T) {
	target, accepts := rawhttp.Closer(t)
	_, port, _ := net.SplitHostPort(target)
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var clients, observed atomic.Int64
	r, err := New(t.Context(), store, Options{
		Endpoints:       map[string][]string{testRegistry: {"http://" + target}},
		Registries:      []string{"ghcr.io"},
		UpstreamTimeout: 2 * time.Second,
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			clients.Add(1)
			return upstream.New(registry, endpoint, upstream.Options{})
		},
		ObserveUpstream: func(endpoints.Request) { observed.Add(1) },
		Health:          endpoints.Health{FailureThreshold: 1, ProbeInterval: time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	clients.Store(0)
	before := r.Endpoints()
	baseline := runtime.NumGoroutine()

	ctx := t.Context()
	dgst := digest.FromString("x")
	calls := map[string]func(registry string) error{
		"Manifest by tag": func(reg string) error { _, err := r.Manifest(ctx, reg, "x", "latest"); return err },
		"Manifest by digest": func(reg string) error {
			_, err := r.Manifest(ctx, reg, "x", dgst.String())
			return err
		},
		"StatBlob":  func(reg string) error { _, _, err := r.StatBlob(ctx, reg, "x", dgst); return err },
		"Blob":      func(reg string) error { _, err := r.Blob(ctx, reg, "x", dgst); return err },
		"Tags":      func(reg string) error { _, _, err := r.Tags(ctx, reg, "x"); return err },
		"Referrers": func(reg string) error { _, err := r.Referrers(ctx, reg, "x", dgst, ""); return err },
	}
	for i := range 50 {
		for _, reg := range []string{"127.0.0.1:" + port, "localhost:" + port, fmt.Sprintf("unlisted-%d.test", i), "quay.io"} {
			for name, call := range calls {
				err := call(reg)
				if !errors.Is(err, endpoints.ErrNotMirrored) || !errdefs.IsNotFound(err) {
					t.Fatalf("%s of %s: %v, want endpoints.ErrNotMirrored", name, reg, err)
				}
				if want := "registry " + reg + " is not mirrored by this lifeboat"; err.Error() != want {
					t.Fatalf("%s of %s: %q, want %q", name, reg, err, want)
				}
			}
		}
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("%d connections to a registry that is not mirrored", n)
	}
	if n := clients.Load(); n != 0 {
		t.Errorf("%d upstream clients made for registries that are not mirrored", n)
	}
	if n := observed.Load(); n != 0 {
		t.Errorf("%d upstream requests observed", n)
	}
	if after := r.Endpoints(); !slices.Equal(after, before) {
		t.Errorf("endpoints in use changed from %+v to %+v", before, after)
	}
	registrytest.WaitGoroutines(t, "after the refused requests", baseline)

	// The listed ones are mirrored: the configured endpoint (the counting listener) is dialled.
	if _, err := r.Manifest(ctx, testRegistry, "x", "latest"); errors.Is(err, endpoints.ErrNotMirrored) {
		t.Fatalf("a listed registry refused: %v", err)
	}
	if accepts.Load() == 0 {
		t.Error("the listed registry's endpoint was not dialled")
	}
}

func TestListedRegistryNames(t *testing.T) {
	t.Parallel()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	newClient := func(string, string) (endpoints.Client, error) { return registrytest.NewDownClient("https://x"), nil }
	for _, bad := range []Options{
		{Registries: []string{"../../x"}},
		{Registries: []string{""}},
		{Endpoints: map[string][]string{"a b": {"https://x"}}},
	} {
		bad.NewClient = newClient
		if _, err := New(t.Context(), store, bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("New(%+v): %v, want an invalid argument", bad, err)
		}
	}
	// Names are taken in any spelling NormalizeHost accepts.
	r, err := New(t.Context(), store, Options{Registries: []string{"GHCR.io", "index.docker.io"}, NewClient: newClient})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, reg := range []string{"ghcr.io", "docker.io"} {
		if _, _, err := r.Tags(t.Context(), reg, "x"); errors.Is(err, endpoints.ErrNotMirrored) {
			t.Errorf("%s: %v", reg, err)
		}
	}
}

// TestAnyRegistryIsBounded mirrors any registry: the unlisted ones in use are capped (the least
// recently used forgotten: status, metrics, probe and idle connections). A listed registry is
// kept whatever happens. (endpoints' TestIdleRegistriesForgotten: a down one left idle is
// forgotten by its own probe, which ends.)
// Not parallel: it counts the process's goroutines.
func TestAnyRegistryIsBounded(t *testing.T) {
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var mu sync.Mutex
	clients := map[string]*registrytest.DownClient{}
	forgotten := map[string]bool{}
	const maxOthers = 3
	r, err := New(t.Context(), store, Options{
		Registries:         []string{testRegistry},
		AnyRegistry:        true,
		MaxOtherRegistries: maxOthers,
		OtherRegistryIdle:  time.Hour, // no forgetting for idleness in the first part
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			mu.Lock()
			defer mu.Unlock()
			c := registrytest.NewDownClient(endpoint)
			clients[registry] = c
			return c, nil
		},
		ForgetUpstream: func(registry, endpoint string) {
			mu.Lock()
			defer mu.Unlock()
			forgotten[registry+" "+endpoint] = true
		},
		Health: endpoints.Health{FailureThreshold: 1, ProbeInterval: time.Millisecond, ProbeMaxInterval: 2 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	baseline := runtime.NumGoroutine()
	ctx := t.Context()
	registriesInUse := func() []string {
		var regs []string
		for _, st := range r.Endpoints() {
			regs = append(regs, st.Registry)
		}
		return slices.Compact(regs)
	}

	// The listed registry goes down: its probe runs.
	if _, _, err := r.Tags(ctx, testRegistry, "x"); !errdefs.IsNotFound(err) {
		t.Fatalf("tags of the listed registry: %v", err)
	}
	const others = 20
	for i := range others {
		if _, _, err := r.Tags(ctx, fmt.Sprintf("other-%02d.test", i), "x"); !errdefs.IsNotFound(err) || errors.Is(err, endpoints.ErrNotMirrored) {
			t.Fatalf("tags of other-%02d.test: %v", i, err)
		}
		if regs := registriesInUse(); len(regs) > maxOthers+1 || !slices.Contains(regs, testRegistry) {
			t.Fatalf("after %d unlisted registries, in use: %v", i+1, regs)
		}
	}
	want := []string{"other-17.test", "other-18.test", "other-19.test", testRegistry}
	if regs := registriesInUse(); !slices.Equal(regs, want) {
		t.Errorf("in use: %v, want the %d most recent and the listed one: %v", regs, maxOthers, want)
	}
	mu.Lock()
	for i := range others - maxOthers {
		reg := fmt.Sprintf("other-%02d.test", i)
		if !forgotten[reg+" https://"+reg] {
			t.Errorf("%s was not forgotten by the metrics", reg)
		}
		if clients[reg].IdleCloses.Load() == 0 {
			t.Errorf("%s's idle connections were not closed", reg)
		}
	}
	if len(forgotten) != others-maxOthers {
		t.Errorf("forgotten: %v", forgotten)
	}
	mu.Unlock()
	// One probe for the listed registry and one for each unlisted one kept.
	registrytest.WaitGoroutines(t, "probes of forgotten registries", baseline+maxOthers+1)

	// The probes of the forgotten endpoints stopped: their pings no longer grow.
	mu.Lock()
	forgottenClient := clients["other-00.test"]
	mu.Unlock()
	pings := forgottenClient.Pings.Load()
	listedPings := clients[testRegistry].Pings.Load()
	registrytest.Wait(t, "the listed registry's probe to ping again", func() bool { return clients[testRegistry].Pings.Load() > listedPings+5 })
	if n := forgottenClient.Pings.Load(); n != pings {
		t.Errorf("a forgotten endpoint was pinged %d more times", n-pings)
	}
}
