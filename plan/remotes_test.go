package plan

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/rawhttp"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// TestRemotesPullsWithContainerdsOwnHandlers pulls an image in process with containerd's image
// handlers through the Remotes adapter, and again with the upstream hanging.
func TestRemotesPullsWithContainerdsOwnHandlers(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 4096)
	p, _ := newTestPlanner(t, up)
	ctx := t.Context()
	rr := p.Remotes()
	const ref = testRegistry + "/app:v1"

	pull := func() {
		t.Helper()
		name, desc, err := rr.Resolve(ctx, ref)
		if err != nil || name != ref || desc.Digest != registrytest.Digest(t, img) {
			t.Fatalf("Resolve: %q %+v %v", name, desc, err)
		}
		fetcher, err := rr.Fetcher(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := local.NewStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		h := images.Handlers(remotes.FetchHandler(cs, fetcher), images.ChildrenHandler(cs))
		if err := images.Dispatch(ctx, h, nil, desc); err != nil {
			t.Fatalf("pull: %v", err)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			if _, err := cs.Info(ctx, digest.Digest(d.String())); err != nil {
				t.Errorf("layer %s not pulled: %v", d, err)
			}
		}
	}
	pull()
	up.SetFault(registrytest.Hang)
	pull() // stale tag, cached blobs
	if _, err := rr.Pusher(ctx, ref); !errdefs.IsNotImplemented(err) {
		t.Errorf("Pusher: %v, want not implemented", err)
	}
}

// TestRemotesRefusesUnlistedRegistries resolves references of registries the resolver does not
// mirror through Remotes: each is refused as not mirrored, and nothing is dialled, created,
// observed or left running for it. Not parallel: it counts the process's goroutines.
func TestRemotesRefusesUnlistedRegistries(t *testing.T) {
	target, accepts := rawhttp.Closer(t)
	_, port, _ := net.SplitHostPort(target)
	var clients, observed atomic.Int64
	p, _ := newPlanner(t, "http://"+target, func(o *resolver.Options) {
		o.Registries = []string{"ghcr.io"}
		o.UpstreamTimeout = 2 * time.Second
		o.NewClient = func(registry, endpoint string) (endpoints.Client, error) {
			clients.Add(1)
			return upstream.New(registry, endpoint, upstream.Options{})
		}
		o.ObserveUpstream = func(endpoints.Request) { observed.Add(1) }
		o.Health = endpoints.Health{FailureThreshold: 1, ProbeInterval: time.Millisecond}
	})
	clients.Store(0)
	before := p.r.Endpoints()
	baseline := runtime.NumGoroutine()

	ctx := t.Context()
	rr := p.Remotes()
	for i := range 50 {
		for _, reg := range []string{"127.0.0.1:" + port, "localhost:" + port, fmt.Sprintf("unlisted-%d.test", i), "quay.io"} {
			_, _, err := rr.Resolve(ctx, reg+"/x:latest")
			if !errors.Is(err, endpoints.ErrNotMirrored) || !errdefs.IsNotFound(err) {
				t.Fatalf("Remotes.Resolve of %s: %v, want ErrNotMirrored", reg, err)
			}
			if want := "registry " + reg + " is not mirrored by this lifeboat"; err.Error() != want {
				t.Fatalf("Remotes.Resolve of %s: %q, want %q", reg, err, want)
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
	if after := p.r.Endpoints(); !slices.Equal(after, before) {
		t.Errorf("endpoints in use changed from %+v to %+v", before, after)
	}
	registrytest.WaitGoroutines(t, "after the refused requests", baseline)
}
