package plan

import (
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/internal/size"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

func TestParseImageRef(t *testing.T) {
	t.Parallel()
	const dgst = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name, in                            string
		want, registry, repo, tag, digested string
	}{
		{name: "familiar name", in: "alpine", want: "docker.io/library/alpine:latest", registry: "docker.io", repo: "library/alpine", tag: "latest"},
		{name: "familiar with tag", in: "alpine:3.20", want: "docker.io/library/alpine:3.20", registry: "docker.io", repo: "library/alpine", tag: "3.20"},
		{name: "docker hub user", in: "bitnami/redis:7", want: "docker.io/bitnami/redis:7", registry: "docker.io", repo: "bitnami/redis", tag: "7"},
		{name: "other registry", in: "ghcr.io/org/app:v1", want: "ghcr.io/org/app:v1", registry: "ghcr.io", repo: "org/app", tag: "v1"},
		{name: "registry with port", in: "localhost:5000/app", want: "localhost:5000/app:latest", registry: "localhost:5000", repo: "app", tag: "latest"},
		{name: "digest", in: "alpine@" + dgst, want: "docker.io/library/alpine@" + dgst, registry: "docker.io", repo: "library/alpine", digested: dgst},
		{name: "tag and digest", in: "alpine:3.20@" + dgst, want: "docker.io/library/alpine:3.20@" + dgst, registry: "docker.io", repo: "library/alpine", digested: dgst},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ir, err := parseImageRef(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if ir.name != tc.want || ir.registry != tc.registry || ir.repository != tc.repo || ir.tag != tc.tag || ir.digest.String() != tc.digested {
				t.Errorf("parseImageRef(%q) = %+v", tc.in, ir)
			}
		})
	}
	for _, bad := range []string{"", "Upper", "app@sha256:short", "a b", "app:-bad", "app:tag:tag"} {
		if _, err := parseImageRef(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("parseImageRef(%q): %v, want invalid argument", bad, err)
		}
	}
}

// pullImage fetches what a containerd pull of repo:tag fetches through the mirror's paths when
// the index (if any) and platform are already known: the tag, the manifest by digest, then the
// blobs, waiting until each is committed. skip leaves those blobs out.
func pullImage(t *testing.T, r *resolver.Resolver, repo, tag string, img v1.Image, skip ...digest.Digest) {
	t.Helper()
	ctx := t.Context()
	if _, err := r.Manifest(ctx, testRegistry, repo, tag); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Manifest(ctx, testRegistry, repo, registrytest.Digest(t, img).String()); err != nil {
		t.Fatal(err)
	}
	for _, d := range registrytest.Blobs(t, img) {
		if slices.Contains(skip, d) {
			continue
		}
		if _, _, err := readBlob(ctx, r, repo, d); err != nil {
			t.Fatal(err)
		}
		registrytest.Wait(t, "the blob to be committed", func() bool {
			ok, _ := r.Local().HasBlob(ctx, testRegistry+"/"+repo, d)
			return ok
		})
	}
}

var (
	amd64 = platforms.Only(platforms.MustParse("linux/amd64"))
	arm64 = platforms.Only(platforms.MustParse("linux/arm64"))
)

func TestCheckFullyCachedImage(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 64<<10)
	p, _ := newTestPlanner(t, up)
	pullImage(t, p.r, "app", "v1", img)

	before := up.Total()
	for _, ref := range []string{testRegistry + "/app:v1", testRegistry + "/app@" + registrytest.Digest(t, img).String()} {
		rd, err := p.Check(t.Context(), ref, amd64)
		if err != nil {
			t.Fatal(err)
		}
		if !rd.Ready || len(rd.Missing) != 0 || rd.MissingBytes != 0 || rd.Partial || rd.Ref != ref {
			t.Errorf("Check(%s) = %+v, want ready", ref, rd)
		}
	}
	if n := up.Total() - before; n != 0 {
		t.Errorf("Check sent %d requests upstream, want none", n)
	}
}

func TestCheckNamesTheMissingLayer(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 300<<10)
	p, _ := newTestPlanner(t, up)
	layers := registrytest.Layers(t, img)
	never := layers[1]
	pullImage(t, p.r, "app", "v1", img, never.Digest)

	up.SetFault(registrytest.Hang) // whatever Check does, it must not wait on an upstream
	before := up.Total()
	rd, err := p.Check(t.Context(), testRegistry+"/app:v1", amd64)
	if err != nil {
		t.Fatal(err)
	}
	want := "layer " + never.Digest.String() + " (" + size.Format(never.Size) + ")"
	if rd.Ready || len(rd.Missing) != 1 || rd.Missing[0] != want || rd.MissingBytes != never.Size || rd.Partial {
		t.Fatalf("Check = %+v, want not ready, missing only %q of %d bytes", rd, want, never.Size)
	}
	if n := up.Total() - before; n != 0 {
		t.Errorf("Check sent %d requests upstream, want none", n)
	}
}

func TestCheckUncachedTag(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "v1", 1024)
	p, _ := newTestPlanner(t, up)
	before := up.Total()
	rd, err := p.Check(t.Context(), testRegistry+"/app:v1", amd64)
	if err != nil {
		t.Fatal(err)
	}
	if rd.Ready || !rd.Partial || len(rd.Missing) != 1 || rd.Missing[0] != "tag "+testRegistry+"/app:v1" {
		t.Fatalf("Check of a tag never pulled = %+v", rd)
	}
	if n := up.Total() - before; n != 0 {
		t.Errorf("Check sent %d requests upstream, want none", n)
	}
	if _, err := p.Check(t.Context(), "Bad Ref", amd64); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Check of a malformed reference: %v, want invalid argument", err)
	}
}

func TestCheckMultiPlatform(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	_, imgs := up.PushIndex(t, "multi", "v1", "linux/arm64", "linux/amd64")
	p, _ := newTestPlanner(t, up)
	// What containerd on an amd64 node fetches: the index by tag, then the amd64 image.
	pullImage(t, p.r, "multi", "v1", imgs["linux/amd64"])

	before := up.Total()
	rd, err := p.Check(t.Context(), testRegistry+"/multi:v1", amd64)
	if err != nil || !rd.Ready {
		t.Fatalf("Check for linux/amd64 = %+v %v, want ready", rd, err)
	}
	rd, err = p.Check(t.Context(), testRegistry+"/multi:v1", arm64)
	if err != nil {
		t.Fatal(err)
	}
	armDigest := registrytest.Digest(t, imgs["linux/arm64"])
	if rd.Ready || !rd.Partial || len(rd.Missing) != 1 ||
		!strings.HasPrefix(rd.Missing[0], "manifest "+armDigest.String()+" for linux/arm64 (") || rd.MissingBytes <= 0 {
		t.Fatalf("Check for linux/arm64 = %+v, want the arm64 manifest missing", rd)
	}
	rd, err = p.Check(t.Context(), testRegistry+"/multi:v1", platforms.Only(platforms.MustParse("windows/amd64")))
	if err != nil || rd.Ready || len(rd.Missing) != 1 || !strings.HasPrefix(rd.Missing[0], "platform:") {
		t.Fatalf("Check for a platform the index lacks = %+v %v", rd, err)
	}
	if n := up.Total() - before; n != 0 {
		t.Errorf("Check sent %d requests upstream, want none", n)
	}
}

func TestWarmMakesReady(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 128<<10)
	byDigest := up.Push(t, "app", "v2", 1024)
	up.PushIndex(t, "multi", "v1", "linux/amd64", "linux/arm64")
	p, _ := newTestPlanner(t, up)
	ctx := t.Context()
	// Partly cached: one layer missing.
	pullImage(t, p.r, "app", "v1", img, registrytest.Layers(t, img)[0].Digest)

	for _, tc := range []struct {
		ref      string
		platform platforms.MatchComparer
	}{
		{testRegistry + "/app:v1", amd64},
		{testRegistry + "/multi:v1", arm64},
		{testRegistry + "/app@" + registrytest.Digest(t, byDigest).String(), arm64}, // a digest names one image, whatever the platform
	} {
		if rd, err := p.Check(ctx, tc.ref, tc.platform); err != nil || rd.Ready {
			t.Fatalf("before Warm: Check(%s) = %+v %v, want not ready", tc.ref, rd, err)
		}
		gets := up.Count("GET blobs")
		if err := p.Warm(ctx, tc.ref, tc.platform); err != nil {
			t.Fatalf("Warm(%s): %v", tc.ref, err)
		}
		rd, err := p.Check(ctx, tc.ref, tc.platform)
		if err != nil || !rd.Ready {
			t.Fatalf("after Warm: Check(%s) = %+v %v, want ready", tc.ref, rd, err)
		}
		if tc.ref == testRegistry+"/app:v1" && up.Count("GET blobs")-gets != 1 {
			t.Errorf("Warm downloaded %d blobs, want only the missing one", up.Count("GET blobs")-gets)
		}
	}
	// The arm64 image only: amd64 is still missing.
	if rd, err := p.Check(ctx, testRegistry+"/multi:v1", amd64); err != nil || rd.Ready {
		t.Errorf("Warm for arm64 made amd64 ready: %+v %v", rd, err)
	}

	// With the upstream down, Warm fails and says so; what was cached stays ready.
	up.SetFault(registrytest.Status503)
	if err := p.Warm(ctx, testRegistry+"/multi:v1", amd64); !errdefs.IsNotFound(err) {
		t.Errorf("Warm with the upstream down: %v, want not found", err)
	}
	if rd, err := p.Check(ctx, testRegistry+"/app:v1", amd64); err != nil || !rd.Ready {
		t.Errorf("after a failed Warm: %+v %v", rd, err)
	}
}
