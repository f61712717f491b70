package plan

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// The planners of the plans' tests, over resolvers set as resolver's own tests set theirs; their
// upstream and its images come from internal/registrytest.

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
func newTestPlanner(t *testing.T, up *registrytest.Upstream) (*Planner, *cache.Store) {
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
