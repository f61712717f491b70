package plan

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// The test upstream and resolvers of the plans' tests: the part of the resolver's own test
// helpers that these tests use.

// fault is what the test upstream does instead of answering normally.
type fault string

const (
	healthy   fault = ""
	status503 fault = "503"
	hang      fault = "hang" // accept and never answer until the client gives up
)

// testUpstream is a real registry (go-containerregistry's) behind httptest, wrapped to count
// requests by kind and to fail on demand.
type testUpstream struct {
	*httptest.Server
	fault    atomic.Value // fault
	counts   sync.Map     // "HEAD manifests" → *atomic.Int64
	released chan struct{}
}

func newTestUpstream(t *testing.T) *testUpstream {
	t.Helper()
	u := &testUpstream{released: make(chan struct{})}
	u.fault.Store(healthy)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "ping"
		for _, k := range []string{"manifests", "blobs", "tags", "referrers"} {
			if strings.Contains(r.URL.Path, "/"+k+"/") {
				kind = k
			}
		}
		u.counter(r.Method + " " + kind).Add(1)
		switch u.fault.Load().(fault) {
		case status503:
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		case hang:
			select {
			case <-r.Context().Done():
			case <-u.released:
			}
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(u.released)
		u.Close()
	})
	return u
}

func (u *testUpstream) counter(key string) *atomic.Int64 {
	c, _ := u.counts.LoadOrStore(key, new(atomic.Int64))
	return c.(*atomic.Int64)
}

func (u *testUpstream) count(key string) int64 { return u.counter(key).Load() }

// totalRequests counts every request the upstream received, of any kind.
func (u *testUpstream) totalRequests() int64 {
	var n int64
	u.counts.Range(func(_, v any) bool {
		n += v.(interface{ Load() int64 }).Load()
		return true
	})
	return n
}

func (u *testUpstream) setFault(f fault) { u.fault.Store(f) }

func (u *testUpstream) host() string { return strings.TrimPrefix(u.URL, "http://") }

// push writes a random image to repo:tag and returns it.
func (u *testUpstream) push(t *testing.T, repo, tag string, layerSize int64) v1.Image {
	t.Helper()
	img, err := random.Image(layerSize, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(u.host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return img
}

const testRegistry = "registry.test"

// testHealth is the circuit breaker of the test resolvers: quick to open and to probe.
var testHealth = endpoints.Health{FailureThreshold: 2, ProbeInterval: 20 * time.Millisecond, ProbeMaxInterval: 50 * time.Millisecond}

// newPlanner is a planner over a resolver on a fresh cache with registry.test at url, and set
// applied to the resolver's options.
func newPlanner(t *testing.T, url string, set func(*resolver.Options)) (*Planner, *cache.Store) {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	opts := resolver.Options{
		Endpoints: map[string][]string{testRegistry: {url}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	}
	if set != nil {
		set(&opts)
	}
	r, err := resolver.New(t.Context(), store, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); store.Close() })
	return New(r, store), store
}

// newTestPlanner is a planner whose registry.test upstream is up, with the resolver's test
// settings: upstream first, a quick breaker, and fills that stream what arrived.
func newTestPlanner(t *testing.T, up *testUpstream) (*Planner, *cache.Store) {
	t.Helper()
	return newPlanner(t, up.URL, func(o *resolver.Options) {
		o.Policy = resolver.PolicyUpstreamFirst
		o.TagMaxAge = time.Hour
		o.UpstreamTimeout = 3 * time.Second // generous: tests run in parallel under -race on 2 cores
		o.IdleTimeout = 5 * time.Second
		o.FillTimeout = time.Minute
		o.VerifyBeforeSend = -1
		o.Health = testHealth
	})
}

func mustDigest(t *testing.T, img v1.Image) digest.Digest {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.String())
}

func readBlob(ctx context.Context, r *resolver.Resolver, repo string, dgst digest.Digest) ([]byte, resolver.CacheStatus, error) {
	b, err := r.Blob(ctx, testRegistry, repo, dgst)
	if err != nil {
		return nil, "", err
	}
	defer b.Close()
	rc, err := b.Reader(0, b.Descriptor.Size)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	return data, b.Status, err
}

// waitFor polls cond until it holds, failing the test after a generous deadline.
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
