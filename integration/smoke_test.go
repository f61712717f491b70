package integration

import (
	"crypto/rand"
	"runtime"
	"strings"
	"testing"

	"github.com/lifeboat-dev/lifeboat/hosts"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestSmokePullAndRun proves the harness end to end: containerd pulls an image from the test
// registry through a hosts.toml, records the pushed manifest digest, and runs a container from
// it.
func TestSmokePullAndRun(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	img := reg.PushBusybox(t, "smoke/busybox", "1")
	want := harness.Digest(t, img)

	ctd := harness.StartContainerd(t)
	hostsDir := harness.WriteHostsDir(t, hosts.Config{Registry: reg.Host(), Mirror: reg.URL()})
	ref := reg.Ref("smoke/busybox", "1")
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hostsDir, ref)

	if got := ctd.ImageDigest(t, ref); got != want {
		t.Fatalf("pulled %s has digest %s, pushed %s", ref, got, want)
	}

	token := strings.ToLower(rand.Text())
	out := ctd.MustCtr(t, "run", "--rm", ref, "smoke-"+token[:12], "/bin/echo", token)
	if !strings.Contains(out, token) {
		t.Fatalf("ctr run output %q does not contain the echoed token %q", out, token)
	}
}

// TestSmokePullOnePlatform pulls one platform of a multi-platform index and checks that exactly
// that platform's layers landed in the content store.
func TestSmokePullOnePlatform(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	platform, other := "linux/amd64", "linux/arm64"
	switch runtime.GOARCH {
	case "amd64":
	case "arm64":
		platform, other = other, platform
	default:
		t.Skipf("the test index has linux/amd64 and linux/arm64 images, none for this host (%s)", runtime.GOARCH)
	}

	reg := harness.StartRegistry(t)
	idx := reg.PushMultiPlatform(t, "smoke/multi", "1", 2, 64<<10, platform, other)

	ctd := harness.StartContainerd(t)
	hostsDir := harness.WriteHostsDir(t, hosts.Config{Registry: reg.Host(), Upstream: reg.URL()})
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hostsDir, "--platform", platform, idx.Ref)

	if got := ctd.ImageDigest(t, idx.Ref); got != idx.Digest {
		t.Fatalf("pulled %s has digest %s, pushed index %s", idx.Ref, got, idx.Digest)
	}
	content := ctd.ContentDigests(t)
	for _, d := range append([]string{idx.Digest, idx.Manifests[platform]}, harness.LayerDigests(t, idx.Images[platform])...) {
		if !content[d] {
			t.Errorf("%s (index, %s manifest or layer) missing from the content store", d, platform)
		}
	}
	for _, d := range harness.LayerDigests(t, idx.Images[other]) {
		if content[d] {
			t.Errorf("layer %s of %s was fetched although only %s was pulled", d, other, platform)
		}
	}
}
