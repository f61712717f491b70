package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/internal/oci/ocitest"
	"github.com/lifeboat-dev/lifeboat/resolver"
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
// call the backend refuses as invalid. It sends each to a handler over a real resolver too,
// which mirrors docker.io and ghcr.io only (their upstreams are in memory): a request that
// names any other registry is answered 404 NAME_UNKNOWN, and no upstream client is ever made
// or asked anything for a registry that is not mirrored.
func FuzzHandler(f *testing.F) {
	for _, s := range ocitest.Targets {
		f.Add(s, "", false)
		f.Add(s, "bytes=1-", true)
	}
	for _, s := range []string{
		"/v2/127.0.0.1:1/x/manifests/latest",
		"/v2/x/manifests/latest?ns=127.0.0.1:1",
		"/v2/evil.example/x/blobs/sha256:" + strings.Repeat("c", 64),
		"/v2/x/tags/list?ns=localhost",
		"/v2/[::1]:5000/x/referrers/sha256:" + strings.Repeat("d", 64),
		"/v2/quay.io/x/manifests/sha256:" + strings.Repeat("e", 64),
	} {
		f.Add(s, "", false)
	}
	mirrored, contact := newMirroredOnly(f, "docker.io", "ghcr.io")
	b := newMemBackend()
	img := b.addImage("docker.io", "library/alpine", "3.20", 100)
	b.addImage("ghcr.io", "org/app", "v1", 10)
	b.addReferrer("docker.io", "library/alpine", img.manifest, "application/spdx+json")
	f.Add("/v2/library/alpine/blobs/"+img.layer.Digest.String(), "bytes=10-20", false)
	f.Add("/v2/alpine/manifests/"+img.manifest.Digest.String(), "", true)
	f.Add("/v2/alpine/referrers/"+img.manifest.Digest.String()+"?artifactType=application/spdx%2Bjson", "", false)
	h := newHandler(f, b, Options{})

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

		w = httptest.NewRecorder()
		mirrored.ServeHTTP(w, r)
		if n := contact.Load(); n != 0 {
			t.Fatalf("%s %q: %d contacts with registries that are not mirrored", method, target, n)
		}
		req, perr := oci.ParsePath(u.EscapedPath(), u.RawQuery, "docker.io")
		if perr != nil || req.Kind == oci.KindPing || req.Registry == "docker.io" || req.Registry == "ghcr.io" {
			return
		}
		if w.Code != http.StatusNotFound || (!head && !strings.Contains(w.Body.String(), `"NAME_UNKNOWN","message":"registry `+req.Registry+` is not mirrored by this lifeboat"`)) {
			t.Fatalf("%s %q: %d %s, want 404 NAME_UNKNOWN for registry %s", method, target, w.Code, w.Body, req.Registry)
		}
	})
}

// newMirroredOnly returns the mirror over a real resolver that mirrors the given registries,
// whose upstreams are in memory and know nothing, and a count of the upstream clients made, and
// requests made, for any other registry.
func newMirroredOnly(f *testing.F, registries ...string) (http.Handler, *atomic.Int64) {
	store, err := cache.Open(context.Background(), f.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { store.Close() })
	contact := &atomic.Int64{}
	urls := map[string][]string{}
	for _, reg := range registries {
		urls[reg] = []string{"https://" + reg + ".mem.test"}
	}
	res, err := resolver.New(context.Background(), store, resolver.Options{
		Endpoints: urls,
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			c := &emptyUpstream{endpoint: endpoint}
			if !slices.Contains(registries, registry) {
				c.contact = contact
				contact.Add(1)
			}
			return c, nil
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { res.Close() })
	return newHandler(f, res, Options{}), contact
}

// emptyUpstream is an upstream registry that holds nothing. Each request adds to contact, when
// it is set.
type emptyUpstream struct {
	endpoint string
	contact  *atomic.Int64
}

var errEmpty = fmt.Errorf("the in-memory upstream holds nothing: %w", errdefs.ErrNotFound)

func (c *emptyUpstream) asked() {
	if c.contact != nil {
		c.contact.Add(1)
	}
}

func (c *emptyUpstream) Endpoint() string { return c.endpoint }
func (c *emptyUpstream) Ping(context.Context) error {
	c.asked()
	return nil
}
func (c *emptyUpstream) HeadManifest(context.Context, string, string) (ocispec.Descriptor, time.Time, error) {
	c.asked()
	return ocispec.Descriptor{}, time.Time{}, errEmpty
}
func (c *emptyUpstream) GetManifest(context.Context, string, string) (ocispec.Descriptor, []byte, error) {
	c.asked()
	return ocispec.Descriptor{}, nil, errEmpty
}
func (c *emptyUpstream) GetBlob(context.Context, string, digest.Digest) (io.ReadCloser, int64, error) {
	c.asked()
	return nil, 0, errEmpty
}
func (c *emptyUpstream) HeadBlob(context.Context, string, digest.Digest) (int64, error) {
	c.asked()
	return 0, errEmpty
}
func (c *emptyUpstream) Tags(context.Context, string) ([]string, error) {
	c.asked()
	return nil, errEmpty
}
func (c *emptyUpstream) Referrers(context.Context, string, digest.Digest, string) ([]byte, string, error) {
	c.asked()
	return nil, "", errEmpty
}
