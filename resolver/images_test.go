package resolver

import (
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// pullImage fetches what a containerd pull of repo:tag fetches through the mirror's paths when
// the index (if any) and platform are already known: the tag, the manifest by digest, then the
// blobs, waiting until each is committed. skip leaves those blobs out.
func pullImage(t *testing.T, r *Resolver, repo, tag string, img v1.Image, skip ...digest.Digest) {
	t.Helper()
	ctx := t.Context()
	if _, err := r.Manifest(ctx, testRegistry, repo, tag); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Manifest(ctx, testRegistry, repo, registrytest.Digest(t, img).String()); err != nil {
		t.Fatal(err)
	}
	for _, d := range registrytest.Blobs(t, img) {
		if slices.Contains(skip, d) {
			continue
		}
		if _, _, err := readBlob(ctx, r, repo, d); err != nil {
			t.Fatal(err)
		}
		registrytest.Wait(t, "the blob to be committed", func() bool {
			ok, _ := r.local.HasBlob(ctx, testRegistry+"/"+repo, d)
			return ok
		})
	}
}
