package integration

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestContentPlugin points containerd's content store at lifeboat (proxy_plugins), as an
// operator who wants one copy of every blob on the node would, and checks that pulled content
// lands in lifeboat's cache, that containerd's garbage collection does not empty the offline
// cache, and that containerd recovers when lifeboat restarts.
func TestContentPlugin(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	img := reg.PushBusybox(t, "library/busybox", "plugin")
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{"docker.io": {reg.URL()}}})
	ctd := harness.StartContainerdWith(t, harness.ContainerdOptions{
		DisabledPlugins: []string{"io.containerd.content.v1.content"},
		ExtraConfig:     fmt.Sprintf("[proxy_plugins.lifeboat-content]\n  type = \"content\"\n  address = %q\n", lb.Socket),
	})
	hosts := lb.MirrorHostsDir(t, "docker.io")
	const ref = "docker.io/library/busybox:plugin"

	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)
	want := append([]string{harness.Digest(t, img)}, harness.LayerDigests(t, img)...)
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, cfg.String())
	for _, d := range want {
		if _, err := os.Stat(filepath.Join(lb.Root, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))); err != nil {
			t.Errorf("%s is not in lifeboat's cache: %v", d, err)
		}
		if !ctd.ContentDigests(t)[d] {
			t.Errorf("containerd does not list %s", d)
		}
	}
	// One copy on disk: containerd keeps no blobs of its own.
	if entries, _ := os.ReadDir(filepath.Join(ctd.Root(), "io.containerd.content.v1.content", "blobs", "sha256")); len(entries) > 0 {
		t.Errorf("containerd stored %d blobs of its own besides lifeboat's", len(entries))
	}
	token := strings.ToLower(rand.Text())[:12]
	if out := ctd.MustCtr(t, "run", "--rm", ref, "plugin-"+token, "/bin/echo", token); !strings.Contains(out, token) {
		t.Fatalf("ctr run printed %q", out)
	}

	// containerd's garbage collector deletes what no image references; lifeboat keeps it.
	ctd.MustCtr(t, "images", "rm", "--sync", ref)
	for _, d := range want {
		if _, err := os.Stat(filepath.Join(lb.Root, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))); err != nil {
			t.Errorf("containerd's garbage collection removed %s from lifeboat's cache", d)
		}
	}

	// The registry goes away: the image pulls again from lifeboat alone.
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)

	// lifeboat restarts under a running containerd: content operations recover.
	lb.Restart(t)
	harness.WaitFor(t, "containerd to reach lifeboat's content store again", 20*time.Second, nil, func() error {
		out, err := ctd.Ctr(t, "content", "ls", "--quiet")
		if err != nil {
			return err
		}
		if !strings.Contains(out, want[0]) {
			return fmt.Errorf("content ls lacks %s", want[0])
		}
		return nil
	})
}
