package oci

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

func TestValidRepository(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		repo string
		want bool
	}{
		{name: "one component", repo: "alpine", want: true},
		{name: "two components", repo: "library/alpine", want: true},
		{name: "many components", repo: "a/b/c/d", want: true},
		{name: "separators", repo: "a.b_c__d-e---f", want: true},
		{name: "digits", repo: "0/9abc", want: true},
		{name: "longest", repo: strings.Repeat("a", MaxRepositoryLength), want: true},
		{name: "too long", repo: strings.Repeat("a", MaxRepositoryLength+1)},
		{name: "empty", repo: ""},
		{name: "upper case", repo: "Library/alpine"},
		{name: "empty component", repo: "library//alpine"},
		{name: "leading slash", repo: "/alpine"},
		{name: "trailing slash", repo: "alpine/"},
		{name: "dot dot", repo: "library/../etc"},
		{name: "single dot", repo: "./alpine"},
		{name: "leading separator", repo: "-alpine"},
		{name: "trailing separator", repo: "alpine_"},
		{name: "two dots", repo: "a..b"},
		{name: "three underscores", repo: "a___b"},
		{name: "mixed separators", repo: "a__-b"},
		{name: "escaped slash", repo: "library%2falpine"},
		{name: "colon", repo: "alpine:latest"},
		{name: "space", repo: "al pine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := ValidRepository(tc.repo); got != tc.want {
				t.Errorf("ValidRepository(%q) = %v, want %v", tc.repo, got, tc.want)
			}
		})
	}
}

// The repository grammar is distribution/reference's: behind a fixed registry, a repository is
// valid exactly when reference accepts the name (up to reference's limit on the whole name).
func TestValidRepositoryAgreesWithReference(t *testing.T) {
	t.Parallel()
	for _, repo := range []string{"alpine", "library/alpine", "a.b_c__d-e---f/x", "Upper", "a//b", "a..b", "a___b", "-a", "a-", "", "a/", "a:b", "a@b"} {
		_, err := reference.WithName("registry.example/" + repo)
		if want := err == nil; ValidRepository(repo) != want {
			t.Errorf("ValidRepository(%q) = %v, reference says %v (%v)", repo, !want, want, err)
		}
	}
}

func TestValidTag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		tag  string
		want bool
	}{
		{"latest", true},
		{"3.20", true},
		{"_x", true},
		{"V1.2-rc_3", true},
		{strings.Repeat("t", 128), true},
		{strings.Repeat("t", 129), false},
		{"", false},
		{"-latest", false},
		{".latest", false},
		{"a/b", false},
		{"a:b", false},
		{"lat est", false},
		{"latest?x=1", false},
		{"été", false},
	} {
		if got := ValidTag(tc.tag); got != tc.want {
			t.Errorf("ValidTag(%q) = %v, want %v", tc.tag, got, tc.want)
		}
		if want := reference.TagRegexp.FindString(tc.tag) == tc.tag && tc.tag != ""; want != tc.want {
			t.Errorf("%q: distribution/reference says %v", tc.tag, want)
		}
	}
}

func TestValidMediaType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"application/spdx+json", true},
		{"application/vnd.example.sbom.v1", true},
		{"text/plain", true},
		{"", false},
		{"application", false},
		{"application/", false},
		{"/json", false},
		{"application/json; charset=utf-8", false},
		{"not a media type;;", false},
		{"a/b/c", false},
		{"application/" + strings.Repeat("x", 127), true},
		{"application/" + strings.Repeat("x", 128), false},
	} {
		if got := ValidMediaType(tc.s); got != tc.want {
			t.Errorf("ValidMediaType(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

func TestParseDigest(t *testing.T) {
	t.Parallel()
	sha256 := "sha256:" + strings.Repeat("a", 64)
	sha512 := "sha512:" + strings.Repeat("0", 128)
	for _, tc := range []struct {
		name string
		s    string
		ok   bool
		msg  string // in the error
	}{
		{name: "sha256", s: sha256, ok: true},
		{name: "sha512", s: sha512, ok: true},
		{name: "sha384", s: "sha384:" + strings.Repeat("a", 96), msg: "unsupported digest algorithm"},
		{name: "md5", s: "md5:" + strings.Repeat("a", 32), msg: "unsupported digest algorithm"},
		{name: "no algorithm", s: strings.Repeat("a", 64), msg: "unsupported digest algorithm"},
		{name: "empty", s: "", msg: "unsupported digest algorithm"},
		{name: "upper-case hex", s: "sha256:" + strings.Repeat("A", 64), msg: "invalid digest"},
		{name: "short", s: sha256[:len(sha256)-1], msg: "invalid digest"},
		{name: "long", s: sha256 + "a", msg: "invalid digest"},
		{name: "not hex", s: "sha256:" + strings.Repeat("g", 64), msg: "invalid digest"},
		{name: "path", s: "sha256:../../x", msg: "invalid digest"},
		{name: "sha256 length for sha512", s: "sha512:" + strings.Repeat("a", 64), msg: "invalid digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d, err := ParseDigest(tc.s)
			if tc.ok {
				if err != nil || d.String() != tc.s {
					t.Fatalf("ParseDigest(%q) = %q, %v", tc.s, d, err)
				}
				return
			}
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.msg) || d != "" {
				t.Fatalf("ParseDigest(%q) = %q, %v; want an invalid argument saying %q", tc.s, d, err, tc.msg)
			}
		})
	}
}

func TestParseReference(t *testing.T) {
	t.Parallel()
	good := "sha256:" + strings.Repeat("b", 64)
	for _, tc := range []struct {
		ref    string
		digest bool
		ok     bool
	}{
		{ref: "latest", ok: true},
		{ref: good, digest: true, ok: true},
		{ref: ""},
		{ref: "-x"},
		{ref: "a/b"},
		{ref: "sha256:abc"},
		{ref: "latest?x=1"},
		{ref: strings.Repeat("a", 129)},
	} {
		d, err := ParseReference(tc.ref)
		switch {
		case !tc.ok:
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("ParseReference(%q) = %q, %v; want an invalid argument", tc.ref, d, err)
			}
		case err != nil:
			t.Errorf("ParseReference(%q): %v", tc.ref, err)
		case tc.digest != (d != ""):
			t.Errorf("ParseReference(%q) = digest %q", tc.ref, d)
		}
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	if got := Clip("short"); got != "short" {
		t.Errorf("Clip(short) = %q", got)
	}
	if got := Clip(strings.Repeat("x", 100)); got != strings.Repeat("x", 64)+"..." {
		t.Errorf("Clip(100 x) = %q", got)
	}
}
