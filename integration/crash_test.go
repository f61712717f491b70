package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestCrashDuringColdPulls kills lifeboat with SIGKILL while 16 clients pull cold images through
// it, restarts it on the same root, and checks what an operator would: every image then pulls
// byte-exact, nothing in the cache fails verification, and no unfinished download is left.
//
// A forwarder between lifeboat and the registry holds every large blob body after its first
// bytes until the kill, so that the kill lands while layer downloads are in progress (on
// loopback they would otherwise finish in moments), with their partial ingests on disk.
func TestCrashDuringColdPulls(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	const clients = 16
	imgs := make([]v1.Image, clients)
	for i := range imgs {
		imgs[i] = reg.PushRandom(t, fmt.Sprintf("library/crash%d", i), "1", 2, 2<<20)
	}
	hold := make(chan struct{}) // closed once lifeboat is killed: the bodies flow again
	var release sync.Once
	upstream := holdingForwarder(t, reg.URL(), func(_ string, size int64) bool { return size > largeBlob }, crashHeldBytes, hold)
	t.Cleanup(func() { release.Do(func() { close(hold) }) }) // before upstream.Close
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{"docker.io": {upstream}}})

	// The clients pull; once a few large blob answers have started streaming (lifeboat sends
	// the status of a blob larger than it verifies first only when its bytes arrive), lifeboat
	// is killed.
	ctx, cancel := context.WithCancel(t.Context())
	var started, large atomic.Int32
	streaming := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for i, img := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pullThrough(ctx, lb, fmt.Sprintf("library/crash%d", i), img, func(size int64) {
				started.Add(1)
				if size > largeBlob && large.Add(1) == 4 {
					once.Do(func() { close(streaming) })
				}
			})
		}()
	}
	select {
	case <-streaming:
	case <-time.After(2 * time.Minute):
		cancel()
		wg.Wait()
		t.Fatalf("no 4 blob answers larger than %d bytes started streaming within 2 minutes (%d answers started, %d large): nothing to kill lifeboat in the middle of",
			largeBlob, started.Load(), large.Load())
	}
	ingests, ingestBytes := dirUsage(t, filepath.Join(lb.Root, "ingest"))
	lb.Kill(t)
	release.Do(func() { close(hold) })
	cancel()
	wg.Wait()
	t.Logf("tried: SIGKILL of lifeboat while %d clients pulled cold images (%d blob answers had started, %d of them larger than %d bytes; %d unfinished ingests on disk holding %d bytes)",
		clients, started.Load(), large.Load(), largeBlob, ingests, ingestBytes)
	if ingests == 0 {
		t.Fatal("no unfinished ingest on disk at the kill: the crash did not interrupt a download")
	}

	lb.Restart(t)
	exact := 0
	for i, img := range imgs {
		if err := pullThrough(t.Context(), lb, fmt.Sprintf("library/crash%d", i), img, nil); err != nil {
			t.Errorf("after the crash: %v", err)
		} else {
			exact++
		}
	}
	t.Logf("found: after the restart %d of %d images pulled byte-exact", exact, clients)

	// Stop the daemon and inspect its root as `lifeboat verify` would.
	if err := lb.Process().Stop(15e9); err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(t.Context(), lb.Root, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rep, err := store.Verify(t.Context(), false)
	if err != nil {
		t.Fatal(err)
	}
	sts, _ := store.ListStatuses(t.Context())
	t.Logf("found: verify checked %d blobs (%d bytes): %d corrupt, %d missing; %d unfinished downloads",
		rep.Checked, rep.Bytes, len(rep.Corrupt), len(rep.Missing), len(sts))
	if len(rep.Corrupt)+len(rep.Missing) > 0 || rep.Checked == 0 {
		t.Errorf("verify after the crash: %+v", rep)
	}
	if len(sts) != 0 {
		t.Errorf("%d unfinished downloads left behind: %+v", len(sts), sts)
	}
	if n, b := dirUsage(t, filepath.Join(lb.Root, "ingest")); n != 0 {
		t.Errorf("%d ingest files (%d bytes) left behind after the images pulled again", n, b)
	}
}

// largeBlob is lifeboat's verify-first limit (resolver.verifyFirstMax): blobs up to this size
// are verified whole before their answer starts; larger ones stream as they arrive.
const largeBlob = 1 << 20

// crashHeldBytes is how much of a large blob body the crash drill's forwarder lets through.
const crashHeldBytes = 256 << 10

// holdingForwarder serves a forwarder to upstream and returns its URL. Of every blob body for
// which held(path, Content-Length) is true, it lets the first after bytes through, then holds
// the rest until hold is closed. Close hold before the test ends (a t.Cleanup registered after
// this call).
func holdingForwarder(t *testing.T, upstream string, held func(path string, size int64) bool, after int64, hold <-chan struct{}) string {
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	fwd := httputil.NewSingleHostReverseProxy(target)
	fwd.FlushInterval = -1 // pass each byte on at once, so lifeboat holds what was let through
	fwd.ModifyResponse = func(resp *http.Response) error {
		if resp.StatusCode == http.StatusOK && resp.Request.Method == http.MethodGet &&
			strings.Contains(resp.Request.URL.Path, "/blobs/") && held(resp.Request.URL.Path, resp.ContentLength) {
			resp.Body = &heldBody{ReadCloser: resp.Body, left: after, hold: hold, done: resp.Request.Context().Done()}
		}
		return nil
	}
	srv := httptest.NewServer(fwd)
	t.Cleanup(srv.Close)
	return srv.URL
}

// heldBody passes left bytes, then blocks until hold (or done) is closed.
type heldBody struct {
	io.ReadCloser
	left       int64
	hold, done <-chan struct{}
}

func (h *heldBody) Read(p []byte) (int, error) {
	if h.left <= 0 {
		select {
		case <-h.hold:
		case <-h.done:
			return 0, context.Canceled
		}
		return h.ReadCloser.Read(p)
	}
	n, err := h.ReadCloser.Read(p[:min(int64(len(p)), h.left)])
	h.left -= int64(n)
	return n, err
}

// dirUsage counts the files in dir and their bytes.
func dirUsage(t *testing.T, dir string) (files int, bytes int64) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			files++
			bytes += fi.Size()
		}
	}
	return files, bytes
}

// pullThrough GETs an image's manifest and blobs through the mirror and checks every byte
// against its digest. onBlob is called with the Content-Length when a blob answer starts.
func pullThrough(ctx context.Context, lb *harness.Lifeboat, repo string, img v1.Image, onBlob func(size int64)) error {
	d, err := img.Digest()
	if err != nil {
		return err
	}
	if err := fetchVerified(ctx, lb.URL()+"/v2/"+repo+"/manifests/1?ns=docker.io", d.String(), nil); err != nil {
		return err
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return err
	}
	blobs := []string{cfg.String()}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			return err
		}
		blobs = append(blobs, ld.String())
	}
	for _, b := range blobs {
		if err := fetchVerified(ctx, lb.URL()+"/v2/"+repo+"/blobs/"+b+"?ns=docker.io", b, onBlob); err != nil {
			return err
		}
	}
	return nil
}

func fetchVerified(ctx context.Context, url, dgst string, onStart func(size int64)) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if onStart != nil {
		onStart(resp.ContentLength)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
		return fmt.Errorf("GET %s: bytes hash to %s", url, got)
	}
	return nil
}
