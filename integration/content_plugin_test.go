package integration

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// configuredProxyPlugins is the containerd configuration `lifeboat configure containerd
// --proxy-plugins` prints, taken from its output, so that what users copy is what is tested.
func configuredProxyPlugins(t *testing.T, lb *harness.Lifeboat) harness.ContainerdOptions {
	t.Helper()
	out, err := exec.Command(harness.BuildLifeboat(t), "configure", "containerd", "--dry-run",
		"--hosts-dir", t.TempDir(), "--registry", "docker.io", "--proxy-plugins", "--socket", lb.Socket).CombinedOutput()
	if err != nil {
		t.Fatalf("configure containerd: %v\n%s", err, out)
	}
	text := string(out)
	start := strings.Index(text, "disabled_plugins = ")
	end := strings.Index(text, "Then pull with")
	if start < 0 || end < start {
		t.Fatalf("configure containerd --proxy-plugins printed no containerd config:\n%s", text)
	}
	block := text[start:end]
	first, rest, _ := strings.Cut(block, "\n")
	var opts harness.ContainerdOptions
	for _, m := range regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(first, -1) {
		opts.DisabledPlugins = append(opts.DisabledPlugins, m[1])
	}
	opts.ExtraConfig = rest
	return opts
}

// blobBytesOnDisk is the size of everything under lifeboat's blobs/ directory.
func blobBytesOnDisk(t *testing.T, root string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(filepath.Join(root, "blobs"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// TestBothProxyPlugins runs containerd with lifeboat as its content store and snapshotter, as
// an operator who wants one copy of every blob on the node and offline-proof unpacking would.
func TestBothProxyPlugins(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	img := reg.PushBusybox(t, "library/busybox", "plugin")
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {reg.URL()}},
		Metrics:   true,
	})
	ctd := harness.StartContainerdWith(t, configuredProxyPlugins(t, lb))
	hosts := lb.MirrorHostsDir(t, "docker.io")
	const ref = "docker.io/library/busybox:plugin"

	ctd.MustCtr(t, "images", "pull", "--snapshotter", "lifeboat", "--hosts-dir", hosts, ref)
	// The first pull fetched the config through the mirror: the blob series is exported under
	// this name and label, so its absence after the restart below means none was asked for.
	if n := lb.Metric(t, "lifeboat_mirror_requests_total", map[string]string{"route": "blob"}); n < 1 {
		t.Errorf("%v blob requests reached the mirror during the first pull, want the config at least", n)
	}

	// Every blob of the image is in lifeboat's cache, once: the bytes on disk are the image's.
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	layers := harness.LayerDigests(t, img)
	blobs := append([]string{harness.Digest(t, img), cfg.String()}, layers...)
	var imageBytes int64
	listed := ctd.ContentDigests(t)
	for i, d := range blobs {
		fi, err := os.Stat(filepath.Join(lb.Root, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")))
		if err != nil {
			t.Fatalf("%s is not in lifeboat's cache: %v", d, err)
		}
		imageBytes += fi.Size()
		// containerd records the manifest and config it fetched through the content store; the
		// layers it never fetched: the snapshotter applied them from lifeboat's cache.
		if isLayer := i >= 2; listed[d] == isLayer {
			t.Errorf("containerd lists %s: %v, want %v", d, listed[d], !isLayer)
		}
	}
	if got := blobBytesOnDisk(t, lb.Root); got != imageBytes {
		t.Errorf("%d bytes of blobs under lifeboat's root for an image of %d: not one copy each", got, imageBytes)
	}
	if entries, _ := os.ReadDir(filepath.Join(ctd.Root(), "io.containerd.content.v1.content", "blobs", "sha256")); len(entries) > 0 {
		t.Errorf("containerd stored %d blobs of its own besides lifeboat's", len(entries))
	}
	token := strings.ToLower(rand.Text())[:12]
	if out := ctd.MustCtr(t, "run", "--rm", "--snapshotter", "lifeboat", ref, "plugin-"+token, "/bin/echo", token); !strings.Contains(out, token) {
		t.Fatalf("ctr run printed %q", out)
	}

	// containerd's garbage collection deletes what no image references; lifeboat keeps it.
	ctd.MustCtr(t, "images", "rm", "--sync", ref)
	if got := blobBytesOnDisk(t, lb.Root); got != imageBytes {
		t.Errorf("after containerd's garbage collection lifeboat holds %d bytes of blobs, want %d", got, imageBytes)
	}

	// lifeboat restarts under a running containerd, and the registry goes away: the image pulls
	// again from lifeboat alone, without a single blob crossing the mirror.
	lb.Restart(t)
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "containerd to reach lifeboat's content store again", 20*time.Second, nil, func() error {
		_, err := ctd.Ctr(t, "content", "ls", "--quiet")
		return err
	})
	ctd.MustCtr(t, "images", "pull", "--snapshotter", "lifeboat", "--hosts-dir", hosts, ref)
	// The counters restarted with lifeboat: the tag resolution of this pull moved them, so the
	// window is observed, and not one blob request was counted in it.
	if n := lb.Metric(t, "lifeboat_mirror_requests_total", map[string]string{"route": "tag"}); n < 1 {
		t.Errorf("%v tag requests reached the mirror during the pull after the restart: the window was not observed", n)
	}
	if n := lb.MetricOrZero(t, "lifeboat_mirror_requests_total", map[string]string{"route": "blob"}); n != 0 {
		t.Errorf("%v blob requests reached the mirror for an image lifeboat already holds", n)
	}
	token = strings.ToLower(rand.Text())[:12]
	if out := ctd.MustCtr(t, "run", "--rm", "--snapshotter", "lifeboat", ref, "offline-"+token, "/bin/echo", token); !strings.Contains(out, token) {
		t.Fatalf("ctr run after the restart printed %q", out)
	}
}
