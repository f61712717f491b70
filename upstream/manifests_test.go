package upstream

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

func TestManifests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name      string
		wraps     []func(http.Handler) http.Handler
		reference func() string
		want      func() ocispec.Descriptor
		body      func() []byte // nil: don't check
		gets      int           // manifest GETs HeadManifest makes
	}{
		{name: "image by tag", reference: func() string { return f.tag }, want: func() ocispec.Descriptor { return f.desc }, body: func() []byte { return f.manifest }},
		{name: "image by digest", reference: func() string { return f.desc.Digest.String() }, want: func() ocispec.Descriptor { return f.desc }, body: func() []byte { return f.manifest }},
		{name: "index by tag", reference: func() string { return f.indexTag }, want: func() ocispec.Descriptor { return f.indexDesc }},
		{
			name:      "HEAD without Docker-Content-Digest falls back to GET",
			wraps:     []func(http.Handler) http.Handler{only(http.MethodHead, "manifests", editHeaders(func(_ *http.Request, h http.Header) { h.Del("Docker-Content-Digest") }))},
			reference: func() string { return f.tag }, want: func() ocispec.Descriptor { return f.desc }, gets: 1,
		},
		{
			name:      "HEAD without Content-Length falls back to GET",
			wraps:     []func(http.Handler) http.Handler{only(http.MethodHead, "manifests", editHeaders(func(_ *http.Request, h http.Header) { h.Del("Content-Length") }))},
			reference: func() string { return f.tag }, want: func() ocispec.Descriptor { return f.desc }, gets: 1,
		},
		{
			name:      "HEAD not allowed falls back to GET",
			wraps:     []func(http.Handler) http.Handler{only(http.MethodHead, "manifests", answer(http.StatusMethodNotAllowed, ""))},
			reference: func() string { return f.desc.Digest.String() }, want: func() ocispec.Descriptor { return f.desc }, gets: 1,
		},
		{
			name: "HEAD with another digest for a digest reference falls back to GET",
			wraps: []func(http.Handler) http.Handler{only(http.MethodHead, "manifests", editHeaders(func(_ *http.Request, h http.Header) {
				h.Set("Docker-Content-Digest", digest.FromString("other").String())
			}))},
			reference: func() string { return f.desc.Digest.String() }, want: func() ocispec.Descriptor { return f.desc }, gets: 1,
		},
		{
			name: "generic Content-Type: media type from the body",
			wraps: []func(http.Handler) http.Handler{only("", "manifests", editHeaders(func(_ *http.Request, h http.Header) {
				h.Set("Content-Type", "application/octet-stream")
			}))},
			reference: func() string { return f.tag }, want: func() ocispec.Descriptor { return f.desc }, body: func() []byte { return f.manifest }, gets: 1,
		},
		{
			name: "Content-Type with parameters",
			wraps: []func(http.Handler) http.Handler{only("", "manifests", editHeaders(func(_ *http.Request, h http.Header) {
				h.Set("Content-Type", h.Get("Content-Type")+"; charset=utf-8")
			}))},
			reference: func() string { return f.tag }, want: func() ocispec.Descriptor { return f.desc }, body: func() []byte { return f.manifest },
		},
		{
			name: "GET with a wrong Docker-Content-Digest: the body decides",
			wraps: []func(http.Handler) http.Handler{only(http.MethodGet, "manifests", editHeaders(func(_ *http.Request, h http.Header) {
				h.Set("Docker-Content-Digest", digest.FromString("other").String())
			}))},
			reference: func() string { return f.tag }, want: func() ocispec.Descriptor { return f.desc }, body: func() []byte { return f.manifest },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var count counter
			srv := f.serve(t, append([]func(http.Handler) http.Handler{count.wrap}, tt.wraps...)...)
			c := newClient(t, srv.URL, Options{})
			want := tt.want()
			ctx, _ := debugCtx(t) // keeps the mismatch warning out of the test output

			desc, _, err := c.HeadManifest(ctx, f.repo, tt.reference())
			must(t, err)
			if !sameDesc(desc, want) {
				t.Errorf("HeadManifest = %+v, want %+v", desc, want)
			}
			if n := count.get("GET manifests"); n != tt.gets {
				t.Errorf("HeadManifest made %d GETs, want %d", n, tt.gets)
			}

			desc, body, err := c.GetManifest(ctx, f.repo, tt.reference())
			must(t, err)
			if !sameDesc(desc, want) {
				t.Errorf("GetManifest = %+v, want %+v", desc, want)
			}
			if digest.FromBytes(body) != want.Digest {
				t.Errorf("GetManifest body has digest %s, want %s", digest.FromBytes(body), want.Digest)
			}
			if tt.body != nil && !bytes.Equal(body, tt.body()) {
				t.Error("GetManifest body differs from the stored manifest")
			}
		})
	}
}

func sameDesc(a, b ocispec.Descriptor) bool {
	return a.MediaType == b.MediaType && a.Digest == b.Digest && a.Size == b.Size
}

func TestManifestVerification(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	big := []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `","annotations":{"x":"` + strings.Repeat("a", oci.MaxManifestSize) + `"}}`)
	f.putManifestIn(t, f.repo, "big", ocispec.MediaTypeImageManifest, big)
	noType := []byte(`{"schemaVersion":2,"whatever":true}`)
	f.putManifestIn(t, f.repo, "notype", "application/octet-stream", noType)
	untyped := []byte(`{"schemaVersion":2,"manifests":[]}`)
	f.putManifestIn(t, f.repo, "untyped-index", "", untyped)

	// swap serves the index's body for any manifest GET, under the requested reference.
	swap := only(http.MethodGet, "manifests", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/v2/" + f.repo + "/manifests/" + f.indexTag
			next.ServeHTTP(w, r2)
		})
	})
	chunked := only(http.MethodGet, "manifests", editHeaders(func(_ *http.Request, h http.Header) { h.Del("Content-Length") }))

	tests := []struct {
		name      string
		wraps     []func(http.Handler) http.Handler
		reference string
		head      bool
		want      error
		wantText  string
		wantType  string
	}{
		{name: "body does not match the digest reference", wraps: []func(http.Handler) http.Handler{swap}, reference: f.desc.Digest.String(), want: errdefs.ErrFailedPrecondition, wantText: "digest"},
		{name: "HEAD fallback verifies too", wraps: []func(http.Handler) http.Handler{swap, only(http.MethodHead, "manifests", answer(http.StatusMethodNotAllowed, ""))}, reference: f.desc.Digest.String(), head: true, want: errdefs.ErrFailedPrecondition},
		{name: "too large", reference: "big", want: errdefs.ErrFailedPrecondition, wantText: "too large"},
		{name: "too large without Content-Length", wraps: []func(http.Handler) http.Handler{chunked}, reference: "big", want: errdefs.ErrFailedPrecondition, wantText: "too large"},
		{name: "too large by HEAD", reference: "big", head: true, want: errdefs.ErrFailedPrecondition, wantText: "too large"},
		{name: "no media type anywhere", reference: "notype", want: errdefs.ErrFailedPrecondition, wantText: "media type"},
		{name: "index recognized by its shape", reference: "untyped-index", wantType: ocispec.MediaTypeImageIndex},
		{name: "truncated body", wraps: []func(http.Handler) http.Handler{only(http.MethodGet, "manifests", truncate)}, reference: f.tag, want: errdefs.ErrUnavailable},
		{name: "unknown tag", reference: "nope", want: errdefs.ErrNotFound, wantText: "MANIFEST_UNKNOWN"},
		{name: "unknown digest", reference: digest.FromString("nope").String(), want: errdefs.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, f.serve(t, tt.wraps...).URL, Options{})
			var (
				desc ocispec.Descriptor
				err  error
			)
			if tt.head {
				desc, _, err = c.HeadManifest(t.Context(), f.repo, tt.reference)
			} else {
				desc, _, err = c.GetManifest(t.Context(), f.repo, tt.reference)
			}
			checkErr(t, err, tt.want, errdefs.IsUnavailable(tt.want))
			if err != nil && !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("err = %v, want it to mention %q", err, tt.wantText)
			}
			if tt.wantType != "" && desc.MediaType != tt.wantType {
				t.Errorf("media type = %q, want %q", desc.MediaType, tt.wantType)
			}
		})
	}
}

// TestManifestHeadDate: HeadManifest reports the registry's Date header, also when it falls
// back to a GET; none, or one that does not parse, is the zero time.
func TestManifestHeadDate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	date := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	setDate := func(v string) func(http.Handler) http.Handler {
		return editHeaders(func(_ *http.Request, h http.Header) {
			if v == "" {
				h["Date"] = nil
			} else {
				h.Set("Date", v)
			}
		})
	}
	for _, tt := range []struct {
		name  string
		wraps []func(http.Handler) http.Handler
		want  time.Time
	}{
		{"HEAD", []func(http.Handler) http.Handler{setDate(date.Format(http.TimeFormat))}, date},
		{"GET after an inconclusive HEAD", []func(http.Handler) http.Handler{
			setDate(date.Format(http.TimeFormat)),
			only(http.MethodHead, "manifests", editHeaders(func(_ *http.Request, h http.Header) { h.Del("Docker-Content-Digest") })),
		}, date},
		{"no Date", []func(http.Handler) http.Handler{setDate("")}, time.Time{}},
		{"a Date that does not parse", []func(http.Handler) http.Handler{setDate("yesterday")}, time.Time{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, f.serve(t, tt.wraps...).URL, Options{})
			desc, got, err := c.HeadManifest(t.Context(), f.repo, f.tag)
			if err != nil || desc.Digest != f.desc.Digest || !got.Equal(tt.want) {
				t.Fatalf("HeadManifest = %v, date %v, %v; want date %v", desc.Digest, got, err, tt.want)
			}
		})
	}
}
