package upstream

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/endpoints"
)

// storage is an object store a registry redirects blob GETs to. It serves blobs from the
// fixture's registry and records the Authorization headers it was sent.
type storage struct {
	mu    sync.Mutex
	auths []string
	gets  int
}

const signature = "X-Amz-Signature=5ec7e7-signed"

func (s *storage) handler(f *fixture, status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.auths = append(s.auths, r.Header.Get("Authorization"))
		s.gets++
		s.mu.Unlock()
		if status != http.StatusOK {
			w.WriteHeader(status)
			return
		}
		if !strings.Contains(r.URL.RawQuery, signature) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/storage")
		r2.URL.RawQuery = ""
		r2.Header.Del("Authorization")
		f.reg.ServeHTTP(w, r2)
	})
}

// redirectBlobs sends blob GETs to the storage server, with a signed query.
func redirectBlobs(storageURL string) func(http.Handler) http.Handler {
	return only(http.MethodGet, "blobs", func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, storageURL+"/storage"+r.URL.Path+"?"+signature, http.StatusTemporaryRedirect)
		})
	})
}

func TestGetBlobRedirect(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name    string
		status  int // the storage's answer
		auth    func(*tokenServer) func(http.Handler) http.Handler
		want    error
		failure bool
	}{
		{name: "basic auth registry", status: http.StatusOK, auth: func(*tokenServer) func(http.Handler) http.Handler { return basicAuth(testUser, testPassword) }},
		{name: "bearer auth registry", status: http.StatusOK, auth: func(ts *tokenServer) func(http.Handler) http.Handler { return bearerAuth(ts, ts.srv.URL+"/token") }},
		{name: "storage 500", status: http.StatusInternalServerError, auth: func(*tokenServer) func(http.Handler) http.Handler { return basicAuth(testUser, testPassword) }, want: errdefs.ErrUnavailable, failure: true},
		{name: "storage 403 (expired signature)", status: http.StatusForbidden, auth: func(*tokenServer) func(http.Handler) http.Handler { return basicAuth(testUser, testPassword) }, want: errdefs.ErrPermissionDenied},
		{name: "storage 401 is not answered with the registry's credentials", status: http.StatusUnauthorized, auth: func(*tokenServer) func(http.Handler) http.Handler { return basicAuth(testUser, testPassword) }, want: errdefs.ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var st storage
			// The storage server shares the registry's host name (127.0.0.1) on another port:
			// net/http alone would forward the Authorization header there.
			stSrv := serve(t, st.handler(f, tt.status))
			ts := newTokenServer(t, testUser, testPassword)
			srv := f.serve(t, tt.auth(ts), redirectBlobs(stSrv.URL))
			c := newClient(t, srv.URL, Options{Username: testUser, Password: testPassword})

			// Twice: the second request starts with the cached Authorization.
			for range 2 {
				rc, size, err := c.GetBlob(t.Context(), f.repo, f.layer)
				checkErr(t, err, tt.want, tt.failure)
				if err != nil {
					if strings.Contains(err.Error(), "5ec7e7") {
						t.Errorf("err = %v names the signed redirect URL", err)
					}
					continue
				}
				got, err := io.ReadAll(rc)
				must(t, err)
				must(t, rc.Close())
				if !bytes.Equal(got, f.layerRaw) || size != f.layerLen {
					t.Errorf("blob: %d bytes, size %d; want %d", len(got), size, f.layerLen)
				}
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			if st.gets < 2 {
				t.Fatalf("storage saw %d GETs, want at least 2", st.gets)
			}
			for _, a := range st.auths {
				if a != "" {
					t.Errorf("storage was sent an Authorization header (%d bytes)", len(a))
				}
			}
		})
	}
}

func TestGetBlobBody(t *testing.T) {
	t.Parallel()
	f := newFixture(t)

	t.Run("size unknown", func(t *testing.T) {
		t.Parallel()
		srv := f.serve(t, only(http.MethodGet, "blobs", func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush() // headers out before the body: chunked, no length
				_, _ = w.Write(f.layerRaw)
			})
		}))
		c := newClient(t, srv.URL, Options{})
		rc, size, err := c.GetBlob(t.Context(), f.repo, f.layer)
		must(t, err)
		defer rc.Close()
		if size != -1 {
			t.Errorf("size = %d, want -1", size)
		}
		got, err := io.ReadAll(rc)
		must(t, err)
		if digest.FromBytes(got) != f.layer {
			t.Error("body differs")
		}
	})

	t.Run("truncated", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, f.serve(t, only(http.MethodGet, "blobs", truncate)).URL, Options{})
		rc, size, err := c.GetBlob(t.Context(), f.repo, f.layer)
		must(t, err)
		defer rc.Close()
		if size != f.layerLen {
			t.Errorf("size = %d, want %d", size, f.layerLen)
		}
		n, err := io.Copy(io.Discard, rc)
		if n >= f.layerLen {
			t.Errorf("read %d bytes of a truncated %d-byte body", n, f.layerLen)
		}
		checkErr(t, err, errdefs.ErrUnavailable, true)
	})

	t.Run("the body outlives the ctx that bounded the headers", func(t *testing.T) {
		t.Parallel()
		proceed := make(chan struct{})
		srv := f.serve(t, only(http.MethodGet, "blobs", func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(f.layerRaw)))
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write(f.layerRaw[:10])
				w.(http.Flusher).Flush()
				select { // the rest only once the caller's ctx is gone
				case <-proceed:
				case <-r.Context().Done():
					return
				}
				_, _ = w.Write(f.layerRaw[10:])
			})
		}))
		c := newClient(t, srv.URL, Options{})
		ctx, cancel := context.WithCancel(t.Context())
		rc, _, err := c.GetBlob(ctx, f.repo, f.layer)
		must(t, err)
		defer rc.Close()
		cancel()
		close(proceed)
		got, err := io.ReadAll(rc)
		must(t, err)
		if !bytes.Equal(got, f.layerRaw) {
			t.Error("body differs")
		}
	})

	t.Run("Close ends the transfer", func(t *testing.T) {
		t.Parallel()
		ended := make(chan struct{})
		srv := f.serve(t, only(http.MethodGet, "blobs", func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "1000000")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write(make([]byte, 1000))
				w.(http.Flusher).Flush()
				<-r.Context().Done() // a slow upstream: the rest never comes
				close(ended)
			})
		}))
		c := newClient(t, srv.URL, Options{})
		rc, size, err := c.GetBlob(t.Context(), f.repo, f.layer)
		must(t, err)
		if size != 1000000 {
			t.Errorf("size = %d", size)
		}
		if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		readErr := make(chan error, 1)
		go func() {
			_, err := rc.Read(make([]byte, 10))
			readErr <- err
		}()
		must(t, rc.Close())
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream request was still open 10s after Close")
		}
		err = <-readErr
		if err == nil || IsEndpointFailure(err) {
			t.Errorf("read racing Close = %v, want an error that is not an endpoint failure", err)
		}
	})
}

func TestHeadBlob(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name  string
		wraps []func(http.Handler) http.Handler
		dgst  digest.Digest
		want  error
	}{
		{name: "size", dgst: f.layer},
		{name: "unknown blob", dgst: digest.FromString("nope"), want: errdefs.ErrNotFound},
		{name: "no Content-Length", dgst: f.layer, wraps: []func(http.Handler) http.Handler{only(http.MethodHead, "blobs", editHeaders(func(_ *http.Request, h http.Header) { h.Del("Content-Length") }))}, want: errdefs.ErrFailedPrecondition},
		{name: "another digest", dgst: f.layer, wraps: []func(http.Handler) http.Handler{only(http.MethodHead, "blobs", editHeaders(func(_ *http.Request, h http.Header) {
			h.Set("Docker-Content-Digest", digest.FromString("x").String())
		}))}, want: errdefs.ErrFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, f.serve(t, tt.wraps...).URL, Options{})
			size, err := c.HeadBlob(t.Context(), f.repo, tt.dgst)
			checkErr(t, err, tt.want, false)
			if tt.want == nil && size != f.layerLen {
				t.Errorf("size = %d, want %d", size, f.layerLen)
			}
		})
	}
}

// The resolver resumes fills through endpoints.RangeClient, found by type assertion.
var _ endpoints.RangeClient = (*Client)(nil)

func TestGetBlobRange(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	off := f.layerLen / 3
	length := f.layerLen - off
	// ignoreRange serves the whole blob to a Range request, as a registry without range
	// support does.
	ignoreRange := only(http.MethodGet, "blobs", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Header.Del("Range")
			next.ServeHTTP(w, r)
		})
	})
	// otherRange answers with bytes the request did not ask for.
	otherRange := only(http.MethodGet, "blobs", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Header.Set("Range", "bytes=0-9")
			next.ServeHTTP(w, r)
		})
	})
	otherDigest := editHeaders(func(r *http.Request, h http.Header) {
		if kind(r.URL.Path) == "blobs" {
			h.Set("Docker-Content-Digest", "sha256:0000000000000000000000000000000000000000000000000000000000000000")
		}
	})
	tests := []struct {
		name  string
		wraps []func(http.Handler) http.Handler
		want  error
	}{
		{name: "206"},
		{name: "a registry that ignores the range", wraps: []func(http.Handler) http.Handler{ignoreRange}},
		{name: "another range", wraps: []func(http.Handler) http.Handler{otherRange}, want: errdefs.ErrFailedPrecondition},
		{name: "another digest", wraps: []func(http.Handler) http.Handler{otherDigest}, want: errdefs.ErrFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, f.serve(t, tt.wraps...).URL, Options{})
			rc, size, err := c.GetBlobRange(t.Context(), f.repo, f.layer, off, length)
			checkErr(t, err, tt.want, false)
			if err != nil {
				return
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			must(t, err)
			if size != f.layerLen || !bytes.Equal(got, f.layerRaw[off:]) {
				t.Errorf("range: %d bytes, size %d; want the %d bytes from %d of a %d-byte blob", len(got), size, length, off, f.layerLen)
			}
		})
	}
	c := newClient(t, f.serve(t).URL, Options{})
	if _, _, err := c.GetBlobRange(t.Context(), f.repo, f.layer, 0, f.layerLen); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a range at 0: %v, want invalid argument (GetBlob reads from the start)", err)
	}
}
