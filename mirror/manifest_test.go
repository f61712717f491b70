package mirror

import (
	"bytes"
	"crypto/sha512"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// newResolverUpstream returns a go-containerregistry registry behind httptest, and a resolver
// that mirrors docker.io from it.
func newResolverUpstream(t *testing.T) (*registrytest.Upstream, *resolver.Resolver) {
	t.Helper()
	up := registrytest.NewUpstream(t)
	return up, newResolver(t, up.URL)
}

// newResolver is a resolver over a new cache, with endpoint as docker.io's only upstream.
func newResolver(t *testing.T, endpoint string) *resolver.Resolver {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	res, err := resolver.New(t.Context(), store, resolver.Options{
		// Generous: megabytes of manifests under the race detector, with parallel packages.
		UpstreamTimeout: 10 * time.Second,
		Endpoints:       map[string][]string{"docker.io": {endpoint}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	return res
}

// pullWithContainerd resolves ref with containerd's own resolver through hosts, and fetches the
// image it names (its manifests, config and layers) into a new containerd content store.
func pullWithContainerd(t *testing.T, hosts docker.RegistryHosts, ref string) (ocispec.Descriptor, content.Store) {
	t.Helper()
	ctx := t.Context()
	r := docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
	name, desc, err := r.Resolve(ctx, ref)
	if err != nil {
		t.Fatalf("resolve %s: %v", ref, err)
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
		t.Fatalf("pull %s: %v", ref, err)
	}
	return desc, cs
}

// putManifest stores body in the upstream's repo under reference, a tag or a digest of any
// algorithm.
func putManifest(t *testing.T, up *registrytest.Upstream, repo, reference, mediaType string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, up.URL+"/v2/"+repo+"/manifests/"+reference, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := up.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s: %s", reference, resp.Status)
	}
}

// TestManifestHeadDoesNotReadTheManifest: many clients at once asking for the HEAD of a large
// cached manifest, by digest and by tag, get the GET's headers without the manifest being read:
// the bytes allocated stay far below one copy of it per request.
func TestManifestHeadDoesNotReadTheManifest(t *testing.T) {
	// Not parallel: it measures the bytes the process allocates.
	up, res := newResolverUpstream(t)
	size := oci.MaxManifestSize - 64<<10
	body := []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `",` +
		`"config":{"mediaType":"` + ocispec.MediaTypeImageConfig + `","digest":"` + digest.FromString("config").String() + `","size":6},` +
		`"layers":[],"annotations":{"pad":"`)
	body = append(body, strings.Repeat("x", size-len(body)-4)...)
	body = append(body, `"}}`...)
	dgst := digest.FromBytes(body)
	putManifest(t, up, "library/app", "big", ocispec.MediaTypeImageManifest, body)
	h := newHandler(t, res, Options{})

	serve := func(method, reference string) *httptest.ResponseRecorder {
		req := httptest.NewRequestWithContext(t.Context(), method, "/v2/library/app/manifests/"+reference, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	get := serve(http.MethodGet, "big")
	if get.Code != http.StatusOK || !bytes.Equal(get.Body.Bytes(), body) {
		t.Fatalf("GET: %d, %d bytes", get.Code, get.Body.Len())
	}

	const clients = 64
	for _, reference := range []string{dgst.String(), "big"} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var wg sync.WaitGroup
		answers := make([]*httptest.ResponseRecorder, clients)
		for i := range answers {
			wg.Go(func() { answers[i] = serve(http.MethodHead, reference) })
		}
		wg.Wait()
		runtime.ReadMemStats(&after)
		allocated := after.TotalAlloc - before.TotalAlloc
		t.Logf("%d HEADs of %s allocated %d bytes (the manifest is %d)", clients, reference, allocated, len(body))
		if allocated > clients*uint64(len(body))/8 {
			t.Errorf("%d HEADs of %s allocated %d bytes: the %d-byte manifest was read for them", clients, reference, allocated, len(body))
		}
		for _, a := range answers {
			for _, k := range []string{"Content-Type", "Content-Length", "Docker-Content-Digest", "ETag"} {
				if a.Header().Get(k) != get.Header().Get(k) {
					t.Errorf("HEAD %s: %s %q, the GET's is %q", reference, k, a.Header().Get(k), get.Header().Get(k))
				}
			}
			if a.Code != http.StatusOK || a.Body.Len() != 0 || a.Header().Get("Content-Length") != strconv.Itoa(len(body)) {
				t.Fatalf("HEAD %s: %d, Content-Length %s, %d body bytes", reference, a.Code, a.Header().Get("Content-Length"), a.Body.Len())
			}
		}
	}
}

// TestPullBySHA512Digest: containerd's own resolver and fetcher pull, through the mirror, an
// image whose manifest is addressed by its sha512 digest.
func TestPullBySHA512Digest(t *testing.T) {
	t.Parallel()
	up, res := newResolverUpstream(t)
	img := up.Push(t, "library/app", "v1", 64<<10)
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha512.Sum512(raw)
	dgst := digest.NewDigestFromBytes(digest.SHA512, sum[:])
	putManifest(t, up, "library/app", dgst.String(), string(mt), raw)

	srv := newServer(t, res, Options{})
	for _, pass := range []string{"from the upstream", "from the cache"} {
		desc, cs := pullWithContainerd(t, hostsOf(t, srv), "docker.io/library/app@"+dgst.String())
		if desc.Digest != dgst || desc.Size != int64(len(raw)) {
			t.Fatalf("%s: resolved %+v, want %s", pass, desc, dgst)
		}
		got, err := content.ReadBlob(t.Context(), cs, desc)
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("%s: the manifest in containerd's store: %v", pass, err)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			if _, err := cs.Info(t.Context(), digest.Digest(d.String())); err != nil {
				t.Errorf("%s: layer %s: %v", pass, d, err)
			}
		}
	}
}
