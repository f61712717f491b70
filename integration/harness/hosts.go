package harness

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/lifeboat-dev/lifeboat/hosts"
)

// WriteHostsDir writes the hosts.toml cfg describes (hosts.Config.Write: DIR/<registry>/hosts.toml,
// for ctr's --hosts-dir) into DIR, a new temporary directory, and returns DIR. Every registry
// the harness starts speaks plain HTTP on loopback, so name it as cfg.Upstream or cfg.Mirror
// with its "http://" URL: WriteHostsDir(t, hosts.Config{Registry: reg.Host(), Upstream:
// reg.URL()}) makes a registry pullable without ctr's --plain-http.
func WriteHostsDir(t testing.TB, cfg hosts.Config) string {
	t.Helper()
	dir := t.TempDir()
	if err := cfg.Write(dir); err != nil {
		t.Fatalf("harness: writing hosts.toml: %v", err)
	}
	return dir
}

// ConfigureHosts runs `lifeboat configure containerd` from the binary under test, with this
// daemon's mirror and `--fallback fallback` ("upstream", lifeboat's default, or "none") for each
// registry, into a new temporary directory it returns (for ctr's --hosts-dir). So the
// hosts.toml files containerd gets in a test are the ones lifeboat writes for its users.
func (lb *Lifeboat) ConfigureHosts(t testing.TB, fallback string, registries ...string) string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"configure", "containerd", "--hosts-dir", dir, "--mirror", lb.URL(), "--fallback", fallback}
	for _, reg := range registries {
		args = append(args, "--registry", reg)
	}
	out, err := exec.Command(BuildLifeboat(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("harness: lifeboat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return dir
}
