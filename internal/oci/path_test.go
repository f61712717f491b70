package oci

import (
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestSplitPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path string // after /v2/
		name string
		kind Kind
		arg  string
		ok   bool
	}{
		{"library/alpine/manifests/latest", "library/alpine", KindManifest, "latest", true},
		{"a/b/c/blobs/sha256:abc", "a/b/c", KindBlob, "sha256:abc", true},
		{"a/referrers/sha256:abc", "a", KindReferrers, "sha256:abc", true},
		{"a/tags/list", "a", KindTags, "list", true},
		{"a/blobs/uploads/", "a", KindUploads, "", true},
		{"a/blobs/uploads/1234", "a", KindUploads, "1234", true},
		{"a/blobs/uploads", "a", KindBlob, "uploads", true},
		{"x/manifests/manifests/latest", "x/manifests", KindManifest, "latest", true},
		{"x/blobs/blobs/d", "x/blobs", KindBlob, "d", true},
		{"/manifests/latest", "", KindManifest, "latest", true}, // an empty name is the caller's to refuse
		{"a/tags/all", "", KindUnknown, "", false},
		{"manifests/latest", "", KindUnknown, "", false},
		{"uploads/x/y", "", KindUnknown, "", false},
		{"a/other/latest", "", KindUnknown, "", false},
		{"_catalog", "", KindUnknown, "", false},
		{"", "", KindUnknown, "", false},
	} {
		name, kind, arg, ok := SplitPath(strings.Split(tc.path, "/"))
		if strings.Join(name, "/") != tc.name || kind != tc.kind || arg != tc.arg || ok != tc.ok {
			t.Errorf("SplitPath(%q) = %q %s %q %v, want %q %s %q %v", tc.path, name, kind, arg, ok, tc.name, tc.kind, tc.arg, tc.ok)
		}
	}
}

func TestParsePathRegistry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, target, def    string
		registry, repository string
		pathName, ns         string
	}{
		{name: "docker engine full name", target: "/v2/library/alpine/manifests/v1", registry: "docker.io", repository: "library/alpine", pathName: "library/alpine"},
		{name: "one component gets library/", target: "/v2/alpine/manifests/v1", registry: "docker.io", repository: "library/alpine", pathName: "alpine"},
		{name: "ns docker.io", target: "/v2/alpine/manifests/v1?ns=docker.io", registry: "docker.io", repository: "library/alpine", pathName: "alpine", ns: "docker.io"},
		{name: "ns index.docker.io", target: "/v2/alpine/manifests/v1?ns=index.docker.io", registry: "docker.io", repository: "library/alpine", pathName: "alpine", ns: "index.docker.io"},
		{name: "ns other registry", target: "/v2/org/app/manifests/v1?ns=ghcr.io", registry: "ghcr.io", repository: "org/app", pathName: "org/app", ns: "ghcr.io"},
		{name: "ns one component not prefixed", target: "/v2/app/manifests/v1?ns=quay.io", registry: "quay.io", repository: "app", pathName: "app", ns: "quay.io"},
		{name: "ns upper case", target: "/v2/org/app/manifests/v1?ns=GHCR.io", registry: "ghcr.io", repository: "org/app", pathName: "org/app", ns: "GHCR.io"},
		{name: "ns wins over a dotted first component", target: "/v2/my.org/app/manifests/v1?ns=quay.io", registry: "quay.io", repository: "my.org/app", pathName: "my.org/app", ns: "quay.io"},
		{name: "override_path: ns and host in the path", target: "/v2/ghcr.io/org/app/manifests/v1?ns=ghcr.io", registry: "ghcr.io", repository: "org/app", pathName: "ghcr.io/org/app", ns: "ghcr.io"},
		{name: "host in path", target: "/v2/ghcr.io/org/app/manifests/v1", registry: "ghcr.io", repository: "org/app", pathName: "ghcr.io/org/app"},
		{name: "host in path upper case", target: "/v2/GHCR.IO/org/app/manifests/v1", registry: "ghcr.io", repository: "org/app", pathName: "GHCR.IO/org/app"},
		{name: "localhost in path", target: "/v2/localhost/app/manifests/v1", registry: "localhost", repository: "app", pathName: "localhost/app"},
		{name: "ipv6 in path", target: "/v2/[::1]:5000/app/manifests/v1", registry: "[::1]:5000", repository: "app", pathName: "[::1]:5000/app"},
		{name: "docker.io in path", target: "/v2/docker.io/alpine/manifests/v1", registry: "docker.io", repository: "library/alpine", pathName: "docker.io/alpine"},
		{name: "dotted name alone is a repository", target: "/v2/foo.bar/manifests/v1", registry: "docker.io", repository: "library/foo.bar", pathName: "foo.bar"},
		{name: "default registry", target: "/v2/app/manifests/v1", def: "registry.example", registry: "registry.example", repository: "app", pathName: "app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			def := tc.def
			if def == "" {
				def = DockerHub
			}
			path, query, _ := strings.Cut(tc.target, "?")
			p, e := ParsePath(path, query, def)
			if e != nil {
				t.Fatalf("refused: %v", e)
			}
			if p.Registry != tc.registry || p.Repository != tc.repository || p.Name != tc.pathName || p.NS != tc.ns {
				t.Errorf("got registry %q repository %q name %q ns %q, want %q %q %q %q", p.Registry, p.Repository, p.Name, p.NS, tc.registry, tc.repository, tc.pathName, tc.ns)
			}
		})
	}
}

func TestParsePathEndpoints(t *testing.T) {
	t.Parallel()
	dgst := "sha256:" + strings.Repeat("a", 64)
	for _, tc := range []struct {
		name, target string
		want         Path
	}{
		{name: "ping", target: "/v2/", want: Path{Kind: KindPing, N: -1}},
		{name: "ping without slash", target: "/v2", want: Path{Kind: KindPing, N: -1}},
		{name: "manifest by tag", target: "/v2/library/alpine/manifests/3.20", want: Path{Kind: KindManifest, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", Reference: "3.20", N: -1}},
		{name: "manifest by digest", target: "/v2/library/alpine/manifests/" + dgst, want: Path{Kind: KindManifest, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", Reference: dgst, Digest: digest.Digest(dgst), N: -1}},
		{name: "blob", target: "/v2/library/alpine/blobs/" + dgst, want: Path{Kind: KindBlob, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", Digest: digest.Digest(dgst), N: -1}},
		{name: "escaped tag", target: "/v2/library/alpine/manifests/%6Catest", want: Path{Kind: KindManifest, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", Reference: "latest", N: -1}},
		{name: "referrers", target: "/v2/library/alpine/referrers/" + dgst, want: Path{Kind: KindReferrers, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", Digest: digest.Digest(dgst), N: -1}},
		{name: "referrers filtered", target: "/v2/library/alpine/referrers/" + dgst + "?artifactType=application/spdx%2Bjson", want: Path{Kind: KindReferrers, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", Digest: digest.Digest(dgst), ArtifactType: "application/spdx+json", N: -1}},
		{name: "tags", target: "/v2/library/alpine/tags/list", want: Path{Kind: KindTags, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", N: -1}},
		{name: "tags paged", target: "/v2/library/alpine/tags/list?n=2&last=b", want: Path{Kind: KindTags, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", N: 2, Last: "b"}},
		{name: "tags n zero", target: "/v2/library/alpine/tags/list?n=0", want: Path{Kind: KindTags, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", N: 0}},
		{name: "tags largest n", target: "/v2/library/alpine/tags/list?n=999999999", want: Path{Kind: KindTags, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", N: 999999999}},
		{name: "tags empty n", target: "/v2/library/alpine/tags/list?n=&last=a", want: Path{Kind: KindTags, Registry: "docker.io", Repository: "library/alpine", Name: "library/alpine", N: -1, Last: "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, query, _ := strings.Cut(tc.target, "?")
			p, e := ParsePath(path, query, DockerHub)
			if e != nil {
				t.Fatalf("refused: %v", e)
			}
			if p != tc.want {
				t.Errorf("got  %+v\nwant %+v", p, tc.want)
			}
		})
	}
}

// The refusals, each with its status and code, and the kind known when it was refused (the
// mirror names its metrics by it).
func TestParsePathRefused(t *testing.T) {
	t.Parallel()
	good := "sha256:" + strings.Repeat("a", 64)
	hex := good[len("sha256:"):]
	for _, tc := range []struct {
		name, target string
		status       int
		code         ErrorCode
		kind         Kind
	}{
		{"upper-case name", "/v2/Library/alpine/manifests/latest", 400, CodeNameInvalid, KindManifest},
		{"dot dot", "/v2/../etc/manifests/latest", 400, CodeNameInvalid, KindUnknown},
		{"dot dot inside the name", "/v2/library/../../etc/manifests/latest", 400, CodeNameInvalid, KindUnknown},
		{"escaped dot dot", "/v2/%2e%2e/etc/manifests/latest", 400, CodeNameInvalid, KindUnknown},
		{"single dot", "/v2/library/./alpine/manifests/latest", 400, CodeNameInvalid, KindUnknown},
		{"malformed escape", "/v2/library/%zz/manifests/latest", 400, CodeNameInvalid, KindUnknown},
		{"escaped slash", "/v2/library%2Falpine/manifests/latest", 400, CodeNameInvalid, KindManifest},
		{"empty component", "/v2/library//alpine/manifests/latest", 400, CodeNameInvalid, KindUnknown},
		{"trailing slash", "/v2/library/alpine/manifests/latest/", 400, CodeNameInvalid, KindUnknown},
		{"bad name separator", "/v2/library/al__-pine/manifests/latest", 400, CodeNameInvalid, KindManifest},
		{"name too long", "/v2/" + strings.Repeat("a/", 128) + "a/manifests/latest", 400, CodeNameInvalid, KindManifest},
		{"path too long", "/v2/" + strings.Repeat("a", 2000) + "/manifests/latest", 400, CodeNameInvalid, KindUnknown},
		{"bad registry in path", "/v2/bad_host.io/app/manifests/latest", 400, CodeNameInvalid, KindManifest},
		{"port out of range", "/v2/registry.io:99999/app/manifests/latest", 400, CodeNameInvalid, KindManifest},
		{"bad ns", "/v2/app/manifests/latest?ns=not%20a%20host", 400, CodeNameInvalid, KindManifest},
		{"ns without a dot", "/v2/app/manifests/latest?ns=single", 400, CodeNameInvalid, KindManifest},
		{"ns twice", "/v2/app/manifests/latest?ns=ghcr.io&ns=quay.io", 400, CodeUnsupported, KindManifest},
		{"malformed query", "/v2/app/manifests/latest?ns=%zz", 400, CodeUnsupported, KindManifest},
		{"query too long", "/v2/app/manifests/latest?x=" + strings.Repeat("a", MaxQueryLength), 400, CodeUnsupported, KindManifest},
		{"tag starting with a dash", "/v2/library/alpine/manifests/-latest", 400, CodeTagInvalid, KindManifest},
		{"tag too long", "/v2/library/alpine/manifests/" + strings.Repeat("t", 129), 400, CodeTagInvalid, KindManifest},
		{"tag with a space", "/v2/library/alpine/manifests/lat%20est", 400, CodeTagInvalid, KindManifest},
		{"short digest", "/v2/library/alpine/manifests/sha256:abc", 400, CodeDigestInvalid, KindManifest},
		{"unknown algorithm", "/v2/library/alpine/manifests/md5:" + hex[:32], 400, CodeDigestInvalid, KindManifest},
		{"sha384", "/v2/library/alpine/blobs/sha384:" + strings.Repeat("a", 96), 400, CodeDigestInvalid, KindBlob},
		{"upper-case hex", "/v2/library/alpine/blobs/sha256:" + strings.ToUpper(hex), 400, CodeDigestInvalid, KindBlob},
		{"blob by tag", "/v2/library/alpine/blobs/latest", 400, CodeDigestInvalid, KindBlob},
		{"referrers of a tag", "/v2/library/alpine/referrers/latest", 400, CodeDigestInvalid, KindReferrers},
		{"bad artifactType", "/v2/library/alpine/referrers/" + good + "?artifactType=not-a-type", 400, CodeUnsupported, KindReferrers},
		{"artifactType twice", "/v2/library/alpine/referrers/" + good + "?artifactType=a/b&artifactType=c/d", 400, CodeUnsupported, KindReferrers},
		{"negative n", "/v2/library/alpine/tags/list?n=-1", 400, CodePaginationNumberInvalid, KindTags},
		{"signed n", "/v2/library/alpine/tags/list?n=%2B5", 400, CodePaginationNumberInvalid, KindTags},
		{"n not a number", "/v2/library/alpine/tags/list?n=ten", 400, CodePaginationNumberInvalid, KindTags},
		{"n of ten digits", "/v2/library/alpine/tags/list?n=1000000000", 400, CodePaginationNumberInvalid, KindTags},
		{"bad last", "/v2/library/alpine/tags/list?last=a/b", 400, CodeTagInvalid, KindTags},
		{"catalog", "/v2/_catalog", 404, CodeUnsupported, KindUnknown},
		{"unknown endpoint", "/v2/library/alpine/things/x", 404, CodeUnsupported, KindUnknown},
		{"tags not list", "/v2/library/alpine/tags/all", 404, CodeUnsupported, KindUnknown},
		{"upload", "/v2/library/alpine/blobs/uploads/8f1c", 404, CodeUnsupported, KindUnknown},
		{"not the API", "/v1/library/alpine/manifests/latest", 404, CodeUnsupported, KindUnknown},
		{"root", "/", 404, CodeUnsupported, KindUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, query, _ := strings.Cut(tc.target, "?")
			p, e := ParsePath(path, query, DockerHub)
			if e == nil {
				t.Fatalf("accepted: %+v", p)
			}
			if e.Status != tc.status || e.Code != tc.code || e.Message == "" || p.Kind != tc.kind {
				t.Errorf("refused with %d %s %q, kind %s; want %d %s, kind %s", e.Status, e.Code, e.Message, p.Kind, tc.status, tc.code, tc.kind)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	var got []string
	for k := KindUnknown; k <= KindUploads; k++ {
		got = append(got, k.String())
	}
	want := []string{"unknown", "ping", "manifest", "blob", "tags", "referrers", "uploads"}
	if !slices.Equal(got, want) {
		t.Errorf("kinds %q, want %q", got, want)
	}
	if Kind(99).String() != "unknown" {
		t.Error("an out-of-range kind is not unknown")
	}
}

// Route tells a manifest by tag from one by digest, from what ParsePath made of the request.
func TestPathRoute(t *testing.T) {
	t.Parallel()
	dgst := "sha256:" + strings.Repeat("a", 64)
	for _, tc := range []struct {
		name, target, want string
	}{
		{"ping", "/v2/", "ping"},
		{"manifest by tag", "/v2/library/alpine/manifests/3.20", "tag"},
		{"manifest by tag with ns", "/v2/org/app/manifests/v1?ns=ghcr.io", "tag"},
		{"manifest by digest", "/v2/library/alpine/manifests/" + dgst, "manifest"},
		{"blob", "/v2/library/alpine/blobs/" + dgst, "blob"},
		{"tags", "/v2/library/alpine/tags/list", "tags"},
		{"referrers", "/v2/library/alpine/referrers/" + dgst, "referrers"},
		{"refused tag", "/v2/library/alpine/manifests/-latest", "manifest"},
		{"refused digest", "/v2/library/alpine/manifests/sha256:abc", "manifest"},
		{"refused name of a tag", "/v2/Library/alpine/manifests/latest", "manifest"},
		{"refused blob", "/v2/library/alpine/blobs/latest", "blob"},
		{"upload", "/v2/library/alpine/blobs/uploads/8f1c", "unknown"},
		{"catalog", "/v2/_catalog", "unknown"},
		{"not the API", "/v1/library/alpine/manifests/latest", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, query, _ := strings.Cut(tc.target, "?")
			p, _ := ParsePath(path, query, DockerHub)
			if got := p.Route(); got != tc.want {
				t.Errorf("Route() of %s = %q, want %q", tc.target, got, tc.want)
			}
		})
	}
}
