package integration

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestOutageDrill runs the drill an operator would script with ctr, once per fault mode:
// containerd points at lifeboat with the upstream kept as fallback (the hosts.toml
// `lifeboat configure containerd` writes by default),
// `lifeboat outage start --hosts-dir` cuts both lifeboat's upstream and containerd's way around
// it, a cached image still pulls and runs, an image never cached fails fast with an error that
// names the outage, and after `lifeboat outage stop` the hosts.toml is back and new images come
// through lifeboat from the upstream again.
func TestOutageDrill(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{reg.Host(): {reg.URL()}},
	})
	ctd := harness.StartContainerd(t)

	// The fail-open form `lifeboat configure containerd` writes by default: lifeboat first, the
	// registry kept as containerd's fallback.
	hostsDir := lb.ConfigureHosts(t, "upstream", reg.Host())
	hostsFile := filepath.Join(hostsDir, reg.Host(), "hosts.toml")
	b, err := os.ReadFile(hostsFile)
	if err != nil {
		t.Fatal(err)
	}
	original := string(b)
	if strings.Contains(original, fmt.Sprintf("server = %q", lb.URL())) {
		t.Fatalf("configure's default hosts.toml is not fail-open:\n%s", original)
	}

	for i, tc := range []struct {
		mode string
		args []string
	}{
		{mode: "dns"},
		{mode: "refused"},
		{mode: "blackhole"},
		{mode: "reset"},
		{mode: "http-503"},
		{mode: "http-429"},
		{mode: "slow", args: []string{"--latency", "3s"}},
		{mode: "flaky", args: []string{"--fail-ratio", "1", "--seed", "7"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			repo := fmt.Sprintf("library/drill%d", i)
			img := reg.PushBusybox(t, repo, "cached")
			reg.PushRandom(t, repo, "fresh", 1, 4096)
			reg.PushRandom(t, repo, "after", 1, 4096)
			cached, fresh, after := reg.Ref(repo, "cached"), reg.Ref(repo, "fresh"), reg.Ref(repo, "after")

			ctd.MustCtr(t, "images", "pull", "--hosts-dir", hostsDir, cached)

			out, err := lb.CLI(t, append([]string{"outage", "start", "--mode", tc.mode, "--hosts-dir", hostsDir}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, reg.Host()) {
				t.Errorf("outage start did not report switching %s's hosts.toml: %s", reg.Host(), out)
			}
			if b, _ := os.ReadFile(hostsFile); !strings.Contains(string(b), fmt.Sprintf("server = %q", lb.URL())) {
				t.Fatalf("hosts.toml not lifeboat-only during the outage:\n%s", b)
			}

			// A cached image: removed from the node, pulled again and run.
			ctd.MustCtr(t, "images", "rm", cached)
			ctd.MustCtr(t, "images", "pull", "--hosts-dir", hostsDir, cached)
			if got, want := ctd.ImageDigest(t, cached), harness.Digest(t, img); got != want {
				t.Fatalf("pulled %s during the outage, pushed %s", got, want)
			}
			token := strings.ToLower(rand.Text())[:12]
			if out := ctd.MustCtr(t, "run", "--rm", cached, "drill-"+token, "/bin/echo", token); !strings.Contains(out, token) {
				t.Fatalf("ctr run printed %q", out)
			}

			// A never-cached image fails fast, and says why.
			start := time.Now()
			out, err = ctd.Ctr(t, "images", "pull", "--hosts-dir", hostsDir, fresh)
			if err == nil {
				t.Fatalf("pulling a never-cached image during the outage succeeded: %s", out)
			}
			took := time.Since(start)
			if took > failFast {
				t.Errorf("the failing pull took %s, want under %s: it waited on something instead of failing", took, failFast)
			}
			// The reason is lifeboat's 404, not a timeout or a refused connection.
			if !strings.Contains(err.Error(), "not found") {
				t.Errorf("the failing pull did not end with lifeboat's not found: %v", err)
			}
			body := mirrorGET(t, lb, "/v2/"+repo+"/manifests/fresh?ns="+reg.Host(), http.StatusNotFound)
			t.Logf("outage %s: the cached image pulled and ran; a never-cached one failed in %s with %s",
				tc.mode, took.Round(time.Millisecond), strings.TrimSpace(body))
			if !strings.Contains(body, "simulated outage") {
				t.Errorf("the OCI error does not name the outage: %s", body)
			}
			if !strings.Contains(lb.Log(), "simulated outage") {
				t.Error("lifeboat's log does not name the outage")
			}

			if _, err := lb.CLI(t, "outage", "stop"); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(hostsFile); string(b) != original {
				t.Fatalf("hosts.toml not restored after the outage:\n%s", b)
			}
			// New images come through lifeboat from the upstream again, within a probe interval.
			harness.WaitFor(t, "lifeboat to fetch from the upstream again", 5*time.Second, nil, func() error {
				resp, err := mirrorHead(t, lb, "/v2/"+repo+"/manifests/after?ns="+reg.Host())
				if err != nil {
					return err
				}
				if resp != "miss" {
					return fmt.Errorf("X-Lifeboat-Cache %q", resp)
				}
				return nil
			})
			ctd.MustCtr(t, "images", "pull", "--hosts-dir", hostsDir, after)
		})
	}
}

// mirrorGET fetches path from the mirror, checks the status, and returns the body.
func mirrorGET(t *testing.T, lb *harness.Lifeboat, path string, status int) string {
	t.Helper()
	resp, err := http.Get(lb.URL() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %s, want %d: %s", path, resp.Status, status, b)
	}
	return string(b)
}

// mirrorHead asks the mirror for a manifest and returns X-Lifeboat-Cache, or an error if the
// answer is not 200.
func mirrorHead(t *testing.T, lb *harness.Lifeboat, path string) (string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodHead, lb.URL()+path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HEAD %s: %s", path, resp.Status)
	}
	return resp.Header.Get("X-Lifeboat-Cache"), nil
}
