package integration

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestUnverifiedLayerNeverCompletes: an upstream sends an 8 MiB layer with one byte flipped and
// the length right, until it is fixed. lifeboat holds a blob of that size whole until its digest verified
// ([cache] verify_before_send, 1 GiB by default): containerd receives no byte of the bad
// download, so it keeps nothing of it (it would commit what it kept again, without fetching, on
// every later pull). The pull fails, and the next pull, the upstream honest again, succeeds with
// no cleanup by hand. Through hosts.toml alone, and with lifeboat as containerd's content store
// too.
func TestUnverifiedLayerNeverCompletes(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	for _, tc := range []struct {
		name          string
		contentPlugin bool
		// once: the upstream damages only the first download of the layer. Within the first
		// pull, lifeboat or containerd then tries again and gets good bytes: a client that
		// kept any of the bad ones (containerd resumes at the byte it stopped at) would hold a
		// download that never verifies. Else it damages every download until it is fixed.
		once bool
	}{
		{"hosts.toml, damaged until fixed", false, false},
		{"hosts.toml, damaged once", false, true},
		{"content plugin, damaged until fixed", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := harness.StartRegistry(t)
			img := reg.PushRandom(t, "library/bigbad", "1", 1, 8<<20)
			layer := harness.LayerDigests(t, img)[0]

			// The upstream damages the layer while broken is set: every GET of it, however often
			// lifeboat or containerd tries again within the first pull.
			var damaged, layerGets atomic.Int64
			var broken atomic.Bool
			broken.Store(true)
			target, _ := url.Parse(reg.URL())
			fwd := httputil.NewSingleHostReverseProxy(target)
			fwd.ModifyResponse = func(resp *http.Response) error {
				if resp.Request.Method != http.MethodGet || !strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+layer) {
					return nil
				}
				if layerGets.Add(1); broken.Load() && resp.StatusCode == http.StatusOK {
					if tc.once {
						broken.Store(false)
					}
					damaged.Add(1)
					resp.Body = &flipByte{ReadCloser: resp.Body, at: resp.ContentLength / 2}
				}
				return nil
			}
			upstream := httptest.NewServer(fwd)
			t.Cleanup(upstream.Close)

			lb := harness.StartLifeboat(t, harness.LifeboatOptions{
				Upstreams: map[string][]string{"docker.io": {upstream.URL}},
				Metrics:   true,
			})
			var ctd *harness.Containerd
			if tc.contentPlugin {
				ctd = harness.StartContainerdWith(t, configuredProxyPlugins(t, lb))
			} else {
				ctd = harness.StartContainerd(t)
			}
			hosts := lb.MirrorHostsDir(t, "docker.io")
			const ref = "docker.io/library/bigbad:1"

			out, err := ctd.Ctr(t, "images", "pull", "--hosts-dir", hosts, ref)
			t.Logf("first pull, the layer damaged (%d damaged of %d GETs of it): %v", damaged.Load(), layerGets.Load(), err)
			if damaged.Load() == 0 {
				t.Fatal("the layer was never damaged: the test proves nothing")
			}
			if err == nil && !tc.once {
				t.Fatalf("the pull succeeded although the layer failed verification: %s", out)
			}
			if err == nil {
				if got, want := ctd.ImageDigest(t, ref), harness.Digest(t, img); got != want {
					t.Fatalf("the first pull gave %s, pushed %s", got, want)
				}
			}
			if got := lb.Metric(t, "lifeboat_digest_mismatches_total", nil); got != float64(damaged.Load()) {
				t.Errorf("lifeboat_digest_mismatches_total %v, want %d (every damaged download)", got, damaged.Load())
			}

			// containerd holds no byte of the bad download: a partial download it kept would be
			// resumed, or committed again without fetching, by its next pull. (With the content
			// plugin, containerd's downloads are lifeboat's own ingests.)
			if held := heldBytes(t, ctd, layer); !tc.contentPlugin && held != "" {
				t.Errorf("after the first pull containerd holds %s of the layer that failed verification", held)
			}
			broken.Store(false) // the upstream is fixed; containerd's state is left as it is

			out, err = ctd.Ctr(t, "images", "pull", "--hosts-dir", hosts, ref)
			if err != nil {
				t.Fatalf("the second pull, the upstream honest: %v\n%s", err, out)
			}
			if got, want := ctd.ImageDigest(t, ref), harness.Digest(t, img); got != want {
				t.Fatalf("pulled %s, pushed %s", got, want)
			}
			t.Logf("second pull succeeded; the layer was fetched from the upstream %d times in all", layerGets.Load())
		})
	}
}

// heldBytes is the size containerd's `ctr content active` shows for its download of the blob
// dgst ("8.39MB"), or "" when it holds none or an empty one.
func heldBytes(t *testing.T, ctd *harness.Containerd, dgst string) string {
	t.Helper()
	out := ctd.MustCtr(t, "content", "active")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.HasSuffix(f[0], dgst) && f[1] != "0B" {
			return f[1]
		}
	}
	return ""
}
