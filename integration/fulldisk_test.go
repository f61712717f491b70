package integration

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestFullDisk puts lifeboat's root on a small tmpfs and pulls more than fits: eviction makes
// room for each new image, content larger than the disk fails with a clear error, nothing already
// cached is damaged, and the daemon keeps serving.
func TestFullDisk(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })

	reg := harness.StartRegistry(t)
	// No max_size: the budget is 80% of the tmpfs, taken at first start.
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {reg.URL()}},
		Root:      filepath.Join(dir, "root"),
		MaxSize:   "auto",
		Metrics:   true,
	})

	// Eight images of 8 MiB each: twice what the disk holds once the budget is taken off.
	for i := range 8 {
		repo := fmt.Sprintf("library/fill%d", i)
		img := reg.PushRandom(t, repo, "1", 1, 8<<20)
		if err := pullThrough(t.Context(), lb, repo, img, nil); err != nil {
			t.Fatalf("image %d of 8 did not fit after eviction: %v", i+1, err)
		}
	}
	t.Logf("tried: 8 images of 8 MiB through lifeboat on a 48 MiB tmpfs; found: all pulled, %v blobs evicted",
		lb.Metric(t, "lifeboat_cache_evicted_blobs_total", nil))

	// Larger than the whole disk: a clear error, before any byte is sent.
	big := reg.PushRandom(t, "library/huge", "1", 1, 64<<20)
	layers, _ := big.Layers()
	ld, _ := layers[0].Digest()
	resp, err := http.Get(lb.URL() + "/v2/library/huge/blobs/" + ld.String() + "?ns=docker.io")
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 512)
	n, _ := resp.Body.Read(body)
	resp.Body.Close()
	t.Logf("tried: a 64 MiB blob, larger than the disk; found: %s %s", resp.Status, strings.TrimSpace(string(body[:n])))
	if resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(body[:n]), "budget") {
		t.Errorf("a blob larger than the cache: %s %s, want 507 naming the budget", resp.Status, body[:n])
	}

	// Still serving; the last images are intact and a new one still fits.
	last := reg.PushRandom(t, "library/after", "1", 1, 4<<20)
	if err := pullThrough(t.Context(), lb, "library/after", last, nil); err != nil {
		t.Fatalf("after the refused blob: %v", err)
	}
	if err := lb.Process().Stop(15e9); err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(t.Context(), lb.Root, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rep, err := store.Verify(t.Context(), false)
	used, budget := store.Usage()
	t.Logf("found: verify checked %d blobs: %d corrupt, %d missing; %d of %d budget bytes used",
		rep.Checked, len(rep.Corrupt), len(rep.Missing), used, budget)
	if err != nil || len(rep.Corrupt)+len(rep.Missing) > 0 {
		t.Errorf("verify after filling the disk: %+v %v", rep, err)
	}
	if used > budget {
		t.Errorf("%d bytes cached over a budget of %d", used, budget)
	}
	if _, err := store.GetRef(t.Context(), "docker.io/library/fill0:1"); err == nil {
		t.Error("the least recently used image was not evicted although twice the disk was pulled")
	}
	if _, err := store.GetRef(t.Context(), "docker.io/library/after:1"); err != nil {
		t.Errorf("the newest image is not cached: %v", err)
	}
}
