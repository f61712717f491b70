package peer

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/mirror"
)

// countingReader is a request body that counts its reads.
type countingReader struct {
	r     io.Reader
	reads atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.r.Read(p)
}

// recordingIndex is an index handler that records the peer name it is given and reads the
// body it gets.
type recordingIndex struct {
	calls   atomic.Int64
	peer    atomic.Value // string
	read    atomic.Int64
	readErr atomic.Value // error
}

func (x *recordingIndex) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x.calls.Add(1)
	x.peer.Store(r.Header.Get(cluster.HeaderPeer))
	n, err := io.Copy(io.Discard, r.Body)
	x.read.Store(n)
	if err != nil {
		x.readErr.Store(err)
	}
	w.WriteHeader(http.StatusNoContent)
}

// newDirectHandler returns the peer handler over a real resolver (whose upstream has img), with
// its counting backend and index.
func newDirectHandler(t *testing.T, opts HandlerOptions) (http.Handler, *countingBackend, *recordingIndex, testImage) {
	t.Helper()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", 1024)
	backend := newCountingBackend(newTestResolver(t, up))
	index := &recordingIndex{}
	return newHandler(t, testAuth{nodes: []string{"b"}}, index, backend, opts), backend, index, img
}

func TestUnauthenticatedRequestsDoNothing(t *testing.T) {
	t.Parallel()
	h, backend, index, img := newDirectHandler(t, HandlerOptions{})
	blobPath := "/v2/" + testRepo + "/blobs/" + img.layer.String() + "?ns=" + testRegistry
	tests := []struct {
		name, method, target, token string
	}{
		{name: "no token, ping", method: http.MethodGet, target: "/v2/"},
		{name: "no token, blob", method: http.MethodGet, target: blobPath},
		{name: "unknown node, blob", method: http.MethodGet, target: blobPath, token: authScheme + "z"},
		{name: "malformed token, manifest", method: http.MethodHead, target: "/v2/" + testRepo + "/manifests/v1?ns=" + testRegistry, token: "Bearer b"},
		{name: "no token, announce", method: http.MethodPost, target: "/lifeboat/v1/announce"},
		{name: "no token, lookup", method: http.MethodPost, target: "/lifeboat/v1/lookup", token: authScheme + "y"},
		{name: "no token, elsewhere", method: http.MethodGet, target: "/metrics"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := &countingReader{r: strings.NewReader(`{"k":"sha256:x"}`)}
			req := httptest.NewRequest(tt.method, tt.target, body)
			if tt.token != "" {
				req.Header.Set(headerAuthorization, tt.token)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", rec.Code)
			}
			if tt.method != http.MethodHead {
				if code, _, ok := oci.DecodeError(rec.Body.Bytes()); !ok || code != oci.CodeUnauthorized {
					t.Errorf("body %q, want an UNAUTHORIZED error", rec.Body.String())
				}
			}
			if body.reads.Load() != 0 {
				t.Errorf("the body was read %d times", body.reads.Load())
			}
		})
	}
	if backend.calls.Load() != 0 || index.calls.Load() != 0 {
		t.Errorf("unauthenticated requests reached the backend %d times, the index %d times", backend.calls.Load(), index.calls.Load())
	}
}

func TestIndexGetsTheVerifiedNodeAndABoundedBody(t *testing.T) {
	t.Parallel()
	h, backend, index, _ := newDirectHandler(t, HandlerOptions{})
	req := httptest.NewRequest(http.MethodPost, "/lifeboat/v1/announce", io.LimitReader(zeros{}, maxIndexBody+1))
	req.Header.Set(headerAuthorization, authScheme+"b")
	req.Header.Set(cluster.HeaderPeer, "someone-else")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if index.calls.Load() != 1 || backend.calls.Load() != 0 {
		t.Fatalf("index called %d times, backend %d; want 1 and 0", index.calls.Load(), backend.calls.Load())
	}
	if got := index.peer.Load(); got != "b" {
		t.Errorf("the index was told the peer is %q, want the token's b", got)
	}
	var tooLarge *http.MaxBytesError
	if err, _ := index.readErr.Load().(error); !errors.As(err, &tooLarge) || index.read.Load() != maxIndexBody {
		t.Errorf("the index read %d bytes, then %v; want %d, then the limit", index.read.Load(), err, maxIndexBody)
	}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestPeersOnlyPull(t *testing.T) {
	t.Parallel()
	h, backend, index, img := newDirectHandler(t, HandlerOptions{})
	tests := []struct {
		name, method, target string
		status               int
		code                 oci.ErrorCode
	}{
		{name: "push", method: http.MethodPost, target: "/v2/" + testRepo + "/blobs/uploads/?ns=" + testRegistry, status: http.StatusMethodNotAllowed, code: oci.CodeUnsupported},
		{name: "delete", method: http.MethodDelete, target: "/v2/" + testRepo + "/manifests/" + img.manifest.String() + "?ns=" + testRegistry, status: http.StatusMethodNotAllowed, code: oci.CodeUnsupported},
		{name: "not an endpoint", method: http.MethodGet, target: "/debug/pprof/", status: http.StatusNotFound, code: oci.CodeUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.target, nil)
			req.Header.Set(headerAuthorization, authScheme+"b")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			code, _, _ := oci.DecodeError(rec.Body.Bytes())
			if rec.Code != tt.status || code != tt.code {
				t.Errorf("%d %s, want %d %s", rec.Code, code, tt.status, tt.code)
			}
		})
	}
	if backend.calls.Load() != 0 || index.calls.Load() != 0 {
		t.Errorf("refused requests reached the backend %d times, the index %d times", backend.calls.Load(), index.calls.Load())
	}
}

// TestMalformedRequestsAnsweredAsTheMirror: the handler parses a /v2/ request once, and
// refuses a malformed one as the mirror does (the same status, headers, body and observed
// answer), without a call to the backend.
func TestMalformedRequestsAnsweredAsTheMirror(t *testing.T) {
	t.Parallel()
	var observed []mirror.Answer // observed before the handler returns
	observe := func(a mirror.Answer) { observed = append(observed, a) }
	h, backend, _, _ := newDirectHandler(t, HandlerOptions{Observe: observe})
	m, err := mirror.New(backend.local(), mirror.Options{Observe: observe})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, method, target string }{
		{"bad name", http.MethodGet, "/v2/Team/app/manifests/v1?ns=" + testRegistry},
		{"bad tag", http.MethodHead, "/v2/" + testRepo + "/manifests/-v1?ns=" + testRegistry},
		{"blob by tag", http.MethodGet, "/v2/" + testRepo + "/blobs/latest?ns=" + testRegistry},
		{"bad ns", http.MethodGet, "/v2/" + testRepo + "/manifests/v1?ns=not%20a%20host"},
		{"catalog", http.MethodGet, "/v2/_catalog"},
		{"upload", http.MethodGet, "/v2/" + testRepo + "/blobs/uploads/1?ns=" + testRegistry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serve := func(h http.Handler) (*http.Response, []byte, mirror.Answer) {
				t.Helper()
				req := httptest.NewRequest(tc.method, tc.target, nil)
				req.Header.Set(headerAuthorization, authScheme+"b")
				w := httptest.NewRecorder()
				observed = nil
				h.ServeHTTP(w, req)
				if len(observed) != 1 {
					t.Fatalf("%d answers observed, want 1", len(observed))
				}
				a := observed[0]
				a.Duration = 0
				return w.Result(), w.Body.Bytes(), a
			}
			got, gotBody, gotAnswer := serve(h)
			want, wantBody, wantAnswer := serve(m)
			if want.StatusCode/100 != 4 {
				t.Fatalf("the mirror answered %d, want a refusal", want.StatusCode)
			}
			if got.StatusCode != want.StatusCode || !maps.EqualFunc(got.Header, want.Header, slices.Equal) || !bytes.Equal(gotBody, wantBody) {
				t.Errorf("answered %d %v %s, the mirror %d %v %s", got.StatusCode, got.Header, gotBody, want.StatusCode, want.Header, wantBody)
			}
			if gotAnswer != wantAnswer {
				t.Errorf("observed %+v, the mirror %+v", gotAnswer, wantAnswer)
			}
		})
	}
	if n := backend.calls.Load(); n != 0 {
		t.Errorf("malformed requests reached the backend %d times", n)
	}
}

func TestNotSharedRegistryIsNotServed(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", 64<<10)
	var answers []mirror.Answer
	var mu sync.Mutex
	observe := func(a mirror.Answer) {
		mu.Lock()
		defer mu.Unlock()
		answers = append(answers, a)
	}
	b := newTestNode(t, "b", up, HandlerOptions{Observe: observe}, testRegistry)
	b.warm(t, img.layer)
	before := up.Count("GET blobs")

	// Straight to the handler: 404 NAME_UNKNOWN.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, b.srv.URL+"/v2/"+testRepo+"/blobs/"+img.layer.String()+"?ns="+testRegistry, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := newTestCluster("a").Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if code, _, _ := oci.DecodeError(body); resp.StatusCode != http.StatusNotFound || code != oci.CodeNameUnknown {
		t.Errorf("%d %s, want 404 NAME_UNKNOWN", resp.StatusCode, code)
	}
	mu.Lock()
	want := mirror.Answer{Method: http.MethodGet, Route: "blob", Registry: testRegistry, Repository: testRepo, Status: http.StatusNotFound}
	if len(answers) != 1 || answers[0].Duration <= 0 {
		t.Errorf("observed %+v, want one answer with its duration", answers)
	} else {
		got := answers[0]
		got.Duration = 0
		if got != want {
			t.Errorf("observed %+v, want %+v", got, want)
		}
	}
	mu.Unlock()

	// The ping names no registry: answered.
	req, err = http.NewRequestWithContext(t.Context(), http.MethodGet, b.srv.URL+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = newTestCluster("a").Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("ping: %d, want 200", resp.StatusCode)
	}

	// Through a Source: not found.
	c := newTestCluster("a", b.member())
	c.setHolders(cluster.BlobKey(img.layer), "b")
	if _, err := NewSource(c, SourceOptions{}).OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil); !errdefs.IsNotFound(err) {
		t.Errorf("OpenBlob: %v, want not found", err)
	}
	if n := up.Count("GET blobs") - before; n != 0 {
		t.Errorf("requests for a registry not shared made %d blob GETs upstream", n)
	}
}
