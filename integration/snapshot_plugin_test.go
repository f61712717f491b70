package integration

import (
	"crypto/rand"
	"fmt"
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
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {reg.URL()}},
		Metrics:   true,
	})
	ctd := harness.StartContainerdWith(t, harness.ContainerdOptions{ExtraConfig: harness.SnapshotterConfig(lb.Socket)})
	hosts := lb.MirrorHostsDir(t, "docker.io")
	const ref = "docker.io/library/busybox:snap"

	// Warm lifeboat's cache through the mirror, as an earlier pull on another node would have.
	warm := harness.StartContainerd(t)
	warm.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)

	blobGETs := func() float64 {
		return lb.Metric(t, "lifeboat_mirror_requests_total", map[string]string{"route": "blob", "method": "GET"})
	}
	before := blobGETs()
	ctd.MustCtr(t, "images", "pull", "--snapshotter", "lifeboat", "--hosts-dir", hosts, ref)
	// containerd fetches the config (it needs the diff IDs) and none of the layers.
	if n := blobGETs() - before; n != 1 {
		t.Errorf("%v blob GETs reached the mirror during the pull, want 1 (the config, no layer)", n)
	}
	if n := lb.Metric(t, "lifeboat_upstream_fetched_bytes_total", nil); n <= 0 {
		t.Errorf("lifeboat_upstream_fetched_bytes_total = %v after a cold pull through lifeboat", n)
	}
	if n := lb.Metric(t, "lifeboat_upstream_requests_total", map[string]string{"op": "head-manifest", "result": "ok"}); n < 1 {
		t.Errorf("no successful tag check counted: %v", n)
	}
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
