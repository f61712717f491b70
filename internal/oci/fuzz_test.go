package oci

import (
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/internal/oci/ocitest"
)

// Run a target with, for example:
//
//	go test -run='^$' -fuzz='^FuzzParsePath$' -fuzztime=30s -fuzzminimizetime=2s ./internal/oci/
//
// -fuzzminimizetime matters: by default each new interesting input is minimized for up to 60 s,
// during which the search stalls (zero execs per second) on inputs of a few hundred bytes.

// FuzzParsePath parses arbitrary request targets: it must never panic, refuse only with a 4xx,
// and what it accepts must re-validate and survive a round trip through a canonical path.
func FuzzParsePath(f *testing.F) {
	for _, s := range ocitest.Targets {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		path, query, _ := strings.Cut(target, "?")
		p, e := ParsePath(path, query, DockerHub)
		if e != nil {
			if e.Status < 400 || e.Status > 499 || e.Code == "" || e.Message == "" {
				t.Fatalf("%q: refused with %d %s %q", target, e.Status, e.Code, e.Message)
			}
			return
		}
		checkPath(t, target, p)
		if p.Kind == KindPing {
			return
		}

		// The same request in both canonical forms parses to the same thing.
		suffix := kindSuffix(p)
		forms := []string{"/v2/" + p.Registry + "/" + p.Repository + suffix}
		if first, _, _ := strings.Cut(p.Repository, "/"); first != p.Registry {
			// (A repository named like its own registry is read as an override_path mirror path.)
			q := "ns=" + url.QueryEscape(p.Registry)
			if strings.Contains(suffix, "?") {
				forms = append(forms, "/v2/"+p.Repository+suffix+"&"+q)
			} else {
				forms = append(forms, "/v2/"+p.Repository+suffix+"?"+q)
			}
		}
		for _, form := range forms {
			fp, fq, _ := strings.Cut(form, "?")
			if len(fp) > MaxPathLength {
				continue
			}
			again, e := ParsePath(fp, fq, DockerHub)
			if e != nil {
				t.Fatalf("%q parsed, its canonical form %q did not: %s %s", target, form, e.Code, e.Message)
			}
			if again.Registry != p.Registry || again.Repository != p.Repository || again.Reference != p.Reference ||
				again.Digest != p.Digest || again.N != p.N || again.Last != p.Last || again.ArtifactType != p.ArtifactType {
				t.Fatalf("%q and its canonical form %q differ:\n%+v\n%+v", target, form, p, again)
			}
		}
	})
}

// checkPath checks that an accepted request holds only valid values.
func checkPath(t *testing.T, target string, p Path) {
	t.Helper()
	fail := func(what string) { t.Fatalf("%q accepted with %s: %+v", target, what, p) }
	if p.Kind == KindUnknown || p.Kind == KindUploads {
		fail("no pull endpoint")
	}
	if p.Kind == KindPing {
		if p.Registry != "" || p.Repository != "" {
			fail("a name on a ping")
		}
		return
	}
	if h, ok := NormalizeHost(p.Registry); !ok || h != p.Registry {
		fail("an invalid registry")
	}
	if p.Repository == "" || len(p.Repository) > MaxRepositoryLength {
		fail("a repository of a bad length")
	}
	for _, c := range strings.Split(p.Repository, "/") {
		if !ValidRepositoryComponent(c) || c == ".." {
			fail("an invalid repository component")
		}
	}
	if p.Registry == DockerHub && !strings.Contains(p.Repository, "/") {
		fail("a docker.io repository without its namespace")
	}
	if p.Digest != "" {
		if err := p.Digest.Validate(); err != nil || (p.Digest.Algorithm() != digest.SHA256 && p.Digest.Algorithm() != digest.SHA512) {
			fail("an invalid digest")
		}
	}
	switch p.Kind {
	case KindManifest:
		if p.Digest != "" && p.Reference != p.Digest.String() {
			fail("a digest reference that is not the digest")
		}
		if p.Digest == "" && !ValidTag(p.Reference) {
			fail("an invalid tag")
		}
	case KindBlob, KindReferrers:
		if p.Digest == "" {
			fail("no digest")
		}
	}
	if p.ArtifactType != "" && !ValidMediaType(p.ArtifactType) {
		fail("an invalid artifactType")
	}
	if p.N < -1 || p.N > 999999999 || (p.Last != "" && !ValidTag(p.Last)) {
		fail("invalid paging")
	}
}

// kindSuffix is the part of a request's path after its name, with its own query.
func kindSuffix(p Path) string {
	switch p.Kind {
	case KindManifest:
		return "/manifests/" + p.Reference
	case KindBlob:
		return "/blobs/" + p.Digest.String()
	case KindReferrers:
		if p.ArtifactType != "" {
			return "/referrers/" + p.Digest.String() + "?artifactType=" + url.QueryEscape(p.ArtifactType)
		}
		return "/referrers/" + p.Digest.String()
	case KindTags:
		q := url.Values{}
		if p.N >= 0 {
			q.Set("n", strconv.Itoa(p.N))
		}
		if p.Last != "" {
			q.Set("last", p.Last)
		}
		if len(q) == 0 {
			return "/tags/list"
		}
		return "/tags/list?" + q.Encode()
	}
	return ""
}
