package resolver

import (
	"bytes"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// TestManifestServedOfflineAfterACrashAtItsCommit caches a manifest the way fetchManifest does
// and stops the moment the write returns, as a process killed right after the commit would:
// nothing after the write runs. Restarted on the same root with the upstream down, the resolver
// serves the manifest for its repository from the cache, and still not for another repository.
func TestManifestServedOfflineAfterACrashAtItsCommit(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 512)
	body := registrytest.RawManifest(t, img)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: registrytest.Digest(t, img), Size: int64(len(body))}
	repoKey := testRegistry + "/app"
	root := t.TempDir()
	ctx := t.Context()

	store, err := cache.Open(ctx, root, cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	ingester := store.LinkingTo(repoKey) // what fetchManifest writes manifests with
	if err := content.WriteBlob(ctx, ingester, manifestRefPrefix+repoKey+"@"+desc.Digest.String(), bytes.NewReader(body), desc); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil { // the crash: the process ends here
		t.Fatal(err)
	}

	up.SetFault(registrytest.Status503)
	r, _ := newTestResolverAt(t, root, PolicyUpstreamFirst, testHealth, up)
	m, err := r.Manifest(ctx, testRegistry, "app", desc.Digest.String())
	if err != nil || m.Status != Hit || !bytes.Equal(m.Body, body) {
		t.Fatalf("manifest after the crash, upstream down: %+v %s %v, want a hit", m.Descriptor, m.Status, err)
	}
	if _, err := r.Manifest(ctx, testRegistry, "elsewhere", desc.Digest.String()); !errdefs.IsNotFound(err) {
		t.Errorf("the manifest under another repository: %v, want not found", err)
	}
}
