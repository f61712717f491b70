package resolver

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// newLimitedResolver is a resolver for registry.test at url over a cache of maxSize bytes in
// root, with opts' limits.
func newLimitedResolver(t *testing.T, url, root string, maxSize int64, opts Options) *Resolver {
	t.Helper()
	store, err := cache.Open(t.Context(), root, cache.Options{MaxSize: maxSize})
	if err != nil {
		t.Fatal(err)
	}
	opts.UpstreamTimeout = 10 * time.Second
	opts.IdleTimeout = 10 * time.Second
	if opts.VerifyBeforeSend == 0 {
		opts.VerifyBeforeSend = -1 // streamed: abandoned fills have readers that got bytes
	}
	opts.Endpoints = map[string][]string{testRegistry: {url}}
	opts.NewClient = func(registry, endpoint string) (endpoints.Client, error) {
		return upstream.New(registry, endpoint, upstream.Options{})
	}
	r, err := New(t.Context(), store, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); store.Close() })
	return r
}

// servingBlob is an upstream that serves body for every blob GET, with a Content-Length or
// without (chunked), and counts the body bytes it managed to send.
func servingBlob(t *testing.T, body []byte, withLength bool) (url string, sent *atomic.Int64) {
	t.Helper()
	sent = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return
		}
		if withLength {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		for rest := body; len(rest) > 0; rest = rest[min(len(rest), 64<<10):] {
			n, err := w.Write(rest[:min(len(rest), 64<<10)])
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, sent
}

func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// ingests is the number of ingests in the cache at root.
func ingests(root string) int {
	ents, _ := os.ReadDir(filepath.Join(root, "ingest"))
	return len(ents)
}

// TestFillsAreBoundedInSize: a blob larger than the cache's budget or the maximum blob size is
// refused, whether the upstream says its size or sends it chunked, and a chunked one is cut off
// as it arrives rather than written in full. Nothing of it is cached or left as an ingest.
func TestFillsAreBoundedInSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		size        int
		chunked     bool
		budget      int64
		maxBlobSize int64
		want        string
	}{
		{name: "chunked body over the cache budget", size: 40 << 20, chunked: true, budget: 8 << 20, want: "larger than the cache budget"},
		{name: "chunked body over the maximum blob size", size: 40 << 20, chunked: true, budget: 1 << 30, maxBlobSize: 4 << 20, want: "more than the maximum blob size of 4194304 bytes"},
		{name: "Content-Length over the maximum blob size", size: 40 << 20, budget: 1 << 30, maxBlobSize: 4 << 20, want: "more than the maximum blob size of 4194304 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := randomBytes(tc.size, byte(tc.size>>20))
			dgst := digest.FromBytes(body)
			url, sent := servingBlob(t, body, !tc.chunked)
			root := t.TempDir()
			r := newLimitedResolver(t, url, root, tc.budget, Options{MaxBlobSize: tc.maxBlobSize})
			_, _, err := readBlob(t.Context(), r, "app", dgst)
			t.Logf("%v", err)
			if err == nil || !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("a %d-byte blob: %v; want resource exhausted saying %q", tc.size, err, tc.want)
			}
			if _, err := r.store.Info(t.Context(), dgst); !errdefs.IsNotFound(err) {
				t.Errorf("the blob was cached: %v", err)
			}
			registrytest.Wait(t, "the ingest to be removed", func() bool { return ingests(root) == 0 })
			// The upstream stops sending when the fill cuts it off: less than half the body (TCP
			// buffers on loopback take a few MiB past the cut, hence bodies of 40 MiB: an 8 MiB
			// one was seen to get exactly its half out).
			registrytest.Wait(t, "the upstream to stop sending", func() bool { return r.Fills().Running == 0 })
			if n := sent.Load(); n >= int64(tc.size)/2 {
				t.Errorf("the upstream sent %d of %d bytes: the body was not cut off", n, tc.size)
			}
		})
	}
}

// heldUpstream serves, for every blob GET, a Content-Length of 8 MiB and 64 KiB of body, then
// holds the answer until end(digest) is called (the body then ends short) or the client goes.
type heldUpstream struct {
	*httptest.Server
	mu    sync.Mutex
	ends  map[string]chan struct{}
	gets  atomic.Int64
	conns atomic.Int64 // answers in progress
}

func newHeldUpstream(t *testing.T) *heldUpstream {
	u := &heldUpstream{ends: map[string]chan struct{}{}}
	chunk := randomBytes(64<<10, 7)
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, d, ok := strings.Cut(r.URL.Path, "/blobs/")
		if !ok {
			return
		}
		u.gets.Add(1)
		u.conns.Add(1)
		defer u.conns.Add(-1)
		w.Header().Set("Content-Length", strconv.Itoa(8<<20))
		w.Write(chunk)
		w.(http.Flusher).Flush()
		select {
		case <-u.end(d):
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *heldUpstream) end(d string) chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	c, ok := u.ends[d]
	if !ok {
		c = make(chan struct{})
		u.ends[d] = c
	}
	return c
}

// blobDigest is the made-up digest of blob i: the held upstream serves any.
func blobDigest(i int) digest.Digest { return digest.FromString(fmt.Sprintf("blob %d", i)) }

// TestFillLimit: past MaxFills running fills, a request for another blob waits for a slot up to
// the queue timeout, and is then refused with fill.ErrTooManyFills (Unavailable, with a Retry-After);
// the refusal is counted. A request for a blob being filled joins its fill, whatever the limit,
// and a waiting request gets the slot a fill frees.
func TestFillLimit(t *testing.T) {
	t.Parallel()
	up := newHeldUpstream(t)
	r := newLimitedResolver(t, up.URL, t.TempDir(), 1<<30, Options{MaxFills: 2, FillQueueTimeout: 2 * time.Second, MaxAbandonedFills: 10})
	ctx := t.Context()
	for i := range 2 {
		b, err := r.Blob(ctx, testRegistry, "app", blobDigest(i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
	}
	start := time.Now()
	_, err := r.Blob(ctx, testRegistry, "app", blobDigest(2))
	waited := time.Since(start)
	var ra interface{ RetryAfter() time.Duration }
	if !errors.Is(err, fill.ErrTooManyFills) || !errdefs.IsUnavailable(err) || !errors.As(err, &ra) {
		t.Fatalf("a third fill past a limit of 2: %v; want fill.ErrTooManyFills, unavailable, with a RetryAfter", err)
	}
	t.Logf("refused after %s: %v", waited.Round(time.Millisecond), err)
	if waited < 2*time.Second {
		t.Errorf("refused after %s, before the queue timeout of 2s", waited)
	}
	if st := r.Fills(); st.Refused != 1 || st.Running != 2 || st.Waiting != 0 {
		t.Errorf("fill stats %+v; want 1 refused, 2 running, none waiting", st)
	}
	// A second client of a running fill joins it.
	b, err := r.Blob(ctx, testRegistry, "app", blobDigest(0))
	if err != nil {
		t.Fatalf("joining a running fill past the limit: %v", err)
	}
	b.Close()
	// A request waits, and gets the slot of a fill that ends.
	got := make(chan error, 1)
	go func() {
		b, err := r.Blob(ctx, testRegistry, "app", blobDigest(3))
		if err == nil {
			b.Close()
		}
		got <- err
	}()
	registrytest.Wait(t, "a request to wait for a slot", func() bool { return r.Fills().Waiting == 1 })
	close(up.end(blobDigest(1).String()))
	if err := <-got; err != nil {
		t.Fatalf("a request that waited for a fill to end: %v", err)
	}
	if n := up.gets.Load(); n != 3 {
		t.Errorf("%d upstream GETs, want 3 (the refused request never reached it)", n)
	}
}

// TestAbandonedFillsAreCancelled: clients that start fills and go away leave at most
// MaxAbandonedFills downloads running; the others are cancelled, their upstream connections
// closed and their ingests removed, so that goroutines and open files come back to what the
// fills at the limit hold. Not parallel: it counts the process's goroutines and files.
func TestAbandonedFillsAreCancelled(t *testing.T) {
	up := newHeldUpstream(t)
	root := t.TempDir()
	const limit = 2
	r := newLimitedResolver(t, up.URL, root, 1<<30, Options{MaxAbandonedFills: limit})
	ctx := t.Context()
	abandon := func(i int) {
		t.Helper()
		b, err := r.Blob(ctx, testRegistry, "app", blobDigest(i))
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := b.Reader(0, b.Descriptor.Size)
		if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		b.Close() // the client goes away
	}
	for i := range limit {
		abandon(i)
	}
	registrytest.Wait(t, "the fills at the limit to settle", func() bool { return r.Fills().Abandoned == limit && up.conns.Load() == limit })
	baseG, baseFD := runtime.NumGoroutine(), openFiles(t)

	const more = 20
	for i := range more {
		abandon(limit + i)
	}
	registrytest.Wait(t, "the excess fills to be cancelled", func() bool {
		st := r.Fills()
		return st.Running == limit && st.Abandoned == limit && st.Cancelled == more
	})
	registrytest.Wait(t, "the upstream answers of cancelled fills to end", func() bool { return up.conns.Load() == limit })
	registrytest.Wait(t, "their ingests to be removed", func() bool { return ingests(root) == limit })
	// Margins: the test's own goroutines and the HTTP client's idle connections may differ by a
	// few.
	const margin = 4
	var g, fd int
	registrytest.Wait(t, "goroutines and open files to come back to the baseline", func() bool {
		g, fd = runtime.NumGoroutine(), openFiles(t)
		return g <= baseG+margin && fd <= baseFD+margin
	})
	t.Logf("with %d fills abandoned: %d goroutines, %d open files; after %d more were abandoned: %d, %d", limit, baseG, baseFD, more, g, fd)
	if n := up.gets.Load(); n != limit+more {
		t.Errorf("%d upstream GETs, want %d", n, limit+more)
	}
	// A request for a cancelled blob starts a new fill.
	b, err := r.Blob(ctx, testRegistry, "app", blobDigest(0))
	if err != nil {
		t.Fatalf("a blob whose abandoned fill was cancelled: %v", err)
	}
	b.Close()
}

// openFiles counts the process's open file descriptors.
func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}
