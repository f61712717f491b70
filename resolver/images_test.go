package resolver

import (
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
)

// totalRequests counts every request the upstream received, of any kind.
func (u *testUpstream) totalRequests() int64 {
	var n int64
	u.counts.Range(func(_, v any) bool {
		n += v.(interface{ Load() int64 }).Load()
		return true
	})
	return n
}

// pullImage fetches what a containerd pull of repo:tag fetches through the mirror's paths when
// the index (if any) and platform are already known: the tag, the manifest by digest, then the
// blobs, waiting until each is committed. skip leaves those blobs out.
func pullImage(t *testing.T, r *Resolver, repo, tag string, img v1.Image, skip ...digest.Digest) {
	t.Helper()
	ctx := t.Context()
	if _, err := r.Manifest(ctx, testRegistry, repo, tag); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Manifest(ctx, testRegistry, repo, mustDigest(t, img).String()); err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	blobs := []digest.Digest{digest.Digest(cfg.String())}
	for _, d := range imageLayers(t, img) {
		blobs = append(blobs, d.digest)
	}
	for _, d := range blobs {
		if slices.Contains(skip, d) {
			continue
		}
		if _, _, err := readBlob(ctx, r, repo, d); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the blob to be committed", func() bool {
			ok, _ := r.local.HasBlob(ctx, testRegistry+"/"+repo, d)
			return ok
		})
	}
}

type layerInfo struct {
	digest digest.Digest
	size   int64
}

func imageLayers(t *testing.T, img v1.Image) []layerInfo {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var out []layerInfo
	for _, l := range m.Layers {
		out = append(out, layerInfo{digest.Digest(l.Digest.String()), l.Size})
	}
	return out
}
