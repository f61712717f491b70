package mirror

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/lifeboat-dev/lifeboat/internal/oci/ocitest"
)

// FuzzParseRange interprets arbitrary Range headers for blobs of arbitrary sizes: a range it
// accepts lies inside the blob and is not empty.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-", "bytes=10-19", "bytes=-5", "bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=99999999999999999999-", "bytes= 1 - 2", "BYTES=1-"} {
		f.Add(s, int64(100))
		f.Add(s, int64(0))
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 0 {
			size = -(size + 1)
		}
		r, partial, unsatisfiable := parseRange(header, size)
		if partial && unsatisfiable {
			t.Fatalf("%q of %d: both partial and unsatisfiable", header, size)
		}
		if partial && (r.off < 0 || r.length < 1 || r.off >= size || r.length > size-r.off) {
			t.Fatalf("%q of %d: range %+v outside the blob", header, size, r)
		}
	})
}

// FuzzHandler sends arbitrary GET and HEAD requests to the handler over an in-memory backend:
// it must never panic, never answer 5xx (the backend has no faults), and never make a backend
// call the backend refuses as invalid.
func FuzzHandler(f *testing.F) {
	for _, s := range ocitest.Targets {
		f.Add(s, "", false)
		f.Add(s, "bytes=1-", true)
	}
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", 100)
	b.addImage("ghcr.io", "org/app", "v1", 10)
	b.addReferrer("docker.io", "library/alpine", img.manifest, "application/spdx+json")
	f.Add("/v2/library/alpine/blobs/"+img.layer.Digest.String(), "bytes=10-20", false)
	f.Add("/v2/alpine/manifests/"+img.manifest.Digest.String(), "", true)
	f.Add("/v2/alpine/referrers/"+img.manifest.Digest.String()+"?artifactType=application/spdx%2Bjson", "", false)
	h := New(b, Options{})

	f.Fuzz(func(t *testing.T, target, rangeHdr string, head bool) {
		u, err := url.ParseRequestURI(target)
		if err != nil || !strings.HasPrefix(target, "/") {
			return // net/http refuses such a request line itself
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		r := &http.Request{Method: method, URL: u, RequestURI: target, Header: http.Header{}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
		r = r.WithContext(t.Context())
		if rangeHdr != "" {
			r.Header.Set("Range", rangeHdr)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 || w.Code < 200 {
			t.Fatalf("%s %q: status %d: %s", method, target, w.Code, w.Body)
		}
		if n := b.invalid.Load(); n != 0 {
			t.Fatalf("%s %q: the backend was called with invalid arguments", method, target)
		}
		if cl := w.Header().Get("Content-Length"); !head && cl != "" && cl != strconv.Itoa(w.Body.Len()) {
			t.Fatalf("%s %q: Content-Length %s for %d bytes", method, target, cl, w.Body.Len())
		}
	})
}
