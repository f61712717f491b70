package mirror

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// fuzzSeeds are request targets (path and query) for the parsing fuzz targets.
var fuzzSeeds = []string{
	"/v2/",
	"/v2/library/alpine/manifests/3.20",
	"/v2/alpine/manifests/latest?ns=docker.io",
	"/v2/org/app/manifests/v1?ns=ghcr.io",
	"/v2/ghcr.io/org/app/manifests/v1",
	"/v2/ghcr.io/org/app/manifests/v1?ns=ghcr.io",
	"/v2/localhost:5000/team/app/blobs/sha256:" + strings.Repeat("a", 64),
	"/v2/[::1]:5000/app/manifests/v1",
	"/v2/library/alpine/manifests/sha512:" + strings.Repeat("0", 128),
	"/v2/library/alpine/blobs/sha256:" + strings.Repeat("A", 64),
	"/v2/library/alpine/tags/list?n=2&last=b",
	"/v2/library/alpine/tags/list?n=-1",
	"/v2/library/alpine/referrers/sha256:" + strings.Repeat("b", 64) + "?artifactType=application/spdx%2Bjson",
	"/v2/../etc/manifests/latest",
	"/v2/%2e%2e/etc/manifests/latest",
	"/v2/library%2Falpine/manifests/latest",
	"/v2/library//alpine/manifests/latest",
	"/v2/a.b/a.b/c/manifests/x?ns=a.b",
	"/v2/index.docker.io/alpine/manifests/x",
	"/v2/x/manifests/y?ns=%zz",
}

// Run a target with, for example:
//
//	go test -run='^$' -fuzz='^FuzzParsePath$' -fuzztime=30s -fuzzminimizetime=2s ./mirror/
//
// -fuzzminimizetime matters: by default each new interesting input is minimized for up to 60 s,
// during which the search stalls (zero execs per second) on inputs of a few hundred bytes.

// FuzzParsePath parses arbitrary request targets: it must never panic, refuse only with a 4xx,
// and what it accepts must re-validate and survive a round trip through a canonical path.
func FuzzParsePath(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		path, query, _ := strings.Cut(target, "?")
		req, e := parseRequest(path, query, "docker.io")
		if e != nil {
			if e.status < 400 || e.status > 499 || e.code == "" || e.message == "" {
				t.Fatalf("%q: refused with %d %s %q", target, e.status, e.code, e.message)
			}
			return
		}
		checkRequest(t, target, req)
		if req.route == routePing {
			return
		}

		// The same request in both canonical forms parses to the same thing.
		suffix := routeSuffix(req)
		forms := []string{"/v2/" + req.registry + "/" + req.repository + suffix}
		if first, _, _ := strings.Cut(req.repository, "/"); first != req.registry {
			// (A repository named like its own registry is read as an override_path mirror path.)
			q := "ns=" + url.QueryEscape(req.registry)
			if strings.Contains(suffix, "?") {
				forms = append(forms, "/v2/"+req.repository+suffix+"&"+q)
			} else {
				forms = append(forms, "/v2/"+req.repository+suffix+"?"+q)
			}
		}
		for _, form := range forms {
			p, q, _ := strings.Cut(form, "?")
			if len(p) > maxPathLength {
				continue
			}
			again, e := parseRequest(p, q, "docker.io")
			if e != nil {
				t.Fatalf("%q parsed, its canonical form %q did not: %s %s", target, form, e.code, e.message)
			}
			if again.registry != req.registry || again.repository != req.repository || again.reference != req.reference ||
				again.digest != req.digest || again.n != req.n || again.last != req.last || again.artifactType != req.artifactType {
				t.Fatalf("%q and its canonical form %q differ:\n%+v\n%+v", target, form, req, again)
			}
		}
	})
}

// checkRequest checks that an accepted request holds only valid values.
func checkRequest(t *testing.T, target string, req request) {
	t.Helper()
	fail := func(what string) { t.Fatalf("%q accepted with %s: %+v", target, what, req) }
	if req.route == routeUnknown {
		fail("no route")
	}
	if req.route == routePing {
		if req.registry != "" || req.repository != "" {
			fail("a name on a ping")
		}
		return
	}
	if h, ok := normalizeHost(req.registry); !ok || h != req.registry {
		fail("an invalid registry")
	}
	if req.repository == "" || len(req.repository) > maxRepositoryLength {
		fail("a repository of a bad length")
	}
	for _, c := range strings.Split(req.repository, "/") {
		if !nameComponent.MatchString(c) || c == ".." {
			fail("an invalid repository component")
		}
	}
	if req.registry == "docker.io" && !strings.Contains(req.repository, "/") {
		fail("a docker.io repository without its namespace")
	}
	if req.digest != "" {
		if err := req.digest.Validate(); err != nil || (req.digest.Algorithm() != digest.SHA256 && req.digest.Algorithm() != digest.SHA512) {
			fail("an invalid digest")
		}
	}
	switch req.route {
	case routeManifest:
		if req.digest != "" && req.reference != req.digest.String() {
			fail("a digest reference that is not the digest")
		}
		if req.digest == "" && !tagPattern.MatchString(req.reference) {
			fail("an invalid tag")
		}
	case routeBlob, routeReferrers:
		if req.digest == "" {
			fail("no digest")
		}
	}
	if req.artifactType != "" && !mediaTypePattern.MatchString(req.artifactType) {
		fail("an invalid artifactType")
	}
	if req.n < -1 || req.n > maxTagsPage || (req.last != "" && !tagPattern.MatchString(req.last)) {
		fail("invalid paging")
	}
}

// routeSuffix is the part of a request's path after its name, with its own query.
func routeSuffix(req request) string {
	switch req.route {
	case routeManifest:
		return "/manifests/" + req.reference
	case routeBlob:
		return "/blobs/" + req.digest.String()
	case routeReferrers:
		if req.artifactType != "" {
			return "/referrers/" + req.digest.String() + "?artifactType=" + url.QueryEscape(req.artifactType)
		}
		return "/referrers/" + req.digest.String()
	case routeTags:
		q := url.Values{}
		if req.n >= 0 {
			q.Set("n", strconv.Itoa(req.n))
		}
		if req.last != "" {
			q.Set("last", req.last)
		}
		if len(q) == 0 {
			return "/tags/list"
		}
		return "/tags/list?" + q.Encode()
	}
	return ""
}

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
	for _, s := range fuzzSeeds {
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
