package cache

import (
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzEvictWalk stores arbitrary bytes as a manifest of an image and runs eviction over it:
// whatever a registry served, walking it must not panic or loop, and eviction must keep the
// index consistent. Run it longer with `make fuzz`.
func FuzzEvictWalk(f *testing.F) {
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: 1}}}
	b, _ := json.Marshal(idx)
	f.Add(b, ocispec.MediaTypeImageIndex)
	m := ocispec.Manifest{Config: ocispec.Descriptor{Digest: digest.FromString("c")}, Layers: []ocispec.Descriptor{{Digest: digest.FromString("l")}}}
	b, _ = json.Marshal(m)
	f.Add(b, ocispec.MediaTypeImageManifest)
	f.Add([]byte(`{"manifests":[{"digest":"sha256:../../etc"}],"layers":null}`), "")
	f.Add([]byte("not json"), "application/json")
	f.Fuzz(func(t *testing.T, body []byte, mediaType string) {
		if len(body) > 1<<16 {
			return
		}
		s := newStore(t, Options{MaxSize: 1 << 30})
		desc := writeBlob(t, s, mediaType, body)
		if err := s.SetRef(t.Context(), "registry.test/fuzz:1", desc, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Evict(t.Context(), 0, false); err != nil {
			t.Fatal(err)
		}
		if used, _ := s.Usage(); used != 0 {
			t.Fatalf("%d bytes left after evicting everything", used)
		}
	})
}

func FuzzParseChildren(f *testing.F) {
	f.Add([]byte(`{"config":{"digest":"sha256:00"},"layers":[{"size":-1}],"manifests":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		children, err := parseChildren(b)
		if err != nil && children != nil {
			t.Fatal("children returned with an error")
		}
	})
}
