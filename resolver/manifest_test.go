package resolver

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// manifestUpstream is go-containerregistry's registry behind a handler that counts manifest
// GETs, can hold them until released, and can answer every manifest and tags list request
// otherwise (answer): with an HTTP status, say, or a Bearer challenge.
type manifestUpstream struct {
	*httptest.Server
	gets   atomic.Int64
	hold   atomic.Pointer[chan struct{}]
	answer atomic.Value // func(http.ResponseWriter, *http.Request) bool: true when it answered
}

func newManifestUpstream(t *testing.T) *manifestUpstream {
	t.Helper()
	u := &manifestUpstream{}
	u.answer.Store(func(http.ResponseWriter, *http.Request) bool { return false })
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") && !strings.Contains(r.URL.Path, "/tags/") {
			reg.ServeHTTP(w, r)
			return
		}
		if u.answer.Load().(func(http.ResponseWriter, *http.Request) bool)(w, r) {
			return
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
			u.gets.Add(1)
			if hold := u.hold.Load(); hold != nil {
				select {
				case <-*hold:
				case <-r.Context().Done():
					return
				}
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

// put stores body in repo "app" under reference (a tag or a digest of any algorithm).
func (u *manifestUpstream) put(t *testing.T, reference, mediaType string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, u.URL+"/v2/app/manifests/"+reference, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s: %s", reference, resp.Status)
	}
}

// testManifest is an image manifest of about size bytes (the layers it names do not exist: no
// test here reads them).
func testManifest(size int) []byte {
	pad := strings.Repeat("x", max(size-200, 0))
	return []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `",` +
		`"config":{"mediaType":"` + ocispec.MediaTypeImageConfig + `","digest":"` + digest.FromString("config").String() + `","size":6},` +
		`"layers":[],"annotations":{"pad":"` + pad + `"}}`)
}

// newManifestResolver is a resolver on a fresh cache with registry.test at url, and set applied
// to its options.
func newManifestResolver(t *testing.T, url string, set func(*Options)) (*Resolver, *cache.Store) {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		UpstreamTimeout: 10 * time.Second, // not what any case here depends on
		Endpoints:       map[string][]string{testRegistry: {url}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	}
	if set != nil {
		set(&opts)
	}
	r, err := New(t.Context(), store, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); store.Close() })
	return r, store
}

// TestConcurrentManifestFetchesAreMerged: clients asking at once for a manifest that is not
// cached cause one upstream GET, by tag and by digest alike.
func TestConcurrentManifestFetchesAreMerged(t *testing.T) {
	t.Parallel()
	body := testManifest(64 << 10)
	dgst := digest.FromBytes(body)
	for _, reference := range []string{"v1", dgst.String()} {
		t.Run(reference[:2], func(t *testing.T) {
			t.Parallel()
			up := newManifestUpstream(t)
			up.put(t, "v1", ocispec.MediaTypeImageManifest, body)
			r, _ := newManifestResolver(t, up.URL, nil)

			const clients = 32
			start := make(chan struct{})
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for range clients {
				wg.Go(func() {
					<-start
					m, err := r.Manifest(t.Context(), testRegistry, "app", reference)
					if err == nil && (m.Descriptor.Digest != dgst || !bytes.Equal(m.Body, body)) {
						err = errors.New("wrong manifest")
					}
					errs <- err
				})
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if n := up.gets.Load(); n != 1 {
				t.Errorf("%d clients at once made %d upstream manifest GETs, want 1", clients, n)
			}
		})
	}
}

// TestManifestFetchOutlivesTheClientThatStartedIt: the client whose request started an upstream
// fetch gives up; the fetch goes on for the client that joined it, and is cached, with one
// upstream GET.
func TestManifestFetchOutlivesTheClientThatStartedIt(t *testing.T) {
	t.Parallel()
	body := testManifest(1 << 10)
	dgst := digest.FromBytes(body)
	up := newManifestUpstream(t)
	up.put(t, "v1", ocispec.MediaTypeImageManifest, body)
	hold := make(chan struct{})
	up.hold.Store(&hold)
	r, store := newManifestResolver(t, up.URL, nil)

	first, cancel := context.WithCancel(t.Context())
	firstErr := make(chan error, 1)
	go func() {
		_, err := r.Manifest(first, testRegistry, "app", dgst.String())
		firstErr <- err
	}()
	registrytest.Wait(t, "the upstream GET", func() bool { return up.gets.Load() == 1 })
	second := make(chan error, 1)
	go func() {
		m, err := r.Manifest(t.Context(), testRegistry, "app", dgst.String())
		if err == nil && !bytes.Equal(m.Body, body) {
			err = errors.New("wrong manifest")
		}
		second <- err
	}()
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client that gave up got %v, want context.Canceled", err)
	}
	close(hold)
	if err := <-second; err != nil {
		t.Fatalf("the other client: %v", err)
	}
	if n := up.gets.Load(); n != 1 {
		t.Errorf("%d upstream manifest GETs, want 1", n)
	}
	if _, err := store.Info(t.Context(), dgst); err != nil {
		t.Errorf("manifest not cached: %v", err)
	}
}

// TestStatManifest: a HEAD's descriptor is the GET's, with the same cache status, and a cached
// manifest is described from the index: its file is not read (here: it is gone, and the answer
// comes all the same, without fetching it again).
func TestStatManifest(t *testing.T) {
	t.Parallel()
	body := testManifest(4 << 10)
	dgst := digest.FromBytes(body)
	up := newManifestUpstream(t)
	up.put(t, "v1", ocispec.MediaTypeImageManifest, body)
	r, store := newManifestResolver(t, up.URL, nil)
	ctx := t.Context()

	desc, status, err := r.StatManifest(ctx, testRegistry, "app", "v1")
	want := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: dgst, Size: int64(len(body))}
	if err != nil || status != Miss || desc.Digest != want.Digest || desc.Size != want.Size || desc.MediaType != want.MediaType {
		t.Fatalf("first HEAD: %+v %s %v, want a miss of %+v", desc, status, err, want)
	}
	m, err := r.Manifest(ctx, testRegistry, "app", "v1")
	if err != nil || m.Status != Revalidated || m.Descriptor.Digest != want.Digest || m.Descriptor.Size != want.Size || m.Descriptor.MediaType != want.MediaType {
		t.Fatalf("GET: %+v %s %v", m.Descriptor, m.Status, err)
	}

	if err := removeBlobFile(store, dgst); err != nil {
		t.Fatal(err)
	}
	gets := up.gets.Load()
	for _, tc := range []struct {
		reference string
		want      CacheStatus
	}{
		{"v1", Revalidated},
		{dgst.String(), Hit},
	} {
		desc, status, err := r.StatManifest(ctx, testRegistry, "app", tc.reference)
		if err != nil || status != tc.want || desc.Digest != want.Digest || desc.Size != want.Size || desc.MediaType != want.MediaType {
			t.Errorf("HEAD %s: %+v %s %v, want %s %+v", tc.reference, desc, status, err, tc.want, want)
		}
	}
	if n := up.gets.Load() - gets; n != 0 {
		t.Errorf("the HEADs of a cached manifest made %d upstream GETs", n)
	}
}

// removeBlobFile deletes a cached blob's file behind the index's back.
func removeBlobFile(store *cache.Store, dgst digest.Digest) error {
	return os.Remove(filepath.Join(store.Root(), "blobs", dgst.Algorithm().String(), dgst.Encoded()))
}

// TestManifestBySHA512: a manifest addressed by a sha512 digest is verified with sha512 and
// cached, whether asked for by that digest or by a tag the registry resolves to it.
func TestManifestBySHA512(t *testing.T) {
	t.Parallel()
	body := testManifest(2 << 10)
	sum := sha512.Sum512(body)
	dgst := digest.NewDigestFromBytes(digest.SHA512, sum[:])
	up := newManifestUpstream(t)
	up.put(t, dgst.String(), ocispec.MediaTypeImageManifest, body)
	// The tag's HEAD names the sha512 digest, as a registry that addresses by sha512 does.
	up.answer.Store(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodHead || !strings.HasSuffix(r.URL.Path, "/manifests/v1") {
			return false
		}
		w.Header().Set("Docker-Content-Digest", dgst.String())
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		return true
	})
	ctx := t.Context()

	t.Run("by digest", func(t *testing.T) {
		t.Parallel()
		r, store := newManifestResolver(t, up.URL, nil)
		m, err := r.Manifest(ctx, testRegistry, "app", dgst.String())
		if err != nil || m.Status != Miss || m.Descriptor.Digest != dgst || !bytes.Equal(m.Body, body) {
			t.Fatalf("first GET: %+v %s %v", m.Descriptor, m.Status, err)
		}
		if _, err := store.Info(ctx, dgst); err != nil {
			t.Fatalf("not cached: %v", err)
		}
		m, err = r.Manifest(ctx, testRegistry, "app", dgst.String())
		if err != nil || m.Status != Hit || !bytes.Equal(m.Body, body) {
			t.Fatalf("second GET: %s %v, want a hit", m.Status, err)
		}
		if desc, status, err := r.StatManifest(ctx, testRegistry, "app", dgst.String()); err != nil || status != Hit || desc.Digest != dgst {
			t.Fatalf("HEAD: %+v %s %v", desc, status, err)
		}
	})
	t.Run("by tag", func(t *testing.T) {
		t.Parallel()
		r, _ := newManifestResolver(t, up.URL, nil)
		m, err := r.Manifest(ctx, testRegistry, "app", "v1")
		if err != nil || m.Status != Miss || m.Descriptor.Digest != dgst || !bytes.Equal(m.Body, body) {
			t.Fatalf("GET by tag: %+v %s %v", m.Descriptor, m.Status, err)
		}
	})
	t.Run("wrong bytes", func(t *testing.T) {
		t.Parallel()
		other := testManifest(3 << 10)
		sum := sha512.Sum512(other)
		claimed := digest.NewDigestFromBytes(digest.SHA512, sum[:])
		liar := newManifestUpstream(t)
		liar.put(t, claimed.String(), ocispec.MediaTypeImageManifest, body) // not other
		r, store := newManifestResolver(t, liar.URL, nil)
		if _, err := r.Manifest(ctx, testRegistry, "app", claimed.String()); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("a manifest that is not its sha512 digest: %v, want failed precondition", err)
		}
		if _, err := store.Info(ctx, claimed); !errdefs.IsNotFound(err) {
			t.Errorf("cached anyway: %v", err)
		}
	})
}

// TestDeniedRevalidation: a cached tag whose revalidation the registry, or its token service,
// answers with "denied" (401 after authenticating, 403) is refused by default, and served stale
// with OnDenied = serve-stale; an upstream or token service that cannot be reached always
// serves it stale. FailedRevalidations says which happened, until a revalidation succeeds.
func TestDeniedRevalidation(t *testing.T) {
	t.Parallel()
	body := testManifest(1 << 10)

	// The token service: issues a token, or fails with a status.
	var tokenStatus atomic.Int64
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := int(tokenStatus.Load()); s != 0 {
			http.Error(w, http.StatusText(s), s)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token":"a-token-the-registry-refuses"}`)
	}))
	t.Cleanup(tokens.Close)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + closed.Addr().String() + "/token"
	closed.Close()

	status := func(code int) func(http.ResponseWriter, *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			if code == http.StatusForbidden {
				io.WriteString(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`)
			}
			return true
		}
	}
	challenge := func(realm string) func(http.ResponseWriter, *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="registry.test",scope="repository:app:pull"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return true
		}
	}
	for _, tc := range []struct {
		name      string
		onDenied  string
		answer    func(http.ResponseWriter, *http.Request) bool
		tokenCode int
		cause     string
		stale     bool
	}{
		{name: "registry 403", answer: status(http.StatusForbidden), cause: CauseDenied},
		{name: "registry 401 after a token", answer: challenge(tokens.URL), cause: CauseDenied},
		{name: "token service 403", answer: challenge(tokens.URL), tokenCode: http.StatusForbidden, cause: CauseDenied},
		{name: "token service 503", answer: challenge(tokens.URL), tokenCode: http.StatusServiceUnavailable, cause: CauseUnreachable, stale: true},
		{name: "token service down", answer: challenge(down), cause: CauseUnreachable, stale: true},
		{name: "registry 503", answer: status(http.StatusServiceUnavailable), cause: CauseUnreachable, stale: true},
		{name: "registry 403 served stale", onDenied: OnDeniedServeStale, answer: status(http.StatusForbidden), cause: CauseDenied, stale: true},
		{name: "registry 401 served stale", onDenied: OnDeniedServeStale, answer: challenge(tokens.URL), cause: CauseDenied, stale: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Not parallel: the token service is shared.
			up := newManifestUpstream(t)
			up.put(t, "v1", ocispec.MediaTypeImageManifest, body)
			r, _ := newManifestResolver(t, up.URL, func(o *Options) { o.OnDenied = tc.onDenied })
			ctx := t.Context()
			if _, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil {
				t.Fatal(err)
			}

			up.answer.Store(tc.answer)
			tokenStatus.Store(int64(tc.tokenCode))
			defer tokenStatus.Store(0)
			m, err := r.Manifest(ctx, testRegistry, "app", "v1")
			switch {
			case tc.stale && (err != nil || m.Status != Stale || !bytes.Equal(m.Body, body)):
				t.Fatalf("%s %v, want the cached tag served stale", m.Status, err)
			case !tc.stale && !errdefs.IsNotFound(err):
				t.Fatalf("%s %v, want the cached tag refused (not found)", m.Status, err)
			}
			if desc, st, err := r.StatManifest(ctx, testRegistry, "app", "v1"); tc.stale != (err == nil) || (tc.stale && st != Stale) {
				t.Errorf("HEAD: %+v %s %v, want the same answer as the GET", desc, st, err)
			}
			if tags, st, err := r.Tags(ctx, testRegistry, "app"); tc.stale != (err == nil) || (tc.stale && st != Stale) {
				t.Errorf("tags list: %v %s %v, want it served stale as the tag is (%v)", tags, st, err, tc.stale)
			}
			got := r.FailedRevalidations()
			if len(got) != 1 || got[0].Ref != testRegistry+"/app:v1" || got[0].Cause != tc.cause || got[0].ServedStale != tc.stale || got[0].Error == "" {
				t.Fatalf("FailedRevalidations = %+v, want one %s, served stale %v", got, tc.cause, tc.stale)
			}
			t.Logf("%+v", got[0])

			up.answer.Store(func(http.ResponseWriter, *http.Request) bool { return false })
			tokenStatus.Store(0)
			r.ProbeNow() // the failures may have opened the circuit breaker
			registrytest.Wait(t, "the endpoint up", func() bool { return r.Endpoints()[0].Up })
			if m, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Revalidated {
				t.Fatalf("with the registry answering again: %s %v", m.Status, err)
			}
			if got := r.FailedRevalidations(); len(got) != 0 {
				t.Errorf("after a revalidation: %+v, want none", got)
			}
		})
	}
}
