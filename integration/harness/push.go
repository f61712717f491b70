package harness

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// MultiPlatformImage is an image index pushed by PushMultiPlatform.
type MultiPlatformImage struct {
	// Index is the pushed index; Ref its reference.
	Index v1.ImageIndex
	Ref   string
	// Digest is the index digest, "sha256:...".
	Digest string
	// Images maps a platform ("linux/amd64") to its image in the index.
	Images map[string]v1.Image
	// Manifests maps a platform to its image's manifest digest.
	Manifests map[string]string
}

// PushImage pushes img as REGISTRY/repo:tag and returns its manifest digest. tag may be a
// digest ("sha256:..."), which pushes the manifest untagged.
func (r *Registry) PushImage(t testing.TB, repo, tag string, img v1.Image) string {
	t.Helper()
	ref := r.parseRef(t, repo, tag)
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("harness: pushing %s: %v", ref, err)
	}
	return Digest(t, img)
}

// PushIndex pushes idx and its images as REGISTRY/repo:tag and returns the index digest.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, idx v1.ImageIndex) string {
	t.Helper()
	ref := r.parseRef(t, repo, tag)
	if err := remote.WriteIndex(ref, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("harness: pushing %s: %v", ref, err)
	}
	return Digest(t, idx)
}

// PushRandom pushes a RandomImage for HostPlatform as REGISTRY/repo:tag and returns it; its
// manifest digest is Digest(t, img).
func (r *Registry) PushRandom(t testing.TB, repo, tag string, layers int, layerSize int64) v1.Image {
	t.Helper()
	img := RandomImage(t, HostPlatform(), layers, layerSize)
	r.PushImage(t, repo, tag, img)
	return img
}

// PushBusybox pushes BusyboxImage as REGISTRY/repo:tag and returns it.
func (r *Registry) PushBusybox(t testing.TB, repo, tag string) v1.Image {
	t.Helper()
	img := BusyboxImage(t)
	r.PushImage(t, repo, tag, img)
	return img
}

// PushMultiPlatform pushes an index of random images, one per platform ("linux/amd64" and
// "linux/arm64" if none are given), each with the given layers, as REGISTRY/repo:tag.
func (r *Registry) PushMultiPlatform(t testing.TB, repo, tag string, layers int, layerSize int64, platforms ...string) *MultiPlatformImage {
	t.Helper()
	if len(platforms) == 0 {
		platforms = []string{"linux/amd64", "linux/arm64"}
	}
	m := &MultiPlatformImage{
		Ref:       r.Ref(repo, tag),
		Images:    make(map[string]v1.Image, len(platforms)),
		Manifests: make(map[string]string, len(platforms)),
	}
	images := make([]v1.Image, 0, len(platforms))
	for _, p := range platforms {
		img := RandomImage(t, ParsePlatform(t, p), layers, layerSize)
		images = append(images, img)
		m.Images[p] = img
		m.Manifests[p] = Digest(t, img)
	}
	m.Index = NewIndex(t, images...)
	m.Digest = r.PushIndex(t, repo, tag, m.Index)
	return m
}

func (r *Registry) parseRef(t testing.TB, repo, tag string) name.Reference {
	t.Helper()
	s := r.Ref(repo, tag)
	if strings.HasPrefix(tag, "sha256:") {
		s = r.host + "/" + repo + "@" + tag
	}
	ref, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatalf("harness: reference %q: %v", s, err)
	}
	return ref
}
