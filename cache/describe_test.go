package cache

import (
	"bytes"
	"crypto/sha512"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestDescribe: a blob's descriptor comes from the index, sha512 digests included, counts as a
// use, and a blob that is not there, or is being evicted, is not found.
func TestDescribe(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 20})
	ctx := t.Context()
	body := []byte(`{"schemaVersion":2}`)
	sum := sha512.Sum512(body)
	want := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.NewDigestFromBytes(digest.SHA512, sum[:]), Size: int64(len(body))}
	if err := content.WriteBlob(ctx, s, "describe", bytes.NewReader(body), want); err != nil {
		t.Fatal(err)
	}
	s.uses.mu.Lock()
	delete(s.uses.accessed, want.Digest)
	s.uses.mu.Unlock()

	got, err := s.Describe(ctx, want.Digest)
	if err != nil || got.Digest != want.Digest || got.Size != want.Size || got.MediaType != want.MediaType {
		t.Fatalf("Describe = %+v, %v; want %+v", got, err, want)
	}
	s.uses.mu.Lock()
	_, used := s.uses.accessed[want.Digest]
	s.uses.mu.Unlock()
	if !used {
		t.Error("Describe did not count as a use of the blob")
	}

	for _, tc := range []struct {
		name string
		dgst digest.Digest
		is   func(error) bool
	}{
		{"not cached", digest.FromString("absent"), errdefs.IsNotFound},
		{"invalid", "sha256:../../etc/passwd", errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Describe(ctx, tc.dgst); !tc.is(err) {
				t.Errorf("Describe(%s) = %v", tc.dgst, err)
			}
		})
	}

	s.uses.mu.Lock()
	s.uses.evicting[want.Digest] = struct{}{}
	s.uses.mu.Unlock()
	if _, err := s.Describe(ctx, want.Digest); !errdefs.IsNotFound(err) {
		t.Errorf("Describe of a blob being evicted = %v, want not found", err)
	}
	s.uses.mu.Lock()
	delete(s.uses.evicting, want.Digest)
	s.uses.mu.Unlock()
}
