package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestLoad has 200 clients hammer the mirror at once, mixing tag resolutions, cached and
// uncached manifests and blobs (a new image first requested every second), for LIFEBOAT_LOAD_DURATION (8s by default; `make soak` runs it
// for 60s). Nothing may answer 5xx, every byte must verify, and lifeboat's memory must stay
// bounded.
func TestLoad(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	duration := 8 * time.Second
	if v := os.Getenv("LIFEBOAT_LOAD_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("LIFEBOAT_LOAD_DURATION: %v", err)
		}
		duration = d
	}

	reg := harness.StartRegistry(t)
	type image struct {
		repo  string
		blobs []string
		dgst  string
		size  int64 // of the manifest and every blob
	}
	var imgs []image
	for i := range 24 {
		repo := fmt.Sprintf("library/load%d", i)
		img := reg.PushRandom(t, repo, "1", 2, 256<<10)
		imgs = append(imgs, image{repo: repo, blobs: blobDigests(t, img), dgst: harness.Digest(t, img), size: imageBytes(t, img)})
	}
	// Fresh images, one a second of the run, each first requested once its second comes: the
	// misses go on for the whole run, not only until the first images are cached.
	var fresh []image
	for i := range max(1, int(duration/time.Second)) {
		repo := fmt.Sprintf("library/fresh%d", i)
		img := reg.PushRandom(t, repo, "1", 2, 256<<10)
		fresh = append(fresh, image{repo: repo, blobs: blobDigests(t, img), dgst: harness.Digest(t, img), size: imageBytes(t, img)})
	}
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{"docker.io": {reg.URL()}}})
	// Half the images are cached before the load starts; the rest are first fetched under it.
	for _, im := range imgs[:len(imgs)/2] {
		for _, b := range im.blobs {
			if err := fetchVerified(t.Context(), lb.URL()+"/v2/"+im.repo+"/blobs/"+b+"?ns=docker.io", b, nil); err != nil {
				t.Fatal(err)
			}
		}
	}

	// lifeboat's own footprint, started and warm, before the load: what the bound below adds to.
	baseRSS := peakRSS(t, lb.Process().Pid())

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(t.Context(), duration)
	defer cancel()
	start := time.Now()
	// pick chooses an image: a quarter of the time the newest fresh image whose second has
	// come, else any of the first ones.
	pick := func(rng *rand.Rand) image {
		if n := min(len(fresh), int(time.Since(start)/time.Second)+1); rng.IntN(4) == 0 {
			return fresh[n-1]
		}
		return imgs[rng.IntN(len(imgs))]
	}
	var requests, serverErrors, corrupt, otherErrors, misses, lateMisses atomic.Int64
	var firstErr sync.Once
	var firstErrMsg atomic.Value
	note := func(err error) {
		otherErrors.Add(1)
		firstErr.Do(func() { firstErrMsg.Store(err.Error()) })
	}
	var wg sync.WaitGroup
	for c := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for ctx.Err() == nil {
				im := pick(rng)
				var url, want string
				method := http.MethodGet
				switch rng.IntN(3) {
				case 0: // tag resolution, as containerd starts a pull
					url, method = lb.URL()+"/v2/"+im.repo+"/manifests/1?ns=docker.io", http.MethodHead
				case 1:
					url, want = lb.URL()+"/v2/"+im.repo+"/manifests/"+im.dgst+"?ns=docker.io", im.dgst
				default:
					b := im.blobs[rng.IntN(len(im.blobs))]
					url, want = lb.URL()+"/v2/"+im.repo+"/blobs/"+b+"?ns=docker.io", b
				}
				req, _ := http.NewRequestWithContext(ctx, method, url, nil)
				req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						note(err)
					}
					continue
				}
				requests.Add(1)
				if resp.Header.Get("X-Lifeboat-Cache") == "miss" {
					misses.Add(1)
					if time.Since(start) > duration/2 {
						lateMisses.Add(1)
					}
				}
				if resp.StatusCode >= 500 {
					serverErrors.Add(1)
					firstErr.Do(func() { firstErrMsg.Store(fmt.Sprintf("%s %s: %s", method, url, resp.Status)) })
				}
				if want != "" && resp.StatusCode == http.StatusOK {
					h := sha256.New()
					if _, err := io.Copy(h, resp.Body); err != nil {
						if ctx.Err() == nil {
							note(fmt.Errorf("%s: %w", url, err))
						}
					} else if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want {
						corrupt.Add(1)
					}
				} else if resp.StatusCode != http.StatusOK {
					note(fmt.Errorf("%s %s: %s", method, url, resp.Status))
				}
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()

	// What the load justifies, on top of the footprint before it: every blob of the run held in
	// memory at once (the working set, which lifeboat streams and need not hold at all) plus,
	// per client connection, a goroutine stack, bufio reader and writer, a 32 KiB copy buffer
	// and the request's state, with as much again for a fill's upstream side (128 KiB in all,
	// rounded up); twice over, because the Go heap grows to twice its live data (GOGC=100)
	// before it is collected. Measured: about 20 MiB over the start-up footprint, a quarter
	// of the allowance. A lifeboat that buffers whole blobs per request, or keeps what it
	// served, goes past it.
	var workingSet int64
	for _, im := range append(imgs, fresh...) {
		workingSet += im.size
	}
	const perClient = 128 << 10
	bound := baseRSS + 2*(workingSet+200*perClient)
	rss := peakRSS(t, lb.Process().Pid())
	t.Logf("%d requests in %s from 200 clients, %d answered as misses (%d in the second half); lifeboat's peak RSS %d MiB (%d MiB before the load; bound %d MiB for a working set of %d MiB)",
		requests.Load(), duration, misses.Load(), lateMisses.Load(), rss>>20, baseRSS>>20, bound>>20, workingSet>>20)
	if lateMisses.Load() == 0 {
		t.Error("no request in the second half of the run was a miss: the load did not mix misses in throughout")
	}
	if serverErrors.Load() > 0 || corrupt.Load() > 0 || otherErrors.Load() > 0 {
		t.Errorf("%d 5xx answers, %d corrupt bodies, %d other failures (first: %v)",
			serverErrors.Load(), corrupt.Load(), otherErrors.Load(), firstErrMsg.Load())
	}
	if requests.Load() < 1000 {
		t.Errorf("only %d requests completed: the mirror is not keeping up", requests.Load())
	}
	if rss > bound {
		t.Errorf("lifeboat's peak RSS is %d MiB under load, want under %d MiB: %d MiB before the load + 2 × (%d MiB of blobs + 200 clients × %d KiB)",
			rss>>20, bound>>20, baseRSS>>20, workingSet>>20, perClient>>10)
	}
}

// blobDigests lists an image's config and layer digests.
func blobDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{cfg.String()}, harness.LayerDigests(t, img)...)
}

// imageBytes is the size of an image's manifest, config and layers.
func imageBytes(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	n := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// peakRSS reads a process's peak resident set size (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
