package resolver

import (
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// TestRemotesPullsWithContainerdsOwnHandlers pulls an image in process with containerd's image
// handlers through the Remotes adapter, and again with the upstream hanging.
func TestRemotesPullsWithContainerdsOwnHandlers(t *testing.T) {
	t.Parallel()
	up := newTestUpstream(t)
	img := up.push(t, "app", "v1", 4096)
	r, _ := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()
	rr := r.Remotes()
	const ref = testRegistry + "/app:v1"

	pull := func() {
		t.Helper()
		name, desc, err := rr.Resolve(ctx, ref)
		if err != nil || name != ref || desc.Digest != mustDigest(t, img) {
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
	up.setFault(hang)
	pull() // stale tag, cached blobs
	if _, err := rr.Pusher(ctx, ref); !errdefs.IsNotImplemented(err) {
		t.Errorf("Pusher: %v, want not implemented", err)
	}
}
