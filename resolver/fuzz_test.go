package resolver

import (
	"testing"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzParseImageRef: any string either is refused or normalizes to a reference that parses
// again to the same registry, repository, tag and digest.
func FuzzParseImageRef(f *testing.F) {
	for _, s := range []string{"alpine", "docker.io/library/alpine:3.20", "ghcr.io/org/app@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"localhost:5000/a/b:c", "UPPER/case", "a/../b", "host:99999/x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ir, err := parseImageRef(s)
		if err != nil {
			return
		}
		again, err := parseImageRef(ir.name)
		if err != nil {
			t.Fatalf("%q normalized to %q, which does not parse: %v", s, ir.name, err)
		}
		if again != ir {
			t.Fatalf("%q: %+v, then %+v", s, ir, again)
		}
		if err := checkRepository(ir.repository); err != nil {
			t.Fatalf("%q gave an invalid repository %q", s, ir.repository)
		}
	})
}

// FuzzPlatformManifest: choosing a platform's manifest from any cached index body never panics.
func FuzzPlatformManifest(f *testing.F) {
	f.Add([]byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00","platform":{"os":"linux","architecture":"amd64"}}]}`))
	f.Add([]byte(`{"manifests":[{"platform":null},{}]}`))
	f.Add([]byte(`[]`))
	m := platforms.Only(platforms.MustParse("linux/amd64"))
	f.Fuzz(func(t *testing.T, body []byte) {
		platformManifest(Manifest{Descriptor: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex}, Body: body}, m, 0)
	})
}
