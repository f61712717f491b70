package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

func TestMain(m *testing.M) {
	// The failure tests log a warning each; keep the output readable.
	_ = log.SetLevel("error")
	os.Exit(m.Run())
}

// newServer serves New(b, opts) over real HTTP for the length of the test.
func newServer(t *testing.T, b Backend, opts Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(newHandler(t, b, opts))
	t.Cleanup(srv.Close)
	return srv
}

// newHandler returns New(b, opts), failing tb if New refuses opts.
func newHandler(tb testing.TB, b Backend, opts Options) *Handler {
	tb.Helper()
	h, err := New(b, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// do sends method target (a path and query, sent as written) and returns the answer and its body.
func do(t *testing.T, srv *httptest.Server, method, target string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, target, err)
	}
	return resp, body
}

// ociError is the OCI distribution-spec error body.
type ociError struct {
	Errors []struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	} `json:"errors"`
}

// checkError checks that an answer is an OCI error with status and code.
func checkError(t *testing.T, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if resp.Request.Method == http.MethodHead {
		if len(body) != 0 {
			t.Errorf("HEAD answered with a body: %q", body)
		}
		return
	}
	var e ociError
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 {
		t.Fatalf("not an OCI error body (%v): %s", err, body)
	}
	if e.Errors[0].Code != code {
		t.Errorf("code %s, want %s (message %q)", e.Errors[0].Code, code, e.Errors[0].Message)
	}
	if e.Errors[0].Message == "" {
		t.Error("error without a message")
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length %q for a body of %d bytes", cl, len(body))
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	srv := newServer(t, newMemBackend(), Options{})
	for _, tc := range []struct{ name, method, path string }{
		{"GET /v2/", http.MethodGet, "/v2/"},
		{"HEAD /v2/", http.MethodHead, "/v2/"},
		{"GET /v2", http.MethodGet, "/v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, body := do(t, srv, tc.method, tc.path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
				t.Errorf("Docker-Distribution-API-Version %q", v)
			}
			want := "{}"
			if tc.method == http.MethodHead {
				want = ""
			}
			if string(body) != want {
				t.Errorf("body %q, want %q", body, want)
			}
			if resp.ContentLength != 2 {
				t.Errorf("Content-Length %d, want 2", resp.ContentLength)
			}
		})
	}
}

func TestManifest(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", 100)
	srv := newServer(t, b, Options{})
	bodyOf := func(d ocispec.Descriptor) []byte {
		m, err := b.Manifest(t.Context(), "docker.io", "library/alpine", d.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		return m.Body
	}

	for _, tc := range []struct {
		name string
		path string
		want ocispec.Descriptor
	}{
		{"tag", "/v2/library/alpine/manifests/3.20", img.index},
		{"index by digest", "/v2/library/alpine/manifests/" + img.index.Digest.String(), img.index},
		{"manifest by digest", "/v2/library/alpine/manifests/" + img.manifest.Digest.String(), img.manifest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			get, body := do(t, srv, http.MethodGet, tc.path, nil)
			head, headBody := do(t, srv, http.MethodHead, tc.path, nil)
			if get.StatusCode != http.StatusOK || head.StatusCode != http.StatusOK {
				t.Fatalf("GET %d, HEAD %d", get.StatusCode, head.StatusCode)
			}
			if !bytes.Equal(body, bodyOf(tc.want)) {
				t.Errorf("body differs from the stored manifest")
			}
			if len(headBody) != 0 {
				t.Errorf("HEAD sent a body of %d bytes", len(headBody))
			}
			for k, want := range map[string]string{
				"Content-Type":          tc.want.MediaType,
				"Content-Length":        strconv.FormatInt(tc.want.Size, 10),
				"Docker-Content-Digest": tc.want.Digest.String(),
				"X-Lifeboat-Cache":      "hit",
			} {
				if got := get.Header.Get(k); got != want {
					t.Errorf("GET %s = %q, want %q", k, got, want)
				}
			}
			sameHeaders(t, get, head)
		})
	}
}

// sameHeaders checks that a HEAD answer has exactly the GET answer's headers.
func sameHeaders(t *testing.T, get, head *http.Response) {
	t.Helper()
	if get.StatusCode != head.StatusCode {
		t.Errorf("GET status %d, HEAD status %d", get.StatusCode, head.StatusCode)
	}
	for _, h := range []http.Header{get.Header, head.Header} {
		h.Del("Date")
	}
	for k := range mergeKeys(get.Header, head.Header) {
		if g, h := get.Header.Values(k), head.Header.Values(k); !slices.Equal(g, h) {
			t.Errorf("%s: GET %q, HEAD %q", k, g, h)
		}
	}
}

func mergeKeys(a, b http.Header) map[string]bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}

func TestRegistrySelection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		opts       Options
		path       string
		registry   string
		repository string
	}{
		{name: "docker engine full name", path: "/v2/library/alpine/manifests/v1", registry: "docker.io", repository: "library/alpine"},
		{name: "docker.io official image gets library/", path: "/v2/alpine/manifests/v1", registry: "docker.io", repository: "library/alpine"},
		{name: "ns docker.io one component", path: "/v2/alpine/manifests/v1?ns=docker.io", registry: "docker.io", repository: "library/alpine"},
		{name: "ns docker.io library/ kept once", path: "/v2/library/alpine/manifests/v1?ns=docker.io", registry: "docker.io", repository: "library/alpine"},
		{name: "docker.io user repository", path: "/v2/someone/app/manifests/v1", registry: "docker.io", repository: "someone/app"},
		{name: "ns index.docker.io", path: "/v2/alpine/manifests/v1?ns=index.docker.io", registry: "docker.io", repository: "library/alpine"},
		{name: "ns other registry", path: "/v2/org/app/manifests/v1?ns=ghcr.io", registry: "ghcr.io", repository: "org/app"},
		{name: "ns other registry one component not prefixed", path: "/v2/app/manifests/v1?ns=quay.io", registry: "quay.io", repository: "app"},
		{name: "ns with port", path: "/v2/team/app/manifests/v1?ns=registry.local:5000", registry: "registry.local:5000", repository: "team/app"},
		{name: "ns upper case", path: "/v2/org/app/manifests/v1?ns=GHCR.io", registry: "ghcr.io", repository: "org/app"},
		{name: "ns wins over a dotted first component", path: "/v2/my.org/app/manifests/v1?ns=quay.io", registry: "quay.io", repository: "my.org/app"},
		{name: "ns and the same host in the path", path: "/v2/ghcr.io/org/app/manifests/v1?ns=ghcr.io", registry: "ghcr.io", repository: "org/app"},
		{name: "host in path", path: "/v2/ghcr.io/org/app/manifests/v1", registry: "ghcr.io", repository: "org/app"},
		{name: "host in path upper case", path: "/v2/GHCR.IO/org/app/manifests/v1", registry: "ghcr.io", repository: "org/app"},
		{name: "host with port in path", path: "/v2/localhost:5000/team/app/manifests/v1", registry: "localhost:5000", repository: "team/app"},
		{name: "localhost in path", path: "/v2/localhost/app/manifests/v1", registry: "localhost", repository: "app"},
		{name: "ipv6 host in path", path: "/v2/[::1]:5000/app/manifests/v1", registry: "[::1]:5000", repository: "app"},
		{name: "docker.io in path", path: "/v2/docker.io/alpine/manifests/v1", registry: "docker.io", repository: "library/alpine"},
		{name: "dotted name alone is a repository", path: "/v2/foo.bar/manifests/v1", registry: "docker.io", repository: "library/foo.bar"},
		{name: "default registry option", opts: Options{DefaultRegistry: "Registry.Example"}, path: "/v2/app/manifests/v1", registry: "registry.example", repository: "app"},
		{name: "blobs route", path: "/v2/ghcr.io/org/app/blobs/BLOB", registry: "ghcr.io", repository: "org/app"},
		{name: "tags route", path: "/v2/alpine/tags/list", registry: "docker.io", repository: "library/alpine"},
		{name: "referrers route", path: "/v2/org/app/referrers/INDEX?ns=ghcr.io", registry: "ghcr.io", repository: "org/app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newMemBackend()
			img := b.addImage(tc.registry, tc.repository, "v1", 10)
			var (
				mu  sync.Mutex
				ans []Answer
			)
			srv := newServer(t, b, Options{DefaultRegistry: tc.opts.DefaultRegistry, Observe: func(a Answer) {
				mu.Lock()
				ans = append(ans, a)
				mu.Unlock()
			}})
			path := strings.NewReplacer("BLOB", img.layer.Digest.String(), "INDEX", img.index.Digest.String()).Replace(tc.path)
			resp, body := do(t, srv, http.MethodGet, path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(ans) != 1 || ans[0].Registry != tc.registry || ans[0].Repository != tc.repository {
				t.Errorf("answers %+v, want registry %s repository %s", ans, tc.registry, tc.repository)
			}
		})
	}
}

func TestNewRejectsBadDefaultRegistry(t *testing.T) {
	t.Parallel()
	h, err := New(newMemBackend(), Options{DefaultRegistry: "not a host"})
	if h != nil || !errdefs.IsInvalidArgument(err) {
		t.Errorf("New with an invalid default registry = %v, %v; want no handler and an invalid-argument error", h, err)
	}
}

// TestServe answers requests that their caller parsed as ServeHTTP answers them unparsed: the
// same status, headers and body, and the same observed answer.
func TestServe(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	img := b.addImage("ghcr.io", "org/app", "v1", 5000)
	b.addReferrer("ghcr.io", "org/app", img.manifest, "application/spdx+json")
	r := b.repo("ghcr.io", "org/app")
	for i := range maxTagsPage {
		r.tags[fmt.Sprintf("t%06d", i)] = img.index.Digest
	}
	var answers []Answer // the handler observes before its ServeHTTP or Serve returns
	h := newHandler(t, b, Options{Observe: func(a Answer) { answers = append(answers, a) }})
	layer := "/v2/ghcr.io/org/app/blobs/" + img.layer.Digest.String()
	for _, tc := range []struct {
		name, method, target, rangeHdr string
	}{
		{"ping", http.MethodGet, "/v2/", ""},
		{"tag", http.MethodHead, "/v2/org/app/manifests/v1?ns=ghcr.io", ""},
		{"manifest by digest", http.MethodGet, "/v2/ghcr.io/org/app/manifests/" + img.manifest.Digest.String(), ""},
		{"blob range", http.MethodGet, layer, "bytes=100-199"},
		{"blob head", http.MethodHead, layer, ""},
		{"range not satisfiable", http.MethodGet, layer, "bytes=9999-"},
		{"tags page capped", http.MethodGet, "/v2/ghcr.io/org/app/tags/list?n=999999999", ""},
		{"referrers filtered", http.MethodGet, "/v2/ghcr.io/org/app/referrers/" + img.manifest.Digest.String() + "?artifactType=application/spdx%2Bjson", ""},
		{"unknown tag", http.MethodGet, "/v2/ghcr.io/org/app/manifests/v2", ""},
		{"unknown repository", http.MethodHead, "/v2/ghcr.io/org/other/blobs/" + img.layer.Digest.String(), ""},
		{"delete", http.MethodDelete, "/v2/ghcr.io/org/app/manifests/v1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serve := func(serve func(http.ResponseWriter, *http.Request)) (*http.Response, []byte, Answer) {
				t.Helper()
				req := httptest.NewRequestWithContext(t.Context(), tc.method, tc.target, nil)
				if tc.rangeHdr != "" {
					req.Header.Set("Range", tc.rangeHdr)
				}
				w := httptest.NewRecorder()
				answers = nil
				serve(w, req)
				if len(answers) != 1 {
					t.Fatalf("%d answers observed, want 1", len(answers))
				}
				a := answers[0]
				a.Duration = 0
				return w.Result(), w.Body.Bytes(), a
			}
			want, wantBody, wantAnswer := serve(h.ServeHTTP)
			got, gotBody, gotAnswer := serve(func(w http.ResponseWriter, r *http.Request) {
				p, e := oci.ParsePath(r.URL.EscapedPath(), r.URL.RawQuery, oci.DockerHub)
				if e != nil {
					t.Fatalf("ParsePath refused %s: %v", tc.target, e)
				}
				h.Serve(w, r, p)
			})
			if got.StatusCode != want.StatusCode || !maps.EqualFunc(got.Header, want.Header, slices.Equal) || !bytes.Equal(gotBody, wantBody) {
				t.Errorf("Serve answered %d %v (%d bytes), ServeHTTP %d %v (%d bytes)",
					got.StatusCode, got.Header, len(gotBody), want.StatusCode, want.Header, len(wantBody))
			}
			if gotAnswer != wantAnswer {
				t.Errorf("Serve observed %+v, ServeHTTP %+v", gotAnswer, wantAnswer)
			}
		})
	}
}

func TestBlob(t *testing.T) {
	t.Parallel()
	const size = 1000
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", size)
	empty := b.putBlob(b.repo("docker.io", "library/alpine"), "", nil)
	layer := img.blobs[img.layer.Digest]
	srv := newServer(t, b, Options{})
	path := "/v2/library/alpine/blobs/" + img.layer.Digest.String()
	etag := `"` + img.layer.Digest.String() + `"`

	for _, tc := range []struct {
		name     string
		path     string
		rangeHdr string
		ifRange  string
		status   int
		from, to int    // the body is layer[from:to]
		cr       string // Content-Range
	}{
		{name: "whole", status: 200, to: size},
		{name: "from offset", rangeHdr: "bytes=100-", status: 206, from: 100, to: size, cr: "bytes 100-999/1000"},
		{name: "from zero", rangeHdr: "bytes=0-", status: 206, to: size, cr: "bytes 0-999/1000"},
		{name: "closed range", rangeHdr: "bytes=10-19", status: 206, from: 10, to: 20, cr: "bytes 10-19/1000"},
		{name: "last byte", rangeHdr: "bytes=999-999", status: 206, from: 999, to: 1000, cr: "bytes 999-999/1000"},
		{name: "end beyond size is clamped", rangeHdr: "bytes=990-99999999999999999999", status: 206, from: 990, to: size, cr: "bytes 990-999/1000"},
		{name: "suffix", rangeHdr: "bytes=-10", status: 206, from: 990, to: size, cr: "bytes 990-999/1000"},
		{name: "suffix longer than blob", rangeHdr: "bytes=-5000", status: 206, to: size, cr: "bytes 0-999/1000"},
		{name: "start at size", rangeHdr: "bytes=1000-", status: 416, cr: "bytes */1000"},
		{name: "start beyond size", rangeHdr: "bytes=5000-6000", status: 416, cr: "bytes */1000"},
		{name: "zero suffix", rangeHdr: "bytes=-0", status: 416, cr: "bytes */1000"},
		{name: "several ranges ignored", rangeHdr: "bytes=0-1,5-6", status: 200, to: size},
		{name: "backwards range ignored", rangeHdr: "bytes=20-10", status: 200, to: size},
		{name: "other unit ignored", rangeHdr: "items=0-5", status: 200, to: size},
		{name: "garbage ignored", rangeHdr: "bytes=abc", status: 200, to: size},
		{name: "if-range match", rangeHdr: "bytes=10-19", ifRange: etag, status: 206, from: 10, to: 20, cr: "bytes 10-19/1000"},
		{name: "if-range mismatch", rangeHdr: "bytes=10-19", ifRange: `"sha256:other"`, status: 200, to: size},
		{name: "empty blob", path: "/v2/library/alpine/blobs/" + empty.Digest.String(), status: 200},
		{name: "empty blob range", path: "/v2/library/alpine/blobs/" + empty.Digest.String(), rangeHdr: "bytes=0-", status: 416, cr: "bytes */0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, data, dgst := path, layer, img.layer.Digest
			if tc.path != "" {
				p, data, dgst = tc.path, nil, empty.Digest
			}
			hdr := http.Header{}
			if tc.rangeHdr != "" {
				hdr.Set("Range", tc.rangeHdr)
			}
			if tc.ifRange != "" {
				hdr.Set("If-Range", tc.ifRange)
			}
			get, body := do(t, srv, http.MethodGet, p, hdr)
			head, headBody := do(t, srv, http.MethodHead, p, hdr)
			sameHeaders(t, get, head)
			if len(headBody) != 0 {
				t.Errorf("HEAD sent a body")
			}
			if get.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", get.StatusCode, tc.status, body)
			}
			if got := get.Header.Get("Content-Range"); got != tc.cr {
				t.Errorf("Content-Range %q, want %q", got, tc.cr)
			}
			if got := get.Header.Get("X-Lifeboat-Cache"); got != "hit" {
				t.Errorf("X-Lifeboat-Cache %q", got)
			}
			if tc.status == http.StatusRequestedRangeNotSatisfiable {
				checkError(t, get, body, tc.status, "UNSUPPORTED")
				return
			}
			if !bytes.Equal(body, data[tc.from:tc.to]) {
				t.Errorf("body is %d bytes, not layer[%d:%d]", len(body), tc.from, tc.to)
			}
			for k, want := range map[string]string{
				"Content-Length":        strconv.Itoa(tc.to - tc.from),
				"Content-Type":          "application/octet-stream",
				"Docker-Content-Digest": dgst.String(),
				"Accept-Ranges":         "bytes",
			} {
				if got := get.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestCacheHeader(t *testing.T) {
	t.Parallel()
	for _, status := range []resolver.CacheStatus{resolver.Hit, resolver.Miss, resolver.Stale, resolver.Revalidated} {
		b := newMemBackend()
		img := b.addImage("docker.io", "library/alpine", "3.20", 10)
		b.repo("docker.io", "library/alpine").status = status
		srv := newServer(t, b, Options{})
		for _, tc := range []struct{ name, path string }{
			{"manifest by tag", "/v2/library/alpine/manifests/3.20"},
			{"manifest by digest", "/v2/library/alpine/manifests/" + img.manifest.Digest.String()},
			{"blob", "/v2/library/alpine/blobs/" + img.config.Digest.String()},
			{"blob range", "/v2/library/alpine/blobs/" + img.config.Digest.String()},
			{"tags", "/v2/library/alpine/tags/list"},
		} {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				t.Run(fmt.Sprintf("%s %s %s", status, method, tc.name), func(t *testing.T) {
					t.Parallel()
					var hdr http.Header
					if tc.name == "blob range" {
						hdr = http.Header{"Range": {"bytes=1-"}}
					}
					resp, _ := do(t, srv, method, tc.path, hdr)
					if resp.StatusCode/100 != 2 {
						t.Fatalf("status %d", resp.StatusCode)
					}
					if got := resp.Header.Get("X-Lifeboat-Cache"); got != string(status) {
						t.Errorf("X-Lifeboat-Cache %q, want %q", got, status)
					}
				})
			}
		}
	}
}

func TestTags(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	for _, tag := range []string{"a", "b", "c", "d", "e"} {
		b.addImage("docker.io", "library/alpine", tag, 1)
		b.addImage("ghcr.io", "org/app", tag, 1)
	}
	b.repo("docker.io", "library/empty")
	srv := newServer(t, b, Options{})

	for _, tc := range []struct {
		name  string
		path  string
		tags  []string
		link  string
		nameJ string
	}{
		{name: "all", path: "/v2/library/alpine/tags/list", tags: []string{"a", "b", "c", "d", "e"}, nameJ: "library/alpine"},
		{name: "first page", path: "/v2/alpine/tags/list?n=2", tags: []string{"a", "b"}, link: `</v2/alpine/tags/list?n=2&last=b>; rel="next"`, nameJ: "alpine"},
		{name: "middle page", path: "/v2/alpine/tags/list?n=2&last=b", tags: []string{"c", "d"}, link: `</v2/alpine/tags/list?n=2&last=d>; rel="next"`, nameJ: "alpine"},
		{name: "last page", path: "/v2/alpine/tags/list?n=2&last=d", tags: []string{"e"}, nameJ: "alpine"},
		{name: "exact last page", path: "/v2/alpine/tags/list?n=5", tags: []string{"a", "b", "c", "d", "e"}, nameJ: "alpine"},
		{name: "last between tags", path: "/v2/alpine/tags/list?last=bb", tags: []string{"c", "d", "e"}, nameJ: "alpine"},
		{name: "last after every tag", path: "/v2/alpine/tags/list?last=z", tags: []string{}, nameJ: "alpine"},
		{name: "n zero", path: "/v2/alpine/tags/list?n=0", tags: []string{}, nameJ: "alpine"},
		{name: "ns kept in link", path: "/v2/org/app/tags/list?n=3&ns=ghcr.io", tags: []string{"a", "b", "c"}, link: `</v2/org/app/tags/list?n=3&last=c&ns=ghcr.io>; rel="next"`, nameJ: "org/app"},
		{name: "host in path kept in link", path: "/v2/ghcr.io/org/app/tags/list?n=4", tags: []string{"a", "b", "c", "d"}, link: `</v2/ghcr.io/org/app/tags/list?n=4&last=d>; rel="next"`, nameJ: "ghcr.io/org/app"},
		{name: "no tags", path: "/v2/library/empty/tags/list", tags: []string{}, nameJ: "library/empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, body := do(t, srv, http.MethodGet, tc.path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var list struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}
			if err := json.Unmarshal(body, &list); err != nil {
				t.Fatal(err)
			}
			if list.Tags == nil {
				t.Errorf("tags is null, want a list: %s", body)
			}
			if !slices.Equal(list.Tags, tc.tags) || list.Name != tc.nameJ {
				t.Errorf("got %s %q, want %s %q", list.Name, list.Tags, tc.nameJ, tc.tags)
			}
			if got := resp.Header.Get("Link"); got != tc.link {
				t.Errorf("Link %q, want %q", got, tc.link)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}

	t.Run("following links lists every tag once", func(t *testing.T) {
		t.Parallel()
		var all []string
		next := "/v2/org/app/tags/list?n=2&ns=ghcr.io"
		for i := 0; next != ""; i++ {
			if i > 10 {
				t.Fatal("links never end")
			}
			resp, body := do(t, srv, http.MethodGet, next, nil)
			var list struct{ Tags []string }
			if err := json.Unmarshal(body, &list); err != nil {
				t.Fatal(err)
			}
			all = append(all, list.Tags...)
			next = ""
			if l := resp.Header.Get("Link"); l != "" {
				next = strings.TrimPrefix(l[:strings.Index(l, ">")], "<")
			}
		}
		if !slices.Equal(all, []string{"a", "b", "c", "d", "e"}) {
			t.Errorf("tags %q", all)
		}
	})

	t.Run("large n is capped", func(t *testing.T) {
		t.Parallel()
		b := newMemBackend()
		r := b.repo("docker.io", "library/many")
		for i := range maxTagsPage + 5 {
			r.tags[fmt.Sprintf("t%06d", i)] = digest.FromString("x")
		}
		srv := newServer(t, b, Options{})
		resp, body := do(t, srv, http.MethodGet, "/v2/library/many/tags/list?n=999999999", nil)
		var list struct{ Tags []string }
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Tags) != maxTagsPage {
			t.Errorf("%d tags, want %d", len(list.Tags), maxTagsPage)
		}
		want := fmt.Sprintf(`</v2/library/many/tags/list?n=%d&last=t%06d>; rel="next"`, maxTagsPage, maxTagsPage-1)
		if got := resp.Header.Get("Link"); got != want {
			t.Errorf("Link %q, want %q", got, want)
		}
	})
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	img := b.addImage("ghcr.io", "org/app", "v1", 10)
	sbom := b.addReferrer("ghcr.io", "org/app", img.manifest, "application/spdx+json")
	sig := b.addReferrer("ghcr.io", "org/app", img.manifest, "application/vnd.dev.sigstore.bundle.v0.3+json")
	srv := newServer(t, b, Options{})
	base := "/v2/org/app/referrers/" + img.manifest.Digest.String() + "?ns=ghcr.io"

	for _, tc := range []struct {
		name     string
		path     string
		want     []digest.Digest
		filtered bool
	}{
		{name: "all", path: base, want: sortedDigests(sbom.Digest, sig.Digest)},
		{name: "filtered", path: base + "&artifactType=application/spdx%2Bjson", want: []digest.Digest{sbom.Digest}, filtered: true},
		{name: "filter matching none", path: base + "&artifactType=application/x-none", want: nil, filtered: true},
		{name: "no referrers", path: "/v2/org/app/referrers/" + img.index.Digest.String() + "?ns=ghcr.io", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, body := do(t, srv, http.MethodGet, tc.path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != ocispec.MediaTypeImageIndex {
				t.Errorf("Content-Type %q", ct)
			}
			if got, want := resp.Header.Get("OCI-Filters-Applied"), map[bool]string{true: "artifactType"}[tc.filtered]; got != want {
				t.Errorf("OCI-Filters-Applied %q, want %q", got, want)
			}
			var idx ocispec.Index
			if err := json.Unmarshal(body, &idx); err != nil {
				t.Fatal(err)
			}
			if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex || idx.Manifests == nil {
				t.Errorf("not a complete image index: %s", body)
			}
			var got []digest.Digest
			for _, d := range idx.Manifests {
				got = append(got, d.Digest)
				if d.ArtifactType == "" {
					t.Errorf("referrer %s without artifactType", d.Digest)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("referrers %v, want %v", got, tc.want)
			}
		})
	}
}

func sortedDigests(d ...digest.Digest) []digest.Digest {
	slices.Sort(d)
	return d
}

func TestPushIsRefused(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	b.addImage("docker.io", "library/alpine", "3.20", 10)
	srv := newServer(t, b, Options{})
	dgst := digest.FromString("x").String()
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/v2/library/alpine/blobs/uploads/"},
		{http.MethodPost, "/v2/library/alpine/blobs/uploads/?mount=" + dgst + "&from=library/busybox"},
		{http.MethodPatch, "/v2/library/alpine/blobs/uploads/8f1c"},
		{http.MethodPut, "/v2/library/alpine/blobs/uploads/8f1c?digest=" + dgst},
		{http.MethodPut, "/v2/library/alpine/manifests/3.20"},
		{http.MethodDelete, "/v2/library/alpine/manifests/3.20"},
		{http.MethodDelete, "/v2/library/alpine/blobs/" + dgst},
		{http.MethodOptions, "/v2/"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			t.Parallel()
			resp, body := do(t, srv, tc.method, tc.path, nil)
			checkError(t, resp, body, http.StatusMethodNotAllowed, "UNSUPPORTED")
			if allow := resp.Header.Get("Allow"); allow != "GET, HEAD" {
				t.Errorf("Allow %q", allow)
			}
		})
	}
	if n := b.calls.Load(); n != 0 {
		t.Errorf("the backend was called %d times", n)
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", 10)
	srv := newServer(t, b, Options{})
	good := img.layer.Digest.String()
	hex := good[len("sha256:"):]

	for _, tc := range []struct {
		name   string
		path   string
		status int
		code   string
	}{
		{"upper-case name", "/v2/Library/alpine/manifests/latest", 400, "NAME_INVALID"},
		{"dot dot", "/v2/../etc/manifests/latest", 400, "NAME_INVALID"},
		{"dot dot inside the name", "/v2/library/../../etc/manifests/latest", 400, "NAME_INVALID"},
		{"escaped dot dot", "/v2/%2e%2e/etc/manifests/latest", 400, "NAME_INVALID"},
		{"escaped dot dot upper case", "/v2/library/%2E%2E/manifests/latest", 400, "NAME_INVALID"},
		{"single dot", "/v2/library/./alpine/manifests/latest", 400, "NAME_INVALID"},
		{"escaped slash", "/v2/library%2Falpine/manifests/latest", 400, "NAME_INVALID"},
		{"empty component", "/v2/library//alpine/manifests/latest", 400, "NAME_INVALID"},
		{"trailing slash", "/v2/library/alpine/manifests/latest/", 400, "NAME_INVALID"},
		{"empty reference", "/v2/library/alpine/manifests/", 400, "NAME_INVALID"},
		{"bad name separator", "/v2/library/al__-pine/manifests/latest", 400, "NAME_INVALID"},
		{"name too long", "/v2/" + strings.Repeat("a/", 128) + "a/manifests/latest", 400, "NAME_INVALID"},
		{"path too long", "/v2/" + strings.Repeat("a", 2000) + "/manifests/latest", 400, "NAME_INVALID"},
		{"bad registry in path", "/v2/bad_host.io/app/manifests/latest", 400, "NAME_INVALID"},
		{"port out of range", "/v2/registry.io:99999/app/manifests/latest", 400, "NAME_INVALID"},
		{"bad ns", "/v2/app/manifests/latest?ns=not%20a%20host", 400, "NAME_INVALID"},
		{"ns twice", "/v2/app/manifests/latest?ns=ghcr.io&ns=quay.io", 400, "UNSUPPORTED"},
		{"malformed query", "/v2/app/manifests/latest?ns=%zz", 400, "UNSUPPORTED"},
		{"tag starting with a dash", "/v2/library/alpine/manifests/-latest", 400, "TAG_INVALID"},
		{"tag too long", "/v2/library/alpine/manifests/" + strings.Repeat("t", 129), 400, "TAG_INVALID"},
		{"tag with a space", "/v2/library/alpine/manifests/lat%20est", 400, "TAG_INVALID"},
		{"short digest", "/v2/library/alpine/manifests/sha256:abc", 400, "DIGEST_INVALID"},
		{"unknown algorithm", "/v2/library/alpine/manifests/md5:" + hex[:32], 400, "DIGEST_INVALID"},
		{"sha384 refused", "/v2/library/alpine/blobs/sha384:" + strings.Repeat("a", 96), 400, "DIGEST_INVALID"},
		{"upper-case hex", "/v2/library/alpine/blobs/sha256:" + strings.ToUpper(hex), 400, "DIGEST_INVALID"},
		{"digest one short", "/v2/library/alpine/blobs/sha256:" + hex[1:], 400, "DIGEST_INVALID"},
		{"digest one long", "/v2/library/alpine/blobs/" + good + "0", 400, "DIGEST_INVALID"},
		{"not hex", "/v2/library/alpine/blobs/sha256:" + strings.Repeat("g", 64), 400, "DIGEST_INVALID"},
		{"blob by tag", "/v2/library/alpine/blobs/latest", 400, "DIGEST_INVALID"},
		{"referrers of a tag", "/v2/library/alpine/referrers/latest", 400, "DIGEST_INVALID"},
		{"bad artifactType", "/v2/library/alpine/referrers/" + good + "?artifactType=not-a-type", 400, "UNSUPPORTED"},
		{"negative n", "/v2/library/alpine/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"},
		{"signed n", "/v2/library/alpine/tags/list?n=%2B5", 400, "PAGINATION_NUMBER_INVALID"},
		{"n not a number", "/v2/library/alpine/tags/list?n=ten", 400, "PAGINATION_NUMBER_INVALID"},
		{"huge n", "/v2/library/alpine/tags/list?n=99999999999999999999999", 400, "PAGINATION_NUMBER_INVALID"},
		{"empty n", "/v2/library/alpine/tags/list?n=&last=a", 200, ""},
		{"bad last", "/v2/library/alpine/tags/list?last=a/b", 400, "TAG_INVALID"},
		{"catalog", "/v2/_catalog", 404, "UNSUPPORTED"},
		{"unknown route", "/v2/library/alpine/things/x", 404, "UNSUPPORTED"},
		{"tags not list", "/v2/library/alpine/tags/all", 404, "UNSUPPORTED"},
		{"upload status", "/v2/library/alpine/blobs/uploads/8f1c", 404, "UNSUPPORTED"},
		{"not the API", "/v1/library/alpine/manifests/latest", 404, "UNSUPPORTED"},
		{"root", "/", 404, "UNSUPPORTED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				resp, body := do(t, srv, method, tc.path, nil)
				if tc.status == http.StatusOK {
					if resp.StatusCode != http.StatusOK {
						t.Errorf("%s: status %d: %s", method, resp.StatusCode, body)
					}
					continue
				}
				checkError(t, resp, body, tc.status, tc.code)
			}
		})
	}
	t.Cleanup(func() {
		// One test case ("empty n") is valid and reaches the backend, once per method.
		if n := b.calls.Load(); n != 2 {
			t.Errorf("the backend was called %d times, want 2", n)
		}
	})
}

// retryLater is an Unavailable error that knows when to come back.
type retryLater struct{ after time.Duration }

func (e retryLater) Error() string             { return "circuit open for upstream https://registry.internal" }
func (e retryLater) Is(target error) bool      { return target == errdefs.ErrUnavailable }
func (e retryLater) RetryAfter() time.Duration { return e.after }

// tooManyFills is what the resolver answers past its limit of fills.
type tooManyFills struct{}

func (tooManyFills) Error() string { return "too many blob downloads in progress: all 64 are busy" }
func (tooManyFills) Is(target error) bool {
	return target == fill.ErrTooManyFills || target == errdefs.ErrUnavailable
}
func (tooManyFills) RetryAfter() time.Duration { return time.Second }

func TestErrorMapping(t *testing.T) {
	t.Parallel()
	const secret = "/var/lib/lifeboat/blobs/sha256/ab: input/output error from https://user:pw@registry.internal"
	dgst := digest.FromString("x").String()
	routes := []struct {
		name, path string
		codes      map[int]string // code by status where it depends on the route
	}{
		{"manifest by tag", "/v2/library/alpine/manifests/latest", map[int]string{404: "MANIFEST_UNKNOWN", 400: "MANIFEST_INVALID"}},
		{"manifest by digest", "/v2/library/alpine/manifests/" + dgst, map[int]string{404: "MANIFEST_UNKNOWN", 400: "MANIFEST_INVALID"}},
		{"blob", "/v2/library/alpine/blobs/" + dgst, map[int]string{404: "BLOB_UNKNOWN", 400: "DIGEST_INVALID"}},
		{"tags", "/v2/library/alpine/tags/list", map[int]string{404: "NAME_UNKNOWN", 400: "NAME_INVALID"}},
		{"referrers", "/v2/library/alpine/referrers/" + dgst, map[int]string{404: "NAME_UNKNOWN", 400: "DIGEST_INVALID"}},
	}
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		code       string // when the same on every route
		retryAfter string
	}{
		{name: "not found", err: fmt.Errorf("upstream down and not cached: %w", errdefs.ErrNotFound), status: 404},
		{name: "invalid argument", err: fmt.Errorf("bad: %w", errdefs.ErrInvalidArgument), status: 400},
		{name: "failed verification", err: fmt.Errorf("digest mismatch: %w", errdefs.ErrFailedPrecondition), status: 502, code: "UNKNOWN"},
		{name: "unavailable", err: fmt.Errorf("shutting down: %w", errdefs.ErrUnavailable), status: 503, code: "UNAVAILABLE"},
		{name: "unavailable with retry after", err: fmt.Errorf("wrapped: %w", retryLater{1500 * time.Millisecond}), status: 503, code: "UNAVAILABLE", retryAfter: "2"},
		{name: "too many fills", err: fmt.Errorf("blob: %w", tooManyFills{}), status: 429, code: "TOOMANYREQUESTS", retryAfter: "1"},
		{name: "not implemented is internal", err: fmt.Errorf("manifest: %w", errdefs.ErrNotImplemented), status: 500, code: "UNKNOWN"},
		{name: "unclassified is internal", err: errors.New(secret), status: 500, code: "UNKNOWN"},
	} {
		for _, rt := range routes {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				t.Run(fmt.Sprintf("%s %s %s", tc.name, rt.name, method), func(t *testing.T) {
					t.Parallel()
					srv := newServer(t, errBackend{err: tc.err}, Options{})
					resp, body := do(t, srv, method, rt.path, nil)
					code := tc.code
					if code == "" {
						code = rt.codes[tc.status]
					}
					checkError(t, resp, body, tc.status, code)
					if got := resp.Header.Get("Retry-After"); got != tc.retryAfter {
						t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
					}
					if bytes.Contains(body, []byte("registry.internal")) || bytes.Contains(body, []byte("/var/lib")) {
						t.Errorf("the answer leaks the backend's error: %s", body)
					}
				})
			}
		}
	}

	t.Run("reader fails to open", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, errBackend{err: fmt.Errorf("gone: %w", errdefs.ErrNotFound), openBlobs: true, size: 10}, Options{})
		resp, body := do(t, srv, http.MethodGet, "/v2/library/alpine/blobs/"+dgst, nil)
		checkError(t, resp, body, 404, "BLOB_UNKNOWN")
		if resp.Header.Get("Docker-Content-Digest") != "" || resp.Header.Get("Accept-Ranges") != "" {
			t.Errorf("error answer carries blob headers: %v", resp.Header)
		}
	})

	t.Run("detail names the request", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, errBackend{err: errdefs.ErrNotFound}, Options{})
		_, body := do(t, srv, http.MethodGet, "/v2/alpine/manifests/3.20", nil)
		var e ociError
		if err := json.Unmarshal(body, &e); err != nil {
			t.Fatal(err)
		}
		var detail map[string]string
		if err := json.Unmarshal(e.Errors[0].Detail, &detail); err != nil || detail["name"] != "alpine" || detail["reference"] != "3.20" {
			t.Errorf("detail %s (%v)", e.Errors[0].Detail, err)
		}
	})
}

func TestBrokenStreamAborts(t *testing.T) {
	t.Parallel()
	const size = 4 << 20
	for _, tc := range []struct {
		name     string
		breakAt  int64
		rangeHdr string
		status   int
	}{
		{name: "half way", breakAt: size / 2, status: 200},
		{name: "one byte short", breakAt: size - 1, status: 200},
		{name: "range", breakAt: size / 2, rangeHdr: "bytes=1000-", status: 206},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newMemBackend()
			img := b.addImage("docker.io", "library/alpine", "3.20", size)
			b.repo("docker.io", "library/alpine").breakAt[img.layer.Digest] = tc.breakAt
			answers := make(chan Answer, 1)
			srv := newServer(t, b, Options{Observe: func(a Answer) { answers <- a }})

			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/v2/library/alpine/blobs/"+img.layer.Digest.String(), nil)
			if tc.rangeHdr != "" {
				req.Header.Set("Range", tc.rangeHdr)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got, err := io.ReadAll(resp.Body)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("reading a broken blob: err %v after %d of %d bytes, want io.ErrUnexpectedEOF", err, len(got), resp.ContentLength)
			}
			if int64(len(got)) >= resp.ContentLength {
				t.Errorf("read %d bytes of %d", len(got), resp.ContentLength)
			}
			if a := <-answers; !a.Aborted || a.Status != tc.status {
				t.Errorf("answer %+v, want aborted with %d", a, tc.status)
			}
		})
	}
}

func TestSourceFailingAtOnceGetsAnErrorAnswer(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", 1000)
	b.repo("docker.io", "library/alpine").breakAt[img.layer.Digest] = 0
	srv := newServer(t, b, Options{})
	// Nothing was sent yet, so the failure can still be answered cleanly.
	resp, body := do(t, srv, http.MethodGet, "/v2/library/alpine/blobs/"+img.layer.Digest.String(), nil)
	checkError(t, resp, body, http.StatusInternalServerError, "UNKNOWN")
	if resp.Header.Get("Docker-Content-Digest") != "" {
		t.Errorf("error answer carries blob headers: %v", resp.Header)
	}
}

// shortBackend's blobs end cleanly before their size: a backend bug the handler must not pass
// on as a complete answer.
type shortBackend struct{ *memBackend }

func (b shortBackend) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*resolver.Blob, error) {
	m, err := b.open(registry, repository, dgst)
	if err != nil {
		return nil, err
	}
	return m.blob(func(off, length int64) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(make([]byte, length/2))), nil
	}), nil
}

func TestShortSourceAborts(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", 1<<20)
	srv := newServer(t, shortBackend{b}, Options{})
	resp, err := srv.Client().Get(srv.URL + "/v2/library/alpine/blobs/" + img.layer.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("err %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestObserve(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	img := b.addImage("ghcr.io", "org/app", "v1", 5000)
	b.repo("ghcr.io", "org/app").status = resolver.Miss
	answers := make(chan Answer, 10)
	srv := newServer(t, b, Options{Observe: func(a Answer) { answers <- a }})

	do(t, srv, http.MethodGet, "/v2/ghcr.io/org/app/blobs/"+img.layer.Digest.String(), http.Header{"Range": {"bytes=1000-"}})
	a := <-answers
	if a.Method != "GET" || a.Route != "blob" || a.Registry != "ghcr.io" || a.Repository != "org/app" ||
		a.Status != 206 || a.Cache != resolver.Miss || a.Bytes != 4000 || a.Aborted || a.Duration <= 0 {
		t.Errorf("answer %+v", a)
	}

	// A manifest by tag is a tag resolution; by digest, a manifest.
	for ref, want := range map[string]string{"v1": "tag", img.manifest.Digest.String(): "manifest"} {
		do(t, srv, http.MethodHead, "/v2/ghcr.io/org/app/manifests/"+ref, nil)
		if a = <-answers; a.Route != want || a.Status != 200 {
			t.Errorf("HEAD manifests/%s: route %q status %d, want %q 200", ref, a.Route, a.Status, want)
		}
	}

	do(t, srv, http.MethodGet, "/v2/Bad/manifests/v1", nil)
	a = <-answers
	if a.Route != "manifest" || a.Status != 400 || a.Registry != "" {
		t.Errorf("answer %+v", a)
	}
}

// fileBackend serves blobs from files, as the cache does: its readers are *os.File, which the
// handler sends with sendfile.
type fileBackend struct {
	*memBackend
	dir string
}

func (b fileBackend) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*resolver.Blob, error) {
	return b.fileBlob(registry, repository, dgst, func(f *os.File, off int64) (io.ReadCloser, error) {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	})
}

// fileBlob opens a blob whose bytes are written to a file of their own; its reader from off is
// reader over the file, opened anew for each.
func (b fileBackend) fileBlob(registry, repository string, dgst digest.Digest, reader func(f *os.File, off int64) (io.ReadCloser, error)) (*resolver.Blob, error) {
	m, err := b.open(registry, repository, dgst)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(b.dir, "blob")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Write(m.data); err != nil {
		return nil, err
	}
	path := f.Name()
	return m.blob(func(off, length int64) (io.ReadCloser, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		return reader(f, off)
	}), nil
}

// fileBackedBackend is a fileBackend whose readers offer the whole blob's file
// (cache.FileBacked), as the resolver's readers of cached blobs do.
type fileBackedBackend struct{ fileBackend }

// wholeFileReader offers the whole blob's file, and fails every Read: only the file delivers.
type wholeFileReader struct{ f *os.File }

func (b fileBackedBackend) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*resolver.Blob, error) {
	return b.fileBlob(registry, repository, dgst, func(f *os.File, _ int64) (io.ReadCloser, error) {
		return wholeFileReader{f}, nil
	})
}

var _ cache.FileBacked = wholeFileReader{}

func (r wholeFileReader) File() *os.File { return r.f }
func (r wholeFileReader) Read([]byte) (int, error) {
	return 0, errors.New("read the file, not the reader")
}
func (r wholeFileReader) Close() error { return r.f.Close() }

func TestFileBlob(t *testing.T) {
	t.Parallel()
	testFileBlob(t, func(b *memBackend) Backend { return fileBackend{b, t.TempDir()} })
}

// TestFileBackedBlob sends blobs, and ranges of them, from the file a reader offers.
func TestFileBackedBlob(t *testing.T) {
	t.Parallel()
	testFileBlob(t, func(b *memBackend) Backend { return fileBackedBackend{fileBackend{b, t.TempDir()}} })
}

func testFileBlob(t *testing.T, backend func(*memBackend) Backend) {
	const size = 3 << 20
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", size)
	layer := img.blobs[img.layer.Digest]
	srv := newServer(t, backend(b), Options{})
	path := "/v2/library/alpine/blobs/" + img.layer.Digest.String()

	for _, tc := range []struct {
		name, rangeHdr string
		from, to       int
	}{
		{"whole", "", 0, size},
		{"from offset", "bytes=1000-", 1000, size},
		{"closed range", "bytes=1000-1999999", 1000, 2000000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var hdr http.Header
			if tc.rangeHdr != "" {
				hdr = http.Header{"Range": {tc.rangeHdr}}
			}
			_, body := do(t, srv, http.MethodGet, path, hdr)
			if !bytes.Equal(body, layer[tc.from:tc.to]) {
				t.Errorf("got %d bytes, not layer[%d:%d]", len(body), tc.from, tc.to)
			}
		})
	}
}
