package plan

import (
	"maps"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

func TestNormalizeRef(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"alpine":                 "docker.io/library/alpine:latest",
		"alpine:3.20":            "docker.io/library/alpine:3.20",
		"ghcr.io/org/app:v1":     "ghcr.io/org/app:v1",
		"localhost:5000/app":     "localhost:5000/app:latest",
		"docker.io/library/a:b1": "docker.io/library/a:b1",
	} {
		if got, err := NormalizeRef(in); err != nil || got != want {
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Bad/Ref!!", "a b"} {
		if _, err := NormalizeRef(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("NormalizeRef(%q): %v, want invalid argument", bad, err)
		}
	}
}

// Inspect must give the verdict Check gives, whatever is missing, without counting as a use of
// the image.
func TestInspectAgreesWithCheck(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	full := pushForPlatform(t, up, "full", "v1", "linux/amd64", 16<<10)
	holed := pushForPlatform(t, up, "holed", "v1", "linux/arm64/v8", 16<<10)
	up.Push(t, "never", "v1", 1024)
	_, imgs := up.PushIndex(t, "multi", "v1", "linux/arm64", "linux/amd64")
	p, store := newTestPlanner(t, up)
	ctx := t.Context()
	pullImage(t, p.r, "full", "v1", full)
	pullImage(t, p.r, "holed", "v1", holed, registrytest.Layers(t, holed)[1].Digest)
	pullImage(t, p.r, "multi", "v1", imgs["linux/amd64"])

	usages := func() map[string]string {
		us, err := store.RefUsages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, u := range us {
			m[u.Name] = u.LastUsed.String()
		}
		return m
	}
	windows := platforms.Only(platforms.MustParse("windows/amd64"))
	for _, tc := range []struct {
		name, ref string
		platform  platforms.MatchComparer
		ready     bool
		plats     []string
	}{
		{"complete", testRegistry + "/full:v1", amd64, true, []string{"linux/amd64"}},
		{"a layer missing", testRegistry + "/holed:v1", amd64, false, []string{"linux/arm64/v8"}},
		{"tag not cached", testRegistry + "/never:v1", amd64, false, []string{}},
		{"index, cached platform", testRegistry + "/multi:v1", amd64, true, []string{"linux/arm64", "linux/amd64"}},
		{"index, platform not cached", testRegistry + "/multi:v1", arm64, false, []string{"linux/arm64", "linux/amd64"}},
		{"index without the platform", testRegistry + "/multi:v1", windows, false, []string{"linux/arm64", "linux/amd64"}},
		{"by digest", testRegistry + "/full@" + registrytest.Digest(t, full).String(), amd64, true, []string{"linux/amd64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sum, err := p.Inspect(ctx, tc.ref, tc.platform)
			if err != nil {
				t.Fatal(err)
			}
			rd, err := p.Check(ctx, tc.ref, tc.platform)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Ready != tc.ready || sum.Ready != rd.Ready || sum.Ref != rd.Ref || sum.Partial != rd.Partial ||
				sum.MissingBytes != rd.MissingBytes || !slices.Equal(sum.Missing, rd.Missing) {
				t.Errorf("Inspect = %+v\n  Check = %+v", sum.Readiness, rd)
			}
			if !slices.Equal(sum.Platforms, tc.plats) {
				t.Errorf("platforms %q, want %q", sum.Platforms, tc.plats)
			}
		})
	}
	// Check reads manifests as a pull does, which moves an image's last use; Inspect must not.
	before := usages()
	for _, ref := range []string{"/full:v1", "/holed:v1", "/multi:v1"} {
		if _, err := p.Inspect(ctx, testRegistry+ref, amd64); err != nil {
			t.Fatal(err)
		}
	}
	if after := usages(); !maps.Equal(after, before) {
		t.Errorf("Inspect moved last uses:\n before %v\n after  %v", before, after)
	}
	if sum, err := p.Inspect(ctx, testRegistry+"/full:v1", amd64); err != nil || sum.Digest != registrytest.Digest(t, full) {
		t.Errorf("Inspect digest = %s, %v; want %s", sum.Digest, err, registrytest.Digest(t, full))
	}
}

// pushForPlatform writes a random image whose config names its platform to repo:tag of up.
func pushForPlatform(t *testing.T, up *registrytest.Upstream, repo, tag, platform string, layerSize int64) v1.Image {
	t.Helper()
	img := registrytest.RandomImage(t, layerSize, 2)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	registrytest.Write(t, up.URL, repo, tag, img)
	return img
}
