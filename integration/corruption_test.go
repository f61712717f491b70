package integration

import (
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
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestCorruptUpstream puts a forwarder between lifeboat and the registry that damages blob
// bodies: one byte flipped (same length) for one image, bodies cut short for another.
// containerd's pulls through lifeboat fail, no damaged byte is cached or left as an ingest, and
// the digest mismatch metric counts the flipped blob. Once the forwarder is honest, both images
// pull and run.
func TestCorruptUpstream(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	images := map[string]v1.Image{ // by the damage the forwarder does to the image's blobs
		"corrupt":  reg.PushBusybox(t, "library/flipped", "1"),
		"truncate": reg.PushRandom(t, "library/truncated", "1", 2, 1<<20),
	}

	var damage atomic.Value // "corrupt", "truncate" or "" (honest)
	damage.Store("")
	var damaged atomic.Int64
	target, _ := url.Parse(reg.URL())
	fwd := httputil.NewSingleHostReverseProxy(target)
	var watch atomic.Value // a digest whose upstream GETs layerGets counts
	watch.Store("")
	var layerGets atomic.Int64
	fwd.ModifyResponse = func(resp *http.Response) error {
		if d := watch.Load().(string); d != "" && resp.Request.Method == http.MethodGet && strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+d) {
			layerGets.Add(1)
		}
		if resp.StatusCode != http.StatusOK || resp.Request.Method != http.MethodGet || !strings.Contains(resp.Request.URL.Path, "/blobs/") {
			return nil
		}
		switch damage.Load() {
		case "corrupt":
			damaged.Add(1)
			resp.Body = &flipByte{ReadCloser: resp.Body, at: resp.ContentLength / 2}
		case "truncate":
			damaged.Add(1)
			resp.Body = struct {
				io.Reader
				io.Closer
			}{io.LimitReader(resp.Body, resp.ContentLength/2), resp.Body}
		}
		return nil
	}
	upstream := httptest.NewServer(fwd)
	t.Cleanup(upstream.Close)

	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {upstream.URL}},
		Metrics:   true,
	})
	ctd := harness.StartContainerd(t)
	hosts := lb.MirrorHostsDir(t, "docker.io")
	ref := func(mode string) string {
		return map[string]string{"corrupt": "docker.io/library/flipped:1", "truncate": "docker.io/library/truncated:1"}[mode]
	}

	// What a client is told about the damaged config, the first blob that fails. A flipped
	// byte is a 502 naming the failed verification. A short body is an upstream that cannot
	// provide the blob: 404, so that containerd moves on to its next host (here there is none),
	// with lifeboat's reason in the answer's message.
	wantAnswer := map[string]struct {
		status  int
		text    string // in the mirror's answer
		logText string // in lifeboat's log: the answer says no more than the class of the failure
		ctrText string // in ctr's error
	}{
		"corrupt":  {http.StatusBadGateway, "failed verification", "not the requested one", "502 Bad Gateway"},
		"truncate": {http.StatusNotFound, "not obtainable from the upstream registry", "read blob from upstream", "not found"},
	}
	for _, mode := range []string{"corrupt", "truncate"} {
		damage.Store(mode)
		before := damaged.Load()
		mismatches := lb.Metric(t, "lifeboat_digest_mismatches_total", nil)
		out, err := ctd.Ctr(t, "images", "pull", "--hosts-dir", hosts, ref(mode))
		t.Logf("%s upstream: %d blob bodies damaged; the pull: %v", mode, damaged.Load()-before, err)
		if err == nil {
			t.Fatalf("the pull succeeded although the upstream sent %s blobs: %s", mode, out)
		}
		if damaged.Load() == before {
			t.Fatalf("no blob went through the %s forwarder: the test proves nothing", mode)
		}
		cfg := configDigest(t, images[mode])
		if w := wantAnswer[mode]; !strings.Contains(err.Error(), cfg) || !strings.Contains(err.Error(), w.ctrText) {
			t.Errorf("%s upstream: ctr's error does not name the config %s that failed with %q: %v", mode, cfg, w.ctrText, err)
		}
		// The same blob asked of the mirror directly: a clean error answer, before any byte.
		repo := strings.TrimSuffix(strings.TrimPrefix(ref(mode), "docker.io/"), ":1")
		status, body := getBlob(lb, repo, cfg)
		t.Logf("%s upstream: GET of the config %s through the mirror: %d %s", mode, cfg, status, body)
		if w := wantAnswer[mode]; status != w.status || !strings.Contains(body, w.text) || !strings.Contains(lb.Log(), w.logText) {
			t.Errorf("%s upstream: GET of the config answered %d %s, want %d saying %q, and the log %q", mode, status, body, w.status, w.text, w.logText)
		}
		// Nothing of the image is cached: not the config, the blob that fails first, nor a layer.
		for _, d := range append([]string{cfg}, harness.LayerDigests(t, images[mode])...) {
			p := filepath.Join(lb.Root, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("%s upstream: blob %s is in the cache (%v)", mode, d, err)
			}
		}
		harness.WaitFor(t, "the failed fills to leave no ingest", 30*time.Second, nil, func() error {
			if ents, _ := os.ReadDir(filepath.Join(lb.Root, "ingest")); len(ents) > 0 {
				return fmt.Errorf("%d ingests left", len(ents))
			}
			return nil
		})
		got := lb.Metric(t, "lifeboat_digest_mismatches_total", nil) - mismatches
		t.Logf("%s upstream: digest mismatches counted: %v", mode, got)
		if mode == "corrupt" && got < 1 {
			t.Errorf("a flipped byte did not move lifeboat_digest_mismatches_total")
		}
	}

	damage.Store("")
	// The same node pulls both: the flipped blob (the image config, fetched first) is small
	// enough that lifeboat verified it before sending a byte, so containerd holds none of it.
	for _, mode := range []string{"corrupt", "truncate"} {
		ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref(mode))
		if got, want := ctd.ImageDigest(t, ref(mode)), harness.Digest(t, images[mode]); got != want {
			t.Fatalf("pulled %s once the upstream is honest, pushed %s", got, want)
		}
	}
	out := ctd.MustCtr(t, "run", "--rm", ref("corrupt"), "after-corruption", "/bin/echo", "intact")
	if !strings.Contains(out, "intact") {
		t.Errorf("ctr run printed %q", out)
	}
	verify, err := lb.CLI(t, "verify")
	t.Logf("lifeboat verify: %s", strings.TrimSpace(verify))
	if err != nil || !strings.Contains(verify, "0 corrupt, 0 missing") {
		t.Errorf("verify after the damaged upstream: %v %s", err, verify)
	}

	// Rot on lifeboat's disk: one byte of a cached layer flips. verify finds it, --repair drops
	// it, and a pull by a node that does not hold the layer gets it fetched again from the
	// upstream, byte-exact.
	layer := harness.LayerDigests(t, images["truncate"])[0]
	rotten := filepath.Join(lb.Root, "blobs", "sha256", strings.TrimPrefix(layer, "sha256:"))
	flipOnDisk(t, rotten)
	status, body := getBlob(lb, "library/truncated", layer)
	servedRot := status == http.StatusOK && !strings.HasPrefix(body, "bytes hash to "+layer)
	t.Logf("rot: flipped a byte of the cached layer %s; a GET through the mirror before any verify: %d, %s", layer, status, body)
	if servedRot {
		// Not detected on read: lifeboat trusts its files until verify runs. Noted, not failed
		// here: the contract this drill holds the product to is detection by verify.
		t.Logf("rot: FINDING: the mirror served the rotten bytes of %s as a cache hit", layer)
	}
	verify, err = lb.CLI(t, "verify")
	t.Logf("rot: lifeboat verify: %v %s", err, strings.TrimSpace(verify))
	if err == nil || !strings.Contains(verify, "1 corrupt") || !strings.Contains(verify, "corrupt "+layer) {
		t.Fatalf("verify did not report the rotten layer %s: %v %s", layer, err, verify)
	}
	repair, err := lb.CLI(t, "verify", "--repair")
	t.Logf("rot: lifeboat verify --repair: %s", strings.TrimSpace(repair))
	if !strings.Contains(repair, "repaired") {
		t.Fatalf("verify --repair did not repair: %v %s", err, repair)
	}
	if _, err := os.Stat(rotten); !os.IsNotExist(err) {
		t.Errorf("the rotten layer is still in blobs/ after the repair (%v)", err)
	}

	ctd.MustCtr(t, "images", "rm", "--sync", ref("truncate"))
	if ctd.ContentDigests(t)[layer] {
		ctd.MustCtr(t, "content", "rm", layer)
	}
	if ctd.ContentDigests(t)[layer] {
		t.Fatalf("containerd still holds %s: the pull would not ask lifeboat for it", layer)
	}
	watch.Store(layer)
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref("truncate"))
	refetched := layerGets.Load()
	content := ctd.MustCtr(t, "content", "get", layer)
	h := sha256.Sum256([]byte(content))
	got := "sha256:" + hex.EncodeToString(h[:])
	t.Logf("rot: after the repair, ctr pulled again: lifeboat fetched the layer from the upstream %d times; containerd holds %d bytes hashing to %s",
		refetched, len(content), got)
	if refetched == 0 {
		t.Errorf("lifeboat did not fetch the repaired layer again from the upstream")
	}
	if got != layer {
		t.Errorf("containerd holds bytes hashing to %s for layer %s", got, layer)
	}
	verify, err = lb.CLI(t, "verify")
	t.Logf("rot: lifeboat verify after the pull: %s", strings.TrimSpace(verify))
	if err != nil || !strings.Contains(verify, "0 corrupt, 0 missing") {
		t.Errorf("verify after re-fetching the rotten layer: %v %s", err, verify)
	}
}

// configDigest is the digest of an image's config blob.
func configDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// flipOnDisk inverts the middle byte of the file at path, in place.
func flipOnDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
}

// flipByte inverts the byte at offset at as it passes.
type flipByte struct {
	io.ReadCloser
	at, off int64
}

func (f *flipByte) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if i := f.at - f.off; i >= 0 && i < int64(n) {
		p[i] ^= 0xff
	}
	f.off += int64(n)
	return n, err
}
