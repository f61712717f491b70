package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestFallbackWhenLifeboatIsDown checks the promise of the default hosts.toml (`lifeboat
// configure containerd`, fail-open): pulls go through lifeboat; when lifeboat is not running,
// containerd pulls from the registry itself, at once (a stopped lifeboat refuses connections);
// and once lifeboat is back, pulls go through it again.
func TestFallbackWhenLifeboatIsDown(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{reg.Host(): {reg.URL()}},
		Metrics:   true,
	})
	ctd := harness.StartContainerd(t)

	hostsDir := lb.ConfigureHosts(t, "upstream", reg.Host())
	if b, err := os.ReadFile(filepath.Join(hostsDir, reg.Host(), "hosts.toml")); err != nil || strings.Contains(string(b), fmt.Sprintf("server = %q", lb.URL())) {
		t.Fatalf("configure's default hosts.toml: %v, want the fail-open form:\n%s", err, b)
	}

	const repo = "fallback/app"
	imgs := map[string]string{}
	for _, tag := range []string{"before", "down", "back"} {
		imgs[tag] = harness.Digest(t, reg.PushRandom(t, repo, tag, 2, 64<<10))
	}
	// blobsServed is how many blobs lifeboat's mirror has answered with 200 since it started:
	// none (no series) right after a start. Each use below wants at least 3, so a series
	// renamed or never exported fails the test.
	blobsServed := func() float64 {
		return lb.MetricOrZero(t, "lifeboat_mirror_requests_total", map[string]string{"route": "blob", "method": "GET", "code": "200"})
	}
	pull := func(tag string) time.Duration {
		t.Helper()
		ref := reg.Ref(repo, tag)
		start := time.Now()
		ctd.MustCtr(t, "images", "pull", "--hosts-dir", hostsDir, ref)
		took := time.Since(start)
		if got := ctd.ImageDigest(t, ref); got != imgs[tag] {
			t.Fatalf("pulled %s as %s, pushed %s", ref, got, imgs[tag])
		}
		return took
	}

	// Through lifeboat: a config and two layers.
	pull("before")
	if n := blobsServed(); n < 3 {
		t.Fatalf("lifeboat served %v blobs for the first pull, want 3: containerd went around it", n)
	}

	// lifeboat is down: containerd goes to the registry itself, without waiting.
	lb.Kill(t)
	took := pull("down")
	t.Logf("with lifeboat down, the pull fell back to the registry and took %s", took.Round(time.Millisecond))
	// "At once" means without waiting out containerd's 30 s for an answer from the mirror; how
	// the fallback pull compares with a pull straight from the registry is measured by make
	// bench.
	if took > failFast {
		t.Errorf("the pull with lifeboat down took %s, want under %s: the fallback waited on the dead mirror", took, failFast)
	}

	// lifeboat is back: pulls go through it again.
	lb.Restart(t)
	before := blobsServed()
	pull("back")
	if n := blobsServed() - before; n < 3 {
		t.Errorf("lifeboat served %v blobs for the pull after its restart, want 3: containerd went around it", n)
	}
	if got, err := mirrorHead(t, lb, "/v2/"+repo+"/manifests/"+imgs["back"]+"?ns="+reg.Host()); err != nil || got != "hit" {
		t.Errorf("the image pulled after the restart is not in lifeboat's cache: X-Lifeboat-Cache %q, %v", got, err)
	}
}
