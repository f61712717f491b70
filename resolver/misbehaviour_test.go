package resolver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/rawhttp"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// TestMisbehavingUpstreams serves a blob the ways broken or hostile registries do. Every
// request must end in bounded time with an error that says what went wrong, and nothing
// unverified may be cached. The resolver runs the daemon's rules with only the idle timeout
// scaled down (see newBareResolver): the fill timeout of an hour cannot be what ends any case.
func TestMisbehavingUpstreams(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{9}).Read(blob)
	sum := sha256.Sum256(blob)
	dgst := digest.Digest("sha256:" + hex.EncodeToString(sum[:]))
	short := len(blob) - 1000

	for _, tc := range []struct {
		name  string
		serve http.HandlerFunc      // an httptest upstream, or
		raw   func(w *bufio.Writer) // a raw HTTP/1.1 answer to the blob GET
		hangs bool                  // the upstream never ends its answer: the fill must close it
		want  string                // in the error
		class func(error) bool
	}{
		{name: "trickling body (slowloris)", hangs: true, serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			rawhttp.Trickle(w, r, blob)
		}, want: "less than the minimum of 65536 bytes in every 1s (65536 bytes/s)", class: errdefs.IsNotFound},
		{name: "stream never closed", hangs: true, serve: func(w http.ResponseWriter, r *http.Request) {
			w.Write(blob) // chunked: no Content-Length, and no end
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}, want: "upstream stalled: it sent 0 bytes", class: errdefs.IsNotFound},
		{name: "Content-Length larger than the body", serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)+1000))
			w.Write(blob)
		}, want: "reading body: unavailable: unexpected EOF", class: errdefs.IsNotFound},
		{name: "truncated body with a matching Content-Length", serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(short))
			w.Write(blob[:short])
		}, want: fmt.Sprintf("sent %d bytes with digest sha256:", short), class: errdefs.IsFailedPrecondition},
		{
			// net/http reads exactly Content-Length bytes and never sees the rest: what
			// arrives is a truncated blob, which fails verification.
			name: "Content-Length smaller than the body", raw: func(w *bufio.Writer) {
				fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", short)
				w.Write(blob)
			}, want: fmt.Sprintf("sent %d bytes with digest sha256:", short), class: errdefs.IsFailedPrecondition,
		},
		{name: "redirect loop", serve: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.Path+"?again="+strconv.Itoa(rand.IntN(1e9)), http.StatusFound)
		}, want: "stopped after 10 redirects", class: errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ended := make(chan struct{}) // the upstream's answer ended
			var url string
			if tc.raw != nil {
				url = rawhttp.Upstream(t, func(w *bufio.Writer) { tc.raw(w); close(ended) })
			} else {
				var once sync.Once
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/v2/" {
						return
					}
					defer once.Do(func() { close(ended) })
					tc.serve(w, r)
				}))
				t.Cleanup(srv.Close)
				url = srv.URL
			}
			r, store := newBareResolver(t, url)

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
				if !strings.Contains(err.Error(), tc.want) || !tc.class(err) {
					t.Errorf("the client got %v, want an error of its class naming %q", err, tc.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the request did not end within 30s")
			}
			if tc.hangs {
				select {
				case <-ended:
				case <-time.After(10 * time.Second):
					t.Fatal("the fill did not close the upstream connection")
				}
			}
			registrytest.Wait(t, "the fill to end", func() bool { return r.Fills().Running == 0 })
			if _, err := store.Info(t.Context(), dgst); !errdefs.IsNotFound(err) {
				t.Fatalf("unverified bytes were cached: %v", err)
			}
			if sts, _ := store.ListStatuses(t.Context()); len(sts) != 0 {
				t.Errorf("the failed fill left %d ingests", len(sts))
			}
		})
	}
}

// TestProgressFloor checks the progress rule's floor at the daemon's own timeouts (serve sets
// none) against the upstreams it must tell apart: it must cut off a 20 B/s slowloris within one
// idle timeout, long before the fill timeout, and leave alone (with a margin of 4) a 1 MiB/s
// link shared by a hundred fills. TestMisbehavingUpstreams runs the same rule with the idle
// timeout scaled down.
func TestProgressFloor(t *testing.T) {
	t.Parallel()
	var opts Options
	opts.setDefaults()
	floor := float64(fill.MinProgress) / opts.IdleTimeout.Seconds() // bytes/s
	if slowloris := 20.0; floor < 10*slowloris {
		t.Errorf("the floor, %.0f B/s, is too close to a %.0f B/s slowloris", floor, slowloris)
	}
	if share := float64(1<<20) / 100; floor > share/4 {
		t.Errorf("the floor, %.0f B/s, is too close to a hundredth of a 1 MiB/s link", floor)
	}
	if opts.IdleTimeout >= opts.FillTimeout/10 {
		t.Errorf("idle timeout %s: a stall is not cut off long before the fill timeout %s", opts.IdleTimeout, opts.FillTimeout)
	}
	err := &fill.StallError{Got: 600, Need: fill.MinProgress, Window: opts.IdleTimeout}
	if want := "upstream stalled: it sent 600 bytes in 30s, less than the minimum of 65536 bytes in every 30s (2185 bytes/s)"; err.Error() != want {
		t.Errorf("the daemon's stall error: %q, want %q", err, want)
	}
	if !errdefs.IsUnavailable(err) {
		t.Error("a stall is not an upstream failure")
	}
}

// TestSlowSteadyUpstreamPasses: an upstream well below any real link, but above the progress
// rule's floor, fills: 512 KiB at 256 KiB/s, four times the floor at a 1 s idle timeout (the
// same margin as a 9 KB/s upstream at the daemon's 30 s).
func TestSlowSteadyUpstreamPasses(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 512<<10)
	rand.NewChaCha8([32]byte{8}).Read(blob)
	dgst := digest.FromBytes(blob)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		tick := time.NewTicker(125 * time.Millisecond)
		defer tick.Stop()
		for rest := blob; len(rest) > 0; rest = rest[min(len(rest), 32<<10):] {
			if _, err := w.Write(rest[:min(len(rest), 32<<10)]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	}))
	t.Cleanup(srv.Close)
	r, store := newBareResolver(t, srv.URL)
	got, _, err := readBlob(t.Context(), r, "app", dgst)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("a slow, steady upstream: %v (%d of %d bytes)", err, len(got), len(blob))
	}
	registrytest.Wait(t, "the blob to be cached", func() bool { _, err := store.Info(t.Context(), dgst); return err == nil })
}

// TestExtraBytesAfterTheBody: bytes an upstream sends past a correct Content-Length are not
// part of the answer (HTTP/1.1 framing): the blob is served and cached as it should be.
func TestExtraBytesAfterTheBody(t *testing.T) {
	t.Parallel()
	blob := []byte("a blob, and then garbage on the connection")
	dgst := digest.FromBytes(blob)
	url := rawhttp.Upstream(t, func(w *bufio.Writer) {
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(blob), blob)
		w.WriteString("HTTP/1.1 200 OK\r\n\r\nnot a blob")
	})
	r, store := newBareResolver(t, url)
	got, _, err := readBlob(t.Context(), r, "app", dgst)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read %q, %v; want %q", got, err, blob)
	}
	info, err := store.Info(t.Context(), dgst)
	if err != nil || info.Size != int64(len(blob)) {
		t.Fatalf("cached %+v, %v", info, err)
	}
}

// TestClientSizeGuard: a endpoints.Client whose bodies run past the size it reported (net/http never
// does; another endpoints.Client might) fails the fill instead of caching the longer body.
func TestClientSizeGuard(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 4<<10)
	rand.NewChaCha8([32]byte{3}).Read(blob)
	dgst := digest.FromBytes(blob)
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(t.Context(), store, Options{
		IdleTimeout: time.Second,
		Endpoints:   map[string][]string{testRegistry: {"https://short.test"}},
		NewClient:   func(string, string) (endpoints.Client, error) { return shortSizeClient{blob: blob}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); store.Close() })
	_, _, err = readBlob(t.Context(), r, "app", dgst)
	if want := "sent more than its Content-Length of 3096"; err == nil || !strings.Contains(err.Error(), want) || !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("got %v, want a failed precondition naming %q", err, want)
	}
	if _, err := store.Info(t.Context(), dgst); !errdefs.IsNotFound(err) {
		t.Fatalf("a longer body than reported was cached: %v", err)
	}
}

// shortSizeClient serves blob, and reports it 1000 bytes shorter than it is.
type shortSizeClient struct {
	endpoints.Client // nil: only GetBlob is called
	blob             []byte
}

func (c shortSizeClient) Endpoint() string { return "https://short.test" }

func (c shortSizeClient) GetBlob(context.Context, string, digest.Digest) (io.ReadCloser, int64, error) {
	return io.NopCloser(bytes.NewReader(c.blob)), int64(len(c.blob) - 1000), nil
}

// newBareResolver is a resolver on a fresh cache with one endpoint, url, and the daemon's
// timeouts but two: the idle timeout is 1 s instead of 30 s, so that misbehaving upstreams fail
// within seconds; the upstream timeout is 10 s instead of 1 s, so that an in-process upstream
// slowed by a loaded machine (the race detector, parallel packages) is not taken for one that
// does not answer: no case here depends on it. The fill timeout stays an hour: no test may
// pass because of it.
func newBareResolver(t *testing.T, url string) (*Resolver, *cache.Store) {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(t.Context(), store, Options{
		UpstreamTimeout: 10 * time.Second,
		IdleTimeout:     time.Second,
		Endpoints:       map[string][]string{testRegistry: {url}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); store.Close() })
	return r, store
}
