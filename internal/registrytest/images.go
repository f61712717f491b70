package registrytest

import (
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Push writes a random image of two layers of layerSize bytes to repo:tag and returns it.
func (u *Upstream) Push(t testing.TB, repo, tag string, layerSize int64) v1.Image {
	t.Helper()
	img := RandomImage(t, layerSize, 2)
	Write(t, u.URL, repo, tag, img)
	return img
}

// PushIndex writes an index of random images (two layers of 32 KiB), one per platform
// ("linux/arm64"), to repo:tag, and returns it and its images by platform.
func (u *Upstream) PushIndex(t testing.TB, repo, tag string, platforms ...string) (v1.ImageIndex, map[string]v1.Image) {
	t.Helper()
	var idx v1.ImageIndex = empty.Index
	imgs := map[string]v1.Image{}
	for _, p := range platforms {
		img := RandomImage(t, 32<<10, 2)
		pl, err := v1.ParsePlatform(p)
		if err != nil {
			t.Fatal(err)
		}
		imgs[p] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: pl}})
	}
	if err := remote.WriteIndex(reference(t, u.URL, repo, tag), idx); err != nil {
		t.Fatal(err)
	}
	return idx, imgs
}

// RandomImage is an image of layers random layers of layerSize bytes each.
func RandomImage(t testing.TB, layerSize int64, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Write writes img to repo:tag of the registry at url (an httptest server's).
func Write(t testing.TB, url, repo, tag string, img v1.Image) {
	t.Helper()
	if err := remote.Write(reference(t, url, repo, tag), img); err != nil {
		t.Fatal(err)
	}
}

func reference(t testing.TB, url, repo, tag string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(url, "http://")+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Digest is the digest of img's manifest.
func Digest(t testing.TB, img v1.Image) digest.Digest {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.String())
}

// RawManifest is img's manifest as the registry stores it.
func RawManifest(t testing.TB, img v1.Image) []byte {
	t.Helper()
	b, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Layers are the descriptors of img's layers, in order.
func Layers(t testing.TB, img v1.Image) []ocispec.Descriptor {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var out []ocispec.Descriptor
	for _, l := range m.Layers {
		out = append(out, ocispec.Descriptor{MediaType: string(l.MediaType), Digest: digest.Digest(l.Digest.String()), Size: l.Size})
	}
	return out
}

// Blobs are the digests of img's config and layers, in that order: what a pull fetches after
// the manifest.
func Blobs(t testing.TB, img v1.Image) []digest.Digest {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := []digest.Digest{digest.Digest(cfg.String())}
	for _, l := range Layers(t, img) {
		out = append(out, l.Digest)
	}
	return out
}

// Layer is the digest and the bytes (compressed, as the registry sends them) of img's layer i.
func Layer(t testing.TB, img v1.Image, i int) (digest.Digest, []byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[i].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.String()), b
}
