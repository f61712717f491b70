package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestCrashDuringColdPulls kills lifeboat with SIGKILL while 16 clients pull cold images through
// it, restarts it on the same root, and checks what an operator would: every image then pulls
// byte-exact, nothing in the cache fails verification, and no unfinished download is left.
func TestCrashDuringColdPulls(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	const clients = 16
	imgs := make([]v1.Image, clients)
	for i := range imgs {
		imgs[i] = reg.PushRandom(t, fmt.Sprintf("library/crash%d", i), "1", 2, 2<<20)
	}
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{"docker.io": {reg.URL()}}})

	// The clients pull; once a few blob answers have started streaming, lifeboat is killed.
	ctx, cancel := context.WithCancel(t.Context())
	var started atomic.Int32
	streaming := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for i, img := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pullThrough(ctx, lb, fmt.Sprintf("library/crash%d", i), img, func() {
				if started.Add(1) == 4 {
					once.Do(func() { close(streaming) })
				}
			})
		}()
	}
	<-streaming
	lb.Kill(t)
	cancel()
	wg.Wait()
	t.Logf("tried: SIGKILL of lifeboat while %d clients pulled cold images (%d blob answers had started)", clients, started.Load())

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
}

// pullThrough GETs an image's manifest and blobs through the mirror and checks every byte
// against its digest. onBlob is called when a blob answer starts.
func pullThrough(ctx context.Context, lb *harness.Lifeboat, repo string, img v1.Image, onBlob func()) error {
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

func fetchVerified(ctx context.Context, url, dgst string, onStart func()) error {
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
		onStart()
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
