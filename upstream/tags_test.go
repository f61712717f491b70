package upstream

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// paginate makes the registry answer tag lists two at a time with a Link to the next page
// (ggcr's registry supports n and last but sends no Link). base prefixes the link: "" for a
// relative one.
func paginate(base func() string) func(http.Handler) http.Handler {
	return only(http.MethodGet, "tags", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if q.Get("n") == "" {
				q.Set("n", "2")
			}
			r2 := r.Clone(r.Context())
			r2.URL.RawQuery = q.Encode()
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r2)
			var list struct {
				Tags []string `json:"tags"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &list); err == nil && len(list.Tags) == 2 {
				nq := url.Values{"n": {"2"}, "last": {list.Tags[1]}}
				w.Header().Add("Link", `<`+base()+r.URL.Path+"?"+nq.Encode()+`>; rel="next"`)
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
		})
	})
}

func TestTags(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.putTags(t, "t1", "t2", "t3")
	all := []string{"multi", "t1", "t2", "t3", "v1"}
	relative := func() string { return "" }
	endless := only(http.MethodGet, "tags", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", `<`+r.URL.Path+`?page=more>; rel="next"`)
			next.ServeHTTP(w, r)
		})
	})

	tests := []struct {
		name  string
		wraps func(self func() string) []func(http.Handler) http.Handler
		repo  string
		want  []string
		pages int
		err   error
	}{
		{name: "one page", want: all, pages: 1},
		{name: "relative next links", wraps: func(func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{paginate(relative)}
		}, want: all, pages: 3},
		{name: "absolute next links", wraps: func(self func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{paginate(self)}
		}, want: all, pages: 3},
		{name: "next link to another host", wraps: func(func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{paginate(func() string { return "http://elsewhere.example" })}
		}, pages: 1, err: errdefs.ErrFailedPrecondition},
		{name: "pages without end", wraps: func(func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{endless}
		}, pages: MaxTagPages, err: errdefs.ErrFailedPrecondition},
		{name: "pages behind basic auth", wraps: func(func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{basicAuth(testUser, testPassword), paginate(relative)}
		}, want: all, pages: 4}, // one 401, then three pages
		{name: "null tags", wraps: func(func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{only(http.MethodGet, "tags", answer(http.StatusOK, `{"name":"x","tags":null}`))}
		}, want: []string{}, pages: 0},
		{name: "not JSON", wraps: func(func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{only(http.MethodGet, "tags", answer(http.StatusOK, `<html>`))}
		}, err: errdefs.ErrFailedPrecondition},
		{name: "truncated", wraps: func(func() string) []func(http.Handler) http.Handler {
			return []func(http.Handler) http.Handler{only(http.MethodGet, "tags", truncate)}
		}, pages: 1, err: errdefs.ErrUnavailable},
		{name: "unknown repository", repo: "no/such", pages: 1, err: errdefs.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var count counter
			var srv *httptest.Server
			self := func() string { return srv.URL }
			wraps := []func(http.Handler) http.Handler{count.wrap}
			if tt.wraps != nil {
				wraps = append(wraps, tt.wraps(self)...)
			}
			srv = f.serve(t, wraps...)
			c := newClient(t, srv.URL, Options{Username: testUser, Password: testPassword})
			repo := tt.repo
			if repo == "" {
				repo = f.repo
			}
			tags, err := c.Tags(t.Context(), repo)
			checkErr(t, err, tt.err, errdefs.IsUnavailable(tt.err))
			if tt.err == nil && !slices.Equal(tags, tt.want) {
				t.Errorf("Tags = %q, want %q", tags, tt.want)
			}
			if tt.pages > 0 && count.get("GET tags") != tt.pages {
				t.Errorf("%d tag list requests, want %d", count.get("GET tags"), tt.pages)
			}
		})
	}
}

func TestSplitLinks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		value string
		want  []link
	}{
		{name: "next", value: `</v2/a/tags/list?n=2&last=b>; rel="next"`, want: []link{{target: "/v2/a/tags/list?n=2&last=b", next: true}}},
		{name: "unquoted", value: `</x>; rel=next`, want: []link{{target: "/x", next: true}}},
		{name: "several rels", value: `</x>; rel="prev next"`, want: []link{{target: "/x", next: true}}},
		{name: "case", value: `</x>; REL="Next"`, want: []link{{target: "/x", next: true}}},
		{name: "two links", value: `</p>; rel="prev", </n>; rel="next"`, want: []link{{target: "/p"}, {target: "/n", next: true}}},
		{name: "other params", value: `</x>; type="a"; rel="next"; title="t"`, want: []link{{target: "/x", next: true}}},
		{name: "not next", value: `</x>; rel="nextish"`, want: []link{{target: "/x"}}},
		{name: "no brackets", value: `/x; rel="next"`},
		{name: "unterminated", value: `</x; rel="next"`},
		{name: "empty", value: ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := splitLinks(tt.value); !slices.Equal(got, tt.want) {
				t.Errorf("splitLinks(%q) = %+v, want %+v", tt.value, got, tt.want)
			}
		})
	}
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	f := newFixture(t, registry.WithReferrersSupport(true))
	// An artifact whose subject is the fixture's image.
	artifact, err := json.Marshal(ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.sbom",
		Config:       ocispec.DescriptorEmptyJSON,
		Layers:       []ocispec.Descriptor{ocispec.DescriptorEmptyJSON},
		Subject:      &f.desc,
	})
	must(t, err)
	f.putManifestIn(t, f.repo, digest.FromBytes(artifact).String(), ocispec.MediaTypeImageManifest, artifact)
	plain := newFixture(t)

	var (
		mu    sync.Mutex
		query string
	)
	record := only(http.MethodGet, "referrers", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			query = r.URL.RawQuery
			mu.Unlock()
			next.ServeHTTP(w, r)
		})
	})

	t.Run("referrers API", func(t *testing.T) {
		c := newClient(t, f.serve(t, record).URL, Options{})
		body, mt, err := c.Referrers(t.Context(), f.repo, f.desc.Digest, "application/vnd.example.sbom")
		must(t, err)
		if mt != ocispec.MediaTypeImageIndex {
			t.Errorf("media type = %q", mt)
		}
		var idx ocispec.Index
		must(t, json.Unmarshal(body, &idx))
		if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digest.FromBytes(artifact) {
			t.Errorf("referrers = %+v, want the artifact", idx.Manifests)
		}
		mu.Lock()
		defer mu.Unlock()
		if q, _ := url.ParseQuery(query); q.Get("artifactType") != "application/vnd.example.sbom" {
			t.Errorf("query = %q, want artifactType", query)
		}
		if !bytes.Contains(body, []byte(digest.FromBytes(artifact))) {
			t.Error("body is not the registry's")
		}
	})
	t.Run("no referrers API", func(t *testing.T) {
		c := newClient(t, plain.serve(t).URL, Options{})
		_, _, err := c.Referrers(t.Context(), plain.repo, plain.desc.Digest, "")
		checkErr(t, err, errdefs.ErrNotFound, false)
	})
}
