package upstream

import (
	"bytes"
	"encoding/pem"
	"errors"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Credentials used throughout; no error or log may ever contain testPassword.
const (
	testUser     = "alice"
	testPassword = "s3cr3t-Pa55w0rd"
)

// fixture is a real in-process registry (go-containerregistry's pkg/registry) seeded with one
// image and one index, served unwrapped for seeding and wrapped for the client under test.
type fixture struct {
	reg     http.Handler
	seedURL string

	repo     string
	tag      string
	desc     ocispec.Descriptor // the image manifest
	manifest []byte
	layer    digest.Digest
	layerLen int64
	layerRaw []byte // the layer blob as stored

	indexTag  string
	indexDesc ocispec.Descriptor
}

func newFixture(t *testing.T, opts ...registry.Option) *fixture {
	t.Helper()
	opts = append([]registry.Option{registry.Logger(stdlog.New(io.Discard, "", 0))}, opts...)
	f := &fixture{reg: registry.New(opts...), repo: "team/app", tag: "v1", indexTag: "multi"}
	seed := httptest.NewServer(f.reg)
	t.Cleanup(seed.Close)
	f.seedURL = seed.URL
	host := strings.TrimPrefix(seed.URL, "http://")

	img, err := random.Image(2048, 2)
	must(t, err)
	must(t, remote.Write(mustTag(t, host+"/"+f.repo+":"+f.tag), img, remote.WithContext(t.Context())))
	f.manifest, err = img.RawManifest()
	must(t, err)
	mt, err := img.MediaType()
	must(t, err)
	f.desc = ocispec.Descriptor{MediaType: string(mt), Digest: digest.FromBytes(f.manifest), Size: int64(len(f.manifest))}
	layers, err := img.Layers()
	must(t, err)
	h, err := layers[0].Digest()
	must(t, err)
	f.layer = digest.Digest(h.String())
	rc, err := layers[0].Compressed()
	must(t, err)
	f.layerRaw, err = io.ReadAll(rc)
	must(t, err)
	f.layerLen = int64(len(f.layerRaw))

	idx, err := random.Index(512, 1, 2)
	must(t, err)
	must(t, remote.WriteIndex(mustTag(t, host+"/"+f.repo+":"+f.indexTag), idx, remote.WithContext(t.Context())))
	raw, err := idx.RawManifest()
	must(t, err)
	imt, err := idx.MediaType()
	must(t, err)
	f.indexDesc = ocispec.Descriptor{MediaType: string(imt), Digest: digest.FromBytes(raw), Size: int64(len(raw))}
	return f
}

// serve serves the fixture's registry behind the given wrappers (outermost first).
func (f *fixture) serve(t *testing.T, wraps ...func(http.Handler) http.Handler) *httptest.Server {
	t.Helper()
	return serve(t, chain(f.reg, wraps...))
}

// putTags adds tags for the fixture's image.
func (f *fixture) putTags(t *testing.T, tags ...string) {
	t.Helper()
	for _, tag := range tags {
		f.putManifestIn(t, f.repo, tag, f.desc.MediaType, f.manifest)
	}
}

// putManifestIn stores body as repo:ref with the registry's own API.
func (f *fixture) putManifestIn(t *testing.T, repo, ref, mediaType string, body []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, f.seedURL+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	must(t, err)
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s: %s", ref, resp.Status)
	}
}

func chain(h http.Handler, wraps ...func(http.Handler) http.Handler) http.Handler {
	for i := len(wraps) - 1; i >= 0; i-- {
		h = wraps[i](h)
	}
	return h
}

func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func mustTag(t *testing.T, s string) name.Tag {
	t.Helper()
	tag, err := name.NewTag(s, name.Insecure)
	must(t, err)
	return tag
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// newClient returns a client for srv, registry = the server's host.
func newClient(t *testing.T, endpoint string, opts Options) *Client {
	t.Helper()
	u, err := url.Parse(endpoint)
	must(t, err)
	c, err := New(u.Host, endpoint, opts)
	if err != nil {
		t.Fatalf("New(%s): %v", endpoint, err)
	}
	return c
}

// checkErr asserts err's class, whether it is an endpoint failure, and that it never holds
// the password.
func checkErr(t *testing.T, err error, class error, failure bool) {
	t.Helper()
	if class == nil {
		if err != nil {
			t.Fatalf("err = %v, want nil", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("err = nil, want %v", class)
	}
	if !errors.Is(err, class) {
		t.Errorf("err = %v, want it to be %v", err, class)
	}
	if got := IsEndpointFailure(err); got != failure {
		t.Errorf("IsEndpointFailure(%v) = %v, want %v", err, got, failure)
	}
	noSecret(t, err.Error())
}

func noSecret(t *testing.T, s string) {
	t.Helper()
	for _, secret := range []string{testPassword, "Authorization", "Bearer ", "Basic "} {
		if strings.Contains(s, secret) {
			t.Errorf("%q contains %q", s, secret)
		}
	}
}

// counter counts requests by method and API kind ("manifests", "blobs", "tags", ...).
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		c.n[r.Method+" "+kind(r.URL.Path)]++
		c.n["all"]++
		c.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// kind is the API a /v2/ path belongs to: "manifests", "blobs", "tags", "referrers" or "root".
func kind(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(parts) >= 2 && parts[len(parts)-2] == "tags":
		return "tags"
	case len(parts) >= 3:
		return parts[len(parts)-2]
	}
	return "root"
}

// only applies wrap to requests of the given method ("" any) and API kind.
func only(method, k string, wrap func(http.Handler) http.Handler) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		wrapped := wrap(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if (method == "" || r.Method == method) && kind(r.URL.Path) == k {
				wrapped.ServeHTTP(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// answer replaces the registry with a fixed status, headers and body.
func answer(status int, body string, headers ...string) func(http.Handler) http.Handler {
	return func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for i := 0; i+1 < len(headers); i += 2 {
				w.Header().Set(headers[i], headers[i+1])
			}
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		})
	}
}

// editHeaders lets the registry answer, then edits its headers before they are sent.
func editHeaders(edit func(r *http.Request, h http.Header)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			edit(r, rec.Header())
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
		})
	}
}

// truncate lets the registry answer, then sends only half the body under the full
// Content-Length and closes the connection.
func truncate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		body := rec.Body.Bytes()
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body[:len(body)/2])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		// Returning with fewer bytes than declared makes the server close the connection.
	})
}

// refusedURL is an http URL on which nothing listens.
func refusedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	must(t, l.Close())
	return "http://" + addr
}

// blackholeURL is an http URL whose listener accepts connections and never answers.
func blackholeURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			// Read and discard so the client's request is fully sent; never write.
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + l.Addr().String()
}

// writeCA writes srv's certificate as a PEM file and returns its path.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	must(t, os.WriteFile(path, pemBytes, 0o600))
	return path
}
