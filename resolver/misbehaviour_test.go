package resolver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/resolver/upstream"
)

// TestMisbehavingUpstreams serves a blob the ways broken or hostile registries do. Every
// request must end in bounded time with an error, and nothing unverified may be cached.
func TestMisbehavingUpstreams(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{9}).Read(blob)
	sum := sha256.Sum256(blob)
	dgst := digest.Digest("sha256:" + hex.EncodeToString(sum[:]))

	for _, tc := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request)
	}{
		{name: "trickling body (slowloris)", serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			for _, b := range blob {
				if _, err := w.Write([]byte{b}); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}},
		{name: "stream never closed", serve: func(w http.ResponseWriter, r *http.Request) {
			w.Write(blob) // chunked: no Content-Length, and no end
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}},
		{name: "Content-Length larger than the body", serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)+1000))
			w.Write(blob)
		}},
		{name: "Content-Length smaller than the body", serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)-1000))
			w.Write(blob[:len(blob)-1000])
		}},
		{name: "redirect loop", serve: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.Path+"?again="+strconv.Itoa(rand.IntN(1e9)), http.StatusFound)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				tc.serve(w, r)
			}))
			t.Cleanup(srv.Close)
			r, store := newBareResolver(t, srv.URL)

			done := make(chan error, 1)
			go func() {
				_, _, err := readBlob(context.Background(), r, "app", dgst)
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("a client read the blob to a clean end")
				}
				t.Logf("the client got: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("the request did not end within 30s")
			}
			waitFor(t, "the fill to end", func() bool {
				r.fillMu.Lock()
				defer r.fillMu.Unlock()
				return len(r.fills) == 0
			})
			if _, err := store.Info(t.Context(), dgst); !errdefs.IsNotFound(err) {
				t.Fatalf("unverified bytes were cached: %v", err)
			}
			if sts, _ := store.ListStatuses(t.Context()); len(sts) != 0 {
				t.Errorf("the failed fill left %d ingests", len(sts))
			}
		})
	}
}

// TestMisbehavingManifests serves manifest graphs that never end: an index whose child, when
// asked for, is the index itself again (a manifest that references itself), and indexes
// nested deeper than any real image. Planning a pull of either must end at once with an
// error that says why, and nothing that did not verify may be cached.
func TestMisbehavingManifests(t *testing.T) {
	t.Parallel()
	index := func(child ocispec.Descriptor) []byte {
		b, err := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{child}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	manifests := map[string][]byte{} // by tag or digest, as the upstream answers them

	// "self": the index names a child that the upstream answers with the index's own bytes.
	claimed := digest.FromString("the child the index names")
	self := index(ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: claimed, Size: 1 << 10})
	manifests["self"] = self
	manifests[digest.FromBytes(self).String()] = self
	manifests[claimed.String()] = self

	// "deep": indexes nested twice as deep as lifeboat follows, each by its true digest.
	child := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("a manifest never reached"), Size: 2}
	for range 2 * maxIndexDepth {
		b := index(child)
		child = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(b), Size: int64(len(b))}
		manifests[child.Digest.String()] = b
	}
	manifests["deep"] = manifests[child.Digest.String()]

	requests := 0
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
		ref, ok := strings.CutPrefix(r.URL.Path, "/v2/app/manifests/")
		body, found := manifests[ref]
		if !ok || !found {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if strings.HasPrefix(ref, "sha256:") {
			w.Header().Set("Docker-Content-Digest", ref) // what a lying registry claims
		} else {
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
		}
		if r.Method == http.MethodGet {
			w.Write(body)
		}
	}))
	t.Cleanup(srv.Close)
	r, store := newBareResolver(t, srv.URL)

	for _, tc := range []struct{ tag, want string }{
		{"self", "body has digest " + digest.FromBytes(self).String()},
		{"deep", fmt.Sprintf("nested more than %d deep", maxIndexDepth)},
	} {
		for _, all := range []bool{false, true} {
			mu.Lock()
			requests = 0
			mu.Unlock()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			_, err := r.PlanPull(ctx, testRegistry+"/app:"+tc.tag, platforms.All, all)
			cancel()
			mu.Lock()
			n := requests
			mu.Unlock()
			t.Logf("pull plan of %s (all platforms: %v) after %d upstream requests: %v", tc.tag, all, n, err)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("pull plan of %s: %v, want an error naming %q", tc.tag, err, tc.want)
			}
			if n > 4*maxIndexDepth {
				t.Errorf("pull plan of %s sent %d upstream requests: the walk is not bounded", tc.tag, n)
			}
		}
	}
	if _, err := store.Info(t.Context(), claimed); !errdefs.IsNotFound(err) {
		t.Errorf("the index served for its child was cached as the child: %v", err)
	}
}

// newBareResolver is a resolver on a fresh cache with one endpoint, url, and timeouts short
// enough for misbehaving upstreams to fail within seconds.
func newBareResolver(t *testing.T, url string) (*Resolver, *cache.Store) {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(store, Options{
		UpstreamTimeout: 3 * time.Second,
		IdleTimeout:     time.Second,
		FillTimeout:     3 * time.Second,
		Endpoints:       map[string][]string{testRegistry: {url}},
		NewClient: func(registry, endpoint string) (Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); store.Close() })
	return r, store
}
