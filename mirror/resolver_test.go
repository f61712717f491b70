package mirror

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/resolver"
)

// TestFromResolver serves a real resolver, over a real cache and a real upstream registry, and
// pulls through it with containerd: once with the upstream up, once after it is gone.
func TestFromResolver(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up, res := newResolverUpstream(t)
	img := pushImage(t, up, "library/busybox:1.36", 256<<10)

	var log answerLog
	srv := newServer(t, FromResolver(res), Options{Observe: log.observe})
	pull := func(t *testing.T) ocispec.Descriptor {
		t.Helper()
		desc, cs := pullWithContainerd(t, hostsOf(t, srv), "docker.io/library/busybox:1.36")
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			want, _ := l.Compressed()
			wantBytes, _ := io.ReadAll(want)
			got, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: digest.Digest(d.String())})
			if err != nil || !bytes.Equal(got, wantBytes) {
				t.Errorf("layer %s: %v", d, err)
			}
		}
		return desc
	}
	checkAnswers := func(t *testing.T) {
		t.Helper()
		for _, a := range log.answers() {
			if a.Status/100 != 2 {
				continue
			}
			switch a.Cache {
			case resolver.Hit, resolver.Miss, resolver.Stale, resolver.Revalidated:
			default:
				if a.Route == "tag" || a.Route == "manifest" || a.Route == "blob" {
					t.Errorf("%s %s answered %d without X-Lifeboat-Cache", a.Method, a.Route, a.Status)
				}
			}
		}
	}

	first := pull(t)
	checkAnswers(t)
	want, _ := img.Digest()
	if first.Digest.String() != want.String() {
		t.Fatalf("pulled %s, want %s", first.Digest, want)
	}

	up.Close()
	before := len(log.answers())
	if second := pull(t); second.Digest != first.Digest {
		t.Fatalf("pulled %s with the upstream down, want %s", second.Digest, first.Digest)
	}
	checkAnswers(t)
	for _, a := range log.answers()[before:] {
		// The tag could not be revalidated: stale. Everything by digest is a cache hit.
		if want := map[bool]resolver.CacheStatus{true: resolver.Stale, false: resolver.Hit}[a.Method == http.MethodHead]; a.Cache != want {
			t.Errorf("upstream down: %s %s answered %q, want %q", a.Method, a.Route, a.Cache, want)
		}
	}

	// Through the adapter, what was never cached is a 404, so that containerd moves on.
	resp, body := do(t, srv, http.MethodGet, "/v2/library/missing/manifests/1", nil)
	checkError(t, resp, body, http.StatusNotFound, "MANIFEST_UNKNOWN")
}
