package resolver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

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
			store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			r, err := New(store, Options{
				UpstreamTimeout: 3 * time.Second,
				IdleTimeout:     time.Second,
				FillTimeout:     3 * time.Second,
				Endpoints:       map[string][]string{testRegistry: {srv.URL}},
				NewClient: func(registry, endpoint string) (Client, error) {
					return upstream.New(registry, endpoint, upstream.Options{})
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close(); store.Close() })

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
