package mirror

import (
	"bytes"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// newResolver is a resolver over a new cache, with endpoint as docker.io's only upstream.
func newResolver(t *testing.T, endpoint string) *resolver.Resolver {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	res, err := resolver.New(store, resolver.Options{
		Endpoints: map[string][]string{"docker.io": {endpoint}},
		NewClient: func(registry, endpoint string) (resolver.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	return res
}

// TestFromResolver serves a real resolver, over a real cache and a real upstream registry, and
// pulls through it with containerd: once with the upstream up, once after it is gone.
func TestFromResolver(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up := httptest.NewServer(registry.New(registry.Logger(stdlog.New(io.Discard, "", 0))))
	t.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)
	ref, err := name.ParseReference(upURL.Host + "/library/busybox:1.36")
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(256<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}

	var log answerLog
	srv := newServer(t, FromResolver(newResolver(t, up.URL)), Options{Observe: log.observe})
	pull := func(t *testing.T) ocispec.Descriptor {
		t.Helper()
		r := docker.NewResolver(docker.ResolverOptions{Hosts: hostsOf(t, srv)})
		name, desc, err := r.Resolve(ctx, "docker.io/library/busybox:1.36")
		if err != nil {
			t.Fatal(err)
		}
		fetcher, err := r.Fetcher(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := local.NewStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := images.Dispatch(ctx, images.Handlers(remotes.FetchHandler(cs, fetcher), images.ChildrenHandler(cs)), nil, desc); err != nil {
			t.Fatal(err)
		}
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
