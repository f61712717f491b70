package integration

import (
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
	fwd.ModifyResponse = func(resp *http.Response) error {
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
		for _, l := range harness.LayerDigests(t, images[mode]) {
			hex := strings.TrimPrefix(l, "sha256:")
			if _, err := os.Stat(filepath.Join(lb.Root, "blobs", "sha256", hex)); !os.IsNotExist(err) {
				t.Errorf("%s upstream: layer %s is in the cache (%v)", mode, l, err)
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
