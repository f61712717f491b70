package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// HostEntry is one [host."URL"] table of a containerd hosts.toml: a mirror containerd tries,
// in order, before the registry itself.
type HostEntry struct {
	// URL is the mirror's base URL with its scheme, e.g. "http://127.0.0.1:5001"; a plain-HTTP
	// mirror needs "http://".
	URL string
	// Capabilities defaults to pull and resolve.
	Capabilities []string
	// OverridePath makes containerd use URL's path as the API root instead of appending /v2.
	OverridePath bool
	// DialTimeout bounds connecting to the mirror; containerd's default (30 s) if zero.
	DialTimeout time.Duration
	// Header is sent with every request to the mirror.
	Header map[string]string
}

// WriteHostsDir writes DIR/<registryHost>/hosts.toml for ctr's --hosts-dir (containerd also
// looks for DIR/<host>_<port>_; either works) and returns DIR, a new temporary directory.
// hosts are written in order as [host."URL"] tables, which containerd tries first; the file's
// server is "http://<registryHost>", because every registry the harness starts speaks plain
// HTTP. So WriteHostsDir(t, reg.Host()) alone makes a registry on 127.0.0.1:PORT pullable
// without ctr's --plain-http.
func WriteHostsDir(t testing.TB, registryHost string, hosts ...HostEntry) string {
	t.Helper()
	dir := t.TempDir()
	hostDir := filepath.Join(dir, registryHost)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(HostsTOML(registryHost, hosts...)), 0o644); err != nil {
		t.Fatalf("harness: writing hosts.toml: %v", err)
	}
	return dir
}

// HostsTOML renders the hosts.toml WriteHostsDir writes.
func HostsTOML(registryHost string, hosts ...HostEntry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server = %s\n", strconv.Quote("http://"+registryHost))
	for _, h := range hosts {
		fmt.Fprintf(&b, "\n[host.%s]\n", strconv.Quote(h.URL))
		caps := h.Capabilities
		if len(caps) == 0 {
			caps = []string{"pull", "resolve"}
		}
		quoted := make([]string, len(caps))
		for i, c := range caps {
			quoted[i] = strconv.Quote(c)
		}
		fmt.Fprintf(&b, "  capabilities = [%s]\n", strings.Join(quoted, ", "))
		if h.OverridePath {
			b.WriteString("  override_path = true\n")
		}
		if h.DialTimeout > 0 {
			fmt.Fprintf(&b, "  dial_timeout = %s\n", strconv.Quote(h.DialTimeout.String()))
		}
		if len(h.Header) > 0 {
			fmt.Fprintf(&b, "  [host.%s.header]\n", strconv.Quote(h.URL))
			for k, v := range h.Header {
				fmt.Fprintf(&b, "    %s = %s\n", strconv.Quote(k), strconv.Quote(v))
			}
		}
	}
	return b.String()
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
