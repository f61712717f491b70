package mirror

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// TestUnverifiedBlobNeverCompletes has an upstream (a real registry behind a handler) serve an
// 8 MiB layer once with one byte flipped, the length right, and the body held half way until
// every client has joined the download. No client of the mirror gets a complete body: not
// the whole blob, not a resume to its end, not a range that ends before the flipped byte. Each
// sees a broken transfer. Nothing is cached, and once the upstream is honest the next request
// gets the blob. A blob held whole until it verified (the default for its size) sends the
// clients no byte of it at all; a streamed one sends all but its last.
func TestUnverifiedBlobNeverCompletes(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct {
		name string
		// verifyBeforeSend is the resolver's VerifyBeforeSend: the 8 MiB layer is held whole
		// until it verified, or streams with its last byte held back.
		verifyBeforeSend int64
	}{
		{"held whole until verified", 0},
		{"streamed", -1},
	} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			testUnverifiedBlob(t, mode.verifyBeforeSend)
		})
	}
}

// testUnverifiedBlob is TestUnverifiedBlobNeverCompletes with the resolver's VerifyBeforeSend.
func testUnverifiedBlob(t *testing.T, verifyBeforeSend int64) {
	held := verifyBeforeSend >= 0
	reg := registry.New(registry.Logger(stdlog.New(io.Discard, "", 0)))
	var corruptNext atomic.Bool // the next blob GET is damaged
	gate := make(chan struct{}) // the damaged body waits half way until it is closed
	var blobGets atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			reg.ServeHTTP(w, r)
			return
		}
		blobGets.Add(1)
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		if !corruptNext.CompareAndSwap(true, false) {
			w.Write(body)
			return
		}
		body = bytes.Clone(body)
		body[len(body)/2] ^= 0xff
		w.Write(body[:len(body)/4])
		w.(http.Flusher).Flush()
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		w.Write(body[len(body)/4:])
	}))
	t.Cleanup(up.Close)

	img := registrytest.RandomImage(t, 8<<20, 1)
	registrytest.Write(t, up.URL, "app", "1", img)
	dgst, want := registrytest.Layer(t, img, 0)
	size := int64(len(want))

	root := t.TempDir()
	store, err := cache.Open(t.Context(), root, cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	res, err := resolver.New(t.Context(), store, resolver.Options{
		UpstreamTimeout:  10 * time.Second, // generous: tests run in parallel under -race
		VerifyBeforeSend: verifyBeforeSend,
		Endpoints:        map[string][]string{"registry.test": {up.URL}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close(); store.Close() })
	// A short header delay: a held blob's answer starts without its first byte at once.
	srv := newServer(t, res, Options{HeaderDelay: 20 * time.Millisecond})
	target := srv.URL + "/v2/app/blobs/" + dgst.String() + "?ns=registry.test"

	corruptNext.Store(true)
	cases := []struct {
		name, rng string
	}{
		{"whole blob", ""},
		{"resume to the end", fmt.Sprintf("bytes=%d-", size/8)},
		{"range before the flipped byte", fmt.Sprintf("bytes=0-%d", size/8)},
	}
	type outcome struct {
		status int
		got    int
		err    error
	}
	outcomes := make([]outcome, len(cases))
	var started, finished sync.WaitGroup
	for i, tc := range cases {
		started.Add(1)
		finished.Add(1)
		go func() {
			defer finished.Done()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, target, nil)
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := srv.Client().Do(req)
			started.Done()
			if err != nil {
				outcomes[i] = outcome{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			outcomes[i] = outcome{status: resp.StatusCode, got: len(b), err: err}
		}()
	}
	started.Wait() // every client has its answer's status: all read the one damaged download
	close(gate)
	finished.Wait()
	for i, tc := range cases {
		o := outcomes[i]
		t.Logf("%s: status %d, %d bytes, %v", tc.name, o.status, o.got, o.err)
		if o.err == nil {
			t.Errorf("%s: a complete %d answer of %d bytes from a download that failed verification", tc.name, o.status, o.got)
		} else if o.status != 0 && !errors.Is(o.err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: the body ended with %v, want a broken transfer (unexpected EOF)", tc.name, o.err)
		}
		if held && o.got != 0 {
			t.Errorf("%s: %d bytes of a blob held whole until it verified reached the client", tc.name, o.got)
		}
	}
	if n := res.DigestMismatches(); n != 1 {
		t.Errorf("digest mismatches: %d, want 1", n)
	}
	if _, err := store.Info(t.Context(), dgst); !errdefs.IsNotFound(err) {
		t.Errorf("the damaged blob is cached: %v", err)
	}
	registrytest.Wait(t, "the failed download's ingest to be removed", func() bool {
		ents, _ := os.ReadDir(filepath.Join(root, "ingest"))
		return len(ents) == 0
	})

	// The upstream is honest now: the next request gets the blob, whole and right.
	resp, body := do(t, srv, http.MethodGet, strings.TrimPrefix(target, srv.URL), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("after the upstream was fixed: %d, %d bytes (want %d, equal=%v)", resp.StatusCode, len(body), size, bytes.Equal(body, want))
	}
	if n := blobGets.Load(); n != 2 {
		t.Errorf("%d upstream blob GETs, want 2 (the damaged one, then the good one)", n)
	}
}
