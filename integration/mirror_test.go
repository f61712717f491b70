package integration

import (
	"crypto/rand"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestPullSurvivesUpstreamOutage is the promise lifeboat makes, tried as an operator would:
// containerd pulls docker.io images through lifeboat, the registry goes away, the image is
// removed from the node, and pulling and running it again still works. An image that was never
// cached fails fast with a clear error instead of hanging.
func TestPullSurvivesUpstreamOutage(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	img := reg.PushBusybox(t, "library/busybox", "1.36")
	want := harness.Digest(t, img)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {reg.URL()}},
	})
	ctd := harness.StartContainerd(t)
	hosts := lb.MirrorHostsDir(t, "docker.io")
	const ref = "docker.io/library/busybox:1.36"

	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)
	if got := ctd.ImageDigest(t, ref); got != want {
		t.Fatalf("pulled digest %s, pushed %s", got, want)
	}
	if got := cacheHeader(t, lb, "/v2/library/busybox/manifests/1.36?ns=docker.io"); got != "revalidated" {
		t.Errorf("X-Lifeboat-Cache with the upstream up = %q, want revalidated", got)
	}

	// The registry goes down; the node forgets the image.
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatalf("stopping the registry: %v", err)
	}
	ctd.MustCtr(t, "images", "rm", ref)
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)
	if got := ctd.ImageDigest(t, ref); got != want {
		t.Fatalf("pulled digest %s during the outage, pushed %s", got, want)
	}
	if got := cacheHeader(t, lb, "/v2/library/busybox/manifests/1.36?ns=docker.io"); got != "stale" {
		t.Errorf("X-Lifeboat-Cache with the upstream down = %q, want stale", got)
	}
	token := strings.ToLower(rand.Text())
	out := ctd.MustCtr(t, "run", "--rm", ref, "outage-"+token[:12], "/bin/echo", token)
	if !strings.Contains(out, token) {
		t.Fatalf("ctr run printed %q, want the token %q", out, token)
	}

	// Never cached: a clear failure within seconds.
	start := time.Now()
	out, err := ctd.Ctr(t, "images", "pull", "--hosts-dir", hosts, "docker.io/library/never-cached:1")
	if err == nil {
		t.Fatalf("pulling a never-cached image during the outage succeeded: %s", out)
	}
	if took := time.Since(start); took > failFast {
		t.Errorf("the failing pull took %s, want under %s: it waited on something instead of failing", took, failFast)
	}
	if !strings.Contains(err.Error(), "not found") {
		t.Errorf("the failing pull's error does not say what is missing: %v", err)
	}
}

// failFast bounds a pull that must fail at once, as one during an outage of an image never
// cached: a third of the 30 s containerd waits for an answer before it gives up on a host, so a
// lifeboat that held the request (waiting on the upstream) cannot pass, with room for ctr to
// start and for two loaded cores. How long such a pull really takes is a figure of make bench.
const failFast = 10 * time.Second

// cacheHeader asks the mirror directly for a manifest and returns its X-Lifeboat-Cache header.
func cacheHeader(t *testing.T, lb *harness.Lifeboat, path string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodHead, lb.URL()+path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s: %s", path, resp.Status)
	}
	return resp.Header.Get("X-Lifeboat-Cache")
}
