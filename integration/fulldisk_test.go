package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestFullDisk puts lifeboat's root on a small tmpfs and pulls more than fits: eviction makes
// room for each new image, content larger than the disk fails with a clear error, nothing already
// cached is damaged, and the daemon keeps serving. Then the disk really fills up, with a file
// outside the cache, in the middle of two downloads: both fail without serving or keeping a
// partial blob, cached images still serve, a blob larger than the space left is refused up
// front, and once the file is gone the same pulls succeed.

// noRoom is the mirror's sentence for a 507: what does not fit is said in lifeboat's log, not to
// the client.
const noRoom = "the cache has no room for this content"

func TestFullDisk(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", dir).CombinedOutput(); err != nil {
		harness.CannotRun(t, "cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })

	reg := harness.StartRegistry(t)
	// Between lifeboat and the registry: holds the bodies of the blobs named in heldBlobs after
	// their first bytes, until hold is closed, so that the disk can be filled mid-download.
	var heldBlobs atomic.Value
	heldBlobs.Store([]string(nil))
	hold := make(chan struct{})
	var release sync.Once
	upstream := holdingForwarder(t, reg.URL(), func(path string, _ int64) bool {
		for _, d := range heldBlobs.Load().([]string) {
			if strings.HasSuffix(path, "/blobs/"+d) {
				return true
			}
		}
		return false
	}, fullDiskHeldBytes, hold)
	t.Cleanup(func() { release.Do(func() { close(hold) }) }) // before the forwarder closes
	// No max_size: the budget is 80% of the tmpfs, taken at first start.
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {upstream}},
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
	// The answer gives the class of the failure; the detail (which limit) is in the log.
	if resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(body[:n]), noRoom) || !strings.Contains(lb.Log(), "budget") {
		t.Errorf("a blob larger than the cache: %s %s, want 507 saying %q, and the log naming the budget", resp.Status, body[:n], noRoom)
	}

	// Still serving; the last images are intact and a new one still fits.
	last := reg.PushRandom(t, "library/after", "1", 1, 4<<20)
	if err := pullThrough(t.Context(), lb, "library/after", last, nil); err != nil {
		t.Fatalf("after the refused blob: %v", err)
	}

	fillDiskMidDownload(t, lb, reg, dir, &heldBlobs, func() { release.Do(func() { close(hold) }) }, last)

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

// fullDiskHeldBytes is how much of a blob the full-disk drill lets lifeboat write before it
// fills the disk.
const fullDiskHeldBytes = 128 << 10

// fillDiskMidDownload starts two cold downloads through lifeboat, one small enough that lifeboat
// verifies it before answering and one it streams, lets their first bytes reach lifeboat's disk,
// fills the rest of the disk with a file outside the cache root (in dir, the tmpfs), and lets the
// downloads go on into ENOSPC. cached is an image lifeboat holds, which must still serve. Then it
// removes the file and pulls both images again.
func fillDiskMidDownload(t *testing.T, lb *harness.Lifeboat, reg *harness.Registry, dir string, heldBlobs *atomic.Value, release func(), cached v1.Image) {
	small := reg.PushRandom(t, "library/enospc-small", "1", 1, 512<<10)
	large := reg.PushRandom(t, "library/enospc-large", "1", 1, 4<<20)
	smallLayer := harness.LayerDigests(t, small)[0]
	largeLayer := harness.LayerDigests(t, large)[0]
	heldBlobs.Store([]string{smallLayer, largeLayer})
	ingestDir := filepath.Join(lb.Root, "ingest")

	type answer struct {
		status int
		body   string
	}
	smallGot, largeGot := make(chan answer, 1), make(chan answer, 1)
	go func() {
		status, body := getBlob(lb, "library/enospc-small", smallLayer)
		smallGot <- answer{status, body}
	}()
	go func() {
		status, body := getBlob(lb, "library/enospc-large", largeLayer)
		largeGot <- answer{status, body}
	}()
	harness.WaitFor(t, "both downloads to have their first bytes on lifeboat's disk", time.Minute, nil, func() error {
		ents, err := os.ReadDir(ingestDir)
		if err != nil {
			return err
		}
		n := 0
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Size() >= fullDiskHeldBytes {
				n++
			}
		}
		if n < 2 {
			return fmt.Errorf("%d of 2 ingests have %d bytes", n, fullDiskHeldBytes)
		}
		return nil
	})

	filler := filepath.Join(dir, "filler")
	filled := fillUp(t, filler)
	t.Cleanup(func() { os.Remove(filler) })
	t.Logf("tried: filled the disk with a %d-byte file outside the cache root while two downloads were in progress; %d bytes left free",
		filled, freeBytes(t, dir))
	release()

	s := <-smallGot
	t.Logf("found: the small layer (verified before answering): %d %s", s.status, s.body)
	if s.status != http.StatusInsufficientStorage || !strings.Contains(s.body, noRoom) || !strings.Contains(lb.Log(), "filesystem is full") {
		t.Errorf("the small layer on a full disk answered %d %s, want 507 saying %q, and the log saying the filesystem is full", s.status, s.body, noRoom)
	}
	l := <-largeGot
	t.Logf("found: the large layer (streamed): %d %s", l.status, l.body)
	if strings.HasPrefix(l.body, "bytes hash to "+largeLayer) {
		t.Errorf("the large layer was served whole although the disk filled up during its download")
	}
	if l.status == http.StatusOK && !strings.HasPrefix(l.body, "reading the body broke") {
		t.Errorf("the large layer on a full disk: a 200 whose body ended cleanly (%s); a broken transfer must look broken", l.body)
	}
	harness.WaitFor(t, "the failed downloads to leave no ingest", 30*time.Second, nil, func() error {
		if n, b := dirUsage(t, ingestDir); n > 0 {
			return fmt.Errorf("%d ingests (%d bytes) left", n, b)
		}
		return nil
	})
	for _, d := range []string{smallLayer, largeLayer} {
		if _, err := os.Stat(filepath.Join(lb.Root, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))); !os.IsNotExist(err) {
			t.Errorf("layer %s is in the cache after its download hit a full disk (%v)", d, err)
		}
	}

	// The disk is still full: what is cached still serves.
	if err := pullThrough(t.Context(), lb, "library/after", cached, nil); err != nil {
		t.Errorf("a cached image on a full disk: %v", err)
	} else {
		t.Logf("found: the cached image library/after still pulls byte-exact with the disk full")
	}
	// A blob larger than the space left is refused before a byte is written.
	nofree := reg.PushRandom(t, "library/nofree", "1", 1, 2<<20)
	status, body := getBlob(lb, "library/nofree", harness.LayerDigests(t, nofree)[0])
	t.Logf("tried: a 2 MiB layer with %d bytes free; found: %d %s", freeBytes(t, dir), status, body)
	if status != http.StatusInsufficientStorage || !strings.Contains(body, noRoom) || !strings.Contains(lb.Log(), "free on the cache's filesystem") {
		t.Errorf("a blob larger than the free space answered %d %s, want 507 saying %q, and the log naming the free space", status, body, noRoom)
	}

	// Room again: the same pulls succeed.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for repo, img := range map[string]v1.Image{"library/enospc-small": small, "library/enospc-large": large} {
		if err := pullThrough(t.Context(), lb, repo, img, nil); err != nil {
			t.Errorf("%s once the disk has room again: %v", repo, err)
		} else {
			t.Logf("found: %s pulls byte-exact once the filler is gone", repo)
		}
	}
}

// getLayer GETs a docker.io blob through the mirror: body is the error answer, or for a 200 what
// the bytes hash to ("bytes hash to sha256:...") or how reading them broke.
func getBlob(lb *harness.Lifeboat, repo, dgst string) (status int, body string) {
	resp, err := http.Get(lb.URL() + "/v2/" + repo + "/blobs/" + dgst + "?ns=docker.io")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Sprintf("reading the body broke after %d of %d bytes: %v", n, resp.ContentLength, err)
	}
	return resp.StatusCode, fmt.Sprintf("bytes hash to sha256:%s (%d bytes, X-Lifeboat-Cache: %s)", hex.EncodeToString(h.Sum(nil)), n, resp.Header.Get("X-Lifeboat-Cache"))
}

// fillUp writes path until its filesystem is full and returns how many bytes it holds.
func fillUp(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := f.Write(buf)
		total += int64(n)
		if errors.Is(err, syscall.ENOSPC) {
			return total
		}
		if err != nil {
			t.Fatalf("filling the disk: %v", err)
		}
	}
}

// freeBytes is the space left to unprivileged writers on dir's filesystem.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}
