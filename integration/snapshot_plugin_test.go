package integration

import (
	"crypto/rand"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestSnapshotterAppliesLayersFromCache configures containerd as CONTAINERD.md says a node
// should (the lifeboat snapshotter as a proxy plugin exporting remote snapshot annotations, and
// an unpack_config naming it) and pulls with the transfer service: layers lifeboat has cached are
// applied from its cache, so containerd fetches none of them, and the image runs.
func TestSnapshotterAppliesLayersFromCache(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	img := reg.PushBusybox(t, "library/busybox", "snap")
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{"docker.io": {reg.URL()}}})
	platform := "linux/" + runtime.GOARCH
	ctd := harness.StartContainerdWith(t, harness.ContainerdOptions{ExtraConfig: fmt.Sprintf(`
[proxy_plugins.lifeboat]
  type = "snapshot"
  address = %q
  [proxy_plugins.lifeboat.exports]
    enable_remote_snapshot_annotations = "true"

[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %q
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %q
    snapshotter = "lifeboat"
`, lb.Socket, platform, platform)})
	hosts := lb.MirrorHostsDir(t, "docker.io")
	const ref = "docker.io/library/busybox:snap"

	// Warm lifeboat's cache through the mirror, as an earlier pull on another node would have.
	warm := harness.StartContainerd(t)
	warm.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)

	ctd.MustCtr(t, "images", "pull", "--snapshotter", "lifeboat", "--hosts-dir", hosts, ref)
	content := ctd.ContentDigests(t)
	for _, l := range harness.LayerDigests(t, img) {
		if content[l] {
			t.Errorf("containerd fetched layer %s although lifeboat had it cached", l)
		}
	}
	harness.WaitFor(t, "lifeboat to log the cache path", 5*time.Second, nil, func() error {
		if !strings.Contains(lb.Log(), "layer applied from lifeboat's cache") {
			return fmt.Errorf("not in the log yet")
		}
		return nil
	})
	token := strings.ToLower(rand.Text())[:12]
	out := ctd.MustCtr(t, "run", "--rm", "--snapshotter", "lifeboat", ref, "snap-"+token, "/bin/echo", token)
	if !strings.Contains(out, token) {
		t.Fatalf("ctr run printed %q", out)
	}
}
