package hosts

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
)

const mirror = "http://127.0.0.1:5100"

func TestRenderIsValidTOML(t *testing.T) {
	t.Parallel()
	for _, fallback := range []bool{true, false} {
		b := Render("docker.io", mirror, fallback)
		var f struct {
			Server string `toml:"server"`
			Host   map[string]struct {
				Capabilities []string `toml:"capabilities"`
				DialTimeout  string   `toml:"dial_timeout"`
			} `toml:"host"`
		}
		if err := toml.Unmarshal(b, &f); err != nil {
			t.Fatalf("fallback=%v: %v\n%s", fallback, err, b)
		}
		wantServer := mirror
		if fallback {
			wantServer = "https://registry-1.docker.io"
		}
		h, ok := f.Host[mirror]
		if f.Server != wantServer || !ok || !slices.Equal(h.Capabilities, []string{"pull", "resolve"}) || h.DialTimeout != "200ms" {
			t.Errorf("fallback=%v: parsed %+v", fallback, f)
		}
		if !Manages(b, mirror) || Manages(b, "http://127.0.0.1:9999") {
			t.Errorf("fallback=%v: Manages is wrong", fallback)
		}
	}
}

func TestSwitchAndRestore(t *testing.T) {
	t.Parallel()
	dir, backup := t.TempDir(), filepath.Join(t.TempDir(), "outage-hosts")
	write := func(reg, content string) {
		os.MkdirAll(filepath.Join(dir, reg), 0o755)
		if err := os.WriteFile(filepath.Join(dir, reg, FileName), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	managed := string(Render("docker.io", mirror, true)) + "# operator's comment\n"
	write("docker.io", managed)
	write("ghcr.io", string(Render("ghcr.io", mirror, true)))
	unrelated := "server = \"https://quay.io\"\n"
	write("quay.io", unrelated)

	got, err := Switch(dir, backup, mirror, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"docker.io", "ghcr.io"}) {
		t.Fatalf("switched %v, want docker.io and ghcr.io", got)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "docker.io", FileName))
	if !strings.Contains(string(b), "server = \""+mirror+"\"") || !Drilled(b) {
		t.Errorf("docker.io not lifeboat-only, marked as the drill's, during the outage:\n%s", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "quay.io", FileName)); string(b) != unrelated {
		t.Error("a file lifeboat does not manage was changed")
	}
	// A second switch (a replaced outage) keeps the first originals.
	if _, err := Switch(dir, backup, mirror, nil); err != nil {
		t.Fatal(err)
	}

	restored, err := Restore(backup)
	if err != nil || len(restored) != 2 {
		t.Fatalf("restored %v, %v", restored, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "docker.io", FileName)); string(b) != managed {
		t.Errorf("docker.io not restored byte for byte:\n%s", b)
	}
	if _, err := os.Stat(backup); !os.IsNotExist(err) {
		t.Error("backups left after restore")
	}
	if again, err := Restore(backup); err != nil || len(again) != 0 {
		t.Errorf("a second restore: %v %v, want nothing to do", again, err)
	}
}

func TestSwitchScopedToRegistries(t *testing.T) {
	t.Parallel()
	dir, backup := t.TempDir(), filepath.Join(t.TempDir(), "b")
	for _, reg := range []string{"docker.io", "ghcr.io"} {
		os.MkdirAll(filepath.Join(dir, reg), 0o755)
		os.WriteFile(filepath.Join(dir, reg, FileName), Render(reg, mirror, true), 0o644)
	}
	got, err := Switch(dir, backup, mirror, []string{"ghcr.io"})
	if err != nil || !slices.Equal(got, []string{"ghcr.io"}) {
		t.Fatalf("switched %v %v, want only ghcr.io", got, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "docker.io", FileName)); string(b) != string(Render("docker.io", mirror, true)) {
		t.Error("an out-of-scope registry was switched")
	}
}

// TestHostsReadByContainerd loads what Render writes with containerd's own hosts.toml code and
// checks the hosts containerd tries, in order: the mirror, then the registry (fail-open) or
// nothing else (lifeboat-only); or, with no mirror, the upstream alone.
func TestHostsReadByContainerd(t *testing.T) {
	t.Parallel()
	const local = "http://127.0.0.1:5000"
	tests := []struct {
		name string
		cfg  Config
		want []string // scheme://host of each host containerd tries
	}{
		{name: "docker.io fail-open", cfg: Config{Registry: "docker.io", Mirror: mirror, Fallback: true}, want: []string{mirror, "https://registry-1.docker.io"}},
		{name: "ghcr.io fail-open", cfg: Config{Registry: "ghcr.io", Mirror: mirror, Fallback: true}, want: []string{mirror, "https://ghcr.io"}},
		{name: "docker.io lifeboat-only", cfg: Config{Registry: "docker.io", Mirror: mirror}, want: []string{mirror, mirror}},
		{name: "docker.io during a drill", cfg: Config{Registry: "docker.io", Mirror: mirror, Fallback: true, Drill: true}, want: []string{mirror, mirror}},
		// A local registry on a port: https first, plain http if it answers in plain http.
		{name: "local registry fail-open", cfg: Config{Registry: "127.0.0.1:5000", Mirror: mirror, Fallback: true}, want: []string{mirror, "https://127.0.0.1:5000"}},
		{name: "localhost fail-open", cfg: Config{Registry: "localhost:5000", Mirror: mirror, Fallback: true}, want: []string{mirror, "https://localhost:5000"}},
		// A test registry standing in for docker.io, behind the mirror or alone.
		{name: "docker.io fail-open to a stand-in", cfg: Config{Registry: "docker.io", Mirror: mirror, Fallback: true, Upstream: local}, want: []string{mirror, local}},
		{name: "docker.io lifeboat-only ignores the stand-in", cfg: Config{Registry: "docker.io", Mirror: mirror, Upstream: local}, want: []string{mirror, mirror}},
		{name: "docker.io straight to a stand-in", cfg: Config{Registry: "docker.io", Upstream: local}, want: []string{local}},
		{name: "docker.io straight upstream", cfg: Config{Registry: "docker.io"}, want: []string{"https://registry-1.docker.io"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := tt.cfg.Write(dir); err != nil {
				t.Fatal(err)
			}
			hosts, err := config.ConfigureHosts(t.Context(), config.HostOptions{HostDir: config.HostDirFromRoot(dir)})(tt.cfg.Registry)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, h := range hosts {
				got = append(got, h.Scheme+"://"+h.Host)
				if h.Capabilities&docker.HostCapabilityPull == 0 {
					t.Errorf("%s cannot pull", h.Host)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("containerd tries %v, want %v\n%s", got, tt.want, tt.cfg.Render())
			}
			if !Owned(tt.cfg.Render()) {
				t.Errorf("not Owned:\n%s", tt.cfg.Render())
			}
		})
	}
}

func TestHostsUpstream(t *testing.T) {
	t.Parallel()
	for reg, want := range map[string]string{
		"docker.io":      "https://registry-1.docker.io",
		"quay.io":        "https://quay.io",
		"registry:5000":  "https://registry:5000",
		"localhost":      "",
		"localhost:5000": "",
		"127.0.0.1:5000": "",
		"[::1]:5000":     "",
		"10.0.0.1:5000":  "https://10.0.0.1:5000",
		"localhost.corp": "https://localhost.corp",
	} {
		if got := Upstream(reg); got != want {
			t.Errorf("Upstream(%q) = %q, want %q", reg, got, want)
		}
	}
}

func TestHostsOwned(t *testing.T) {
	t.Parallel()
	for _, fallback := range []bool{true, false} {
		if !Owned(Render("docker.io", mirror, fallback)) {
			t.Errorf("Render(fallback=%v) is not Owned", fallback)
		}
	}
	if !Owned([]byte("# my note\n" + Marker + ": pulls go through the lifeboat mirror first.\nserver = \"x\"\n")) {
		t.Error("the marker after an operator's comment is not found")
	}
	// An operator's file with the lifeboat host entry, but not the marker, is not lifeboat's.
	hand := "server = \"https://registry-1.docker.io\"\n\n[host.\"" + mirror + "\"]\n  capabilities = [\"pull\"]\n"
	if Owned([]byte(hand)) || !Manages([]byte(hand), mirror) {
		t.Errorf("Owned/Manages of a hand-written file that points at the mirror: %v/%v, want false/true",
			Owned([]byte(hand)), Manages([]byte(hand), mirror))
	}
	if Owned([]byte("server = \"https://quay.io\" # Written by lifeboat? no\n")) {
		t.Error("the marker in the middle of a line counts")
	}
}

func TestHostsPlan(t *testing.T) {
	t.Parallel()
	const moved = "http://10.0.0.5:5100" // the mirror's address changed
	tests := []struct {
		name    string
		current *string
		want    Action
	}{
		{name: "no file", want: Create},
		{name: "as lifeboat writes it", current: ptr(string(Render("docker.io", mirror, true))), want: Unchanged},
		{name: "lifeboat's, other form", current: ptr(string(Render("docker.io", mirror, false))), want: Update},
		{name: "lifeboat's, old mirror address", current: ptr(string(Render("docker.io", moved, true))), want: Update},
		{name: "an operator's file pointing at the mirror", current: ptr("server = \"https://registry-1.docker.io\"\n[host.\"" + mirror + "\"]\n[host.\"https://other.example\"]\n"), want: Skip},
		{name: "an operator's unrelated file", current: ptr("server = \"https://docker.example\"\n"), want: Skip},
		{name: "an empty file", current: ptr(""), want: Skip},
		{name: "switched by an outage drill", current: ptr(string(Config{Registry: "docker.io", Mirror: mirror, Drill: true}.Render())), want: Held},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "docker.io", FileName)
			if tt.current != nil {
				if err := writeAtomic(path, []byte(*tt.current), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			c, err := Plan(dir, "docker.io", mirror, true)
			if err != nil {
				t.Fatal(err)
			}
			if c.Action != tt.want || c.Path != path {
				t.Fatalf("Plan: %s %s, want %s %s", c.Action, c.Path, tt.want, path)
			}
			if d := c.Diff(); (d != "") != (tt.want == Create || tt.want == Update) {
				t.Errorf("Diff for %s: %q", c.Action, d)
			}
			if err := c.Apply(); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			switch {
			case tt.want == Skip || tt.want == Unchanged || tt.want == Held:
				if string(b) != *tt.current {
					t.Errorf("a %s file was changed:\n%s", tt.want, b)
				}
			case err != nil || string(b) != string(Render("docker.io", mirror, true)):
				t.Errorf("after Apply: %v\n%s", err, b)
			}
			if again, err := Plan(dir, "docker.io", mirror, true); err != nil || tt.want != Skip && tt.want != Held && again.Action != Unchanged {
				t.Errorf("Plan after Apply: %s, %v; want unchanged", again.Action, err)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestHostsLocalPlainHTTPRegistry checks that containerd, given the fail-open file
// for a registry on the loopback interface that speaks plain HTTP (as `registry:2` on
// localhost:5000 does), reaches that registry when it falls back: its last host answers.
func TestHostsLocalPlainHTTPRegistry(t *testing.T) {
	t.Parallel()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}))
	defer reg.Close()
	registry := strings.TrimPrefix(reg.URL, "http://")
	dir := t.TempDir()
	if err := writeAtomic(filepath.Join(dir, registry, FileName), Render(registry, mirror, true), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts, err := config.ConfigureHosts(t.Context(), config.HostOptions{HostDir: config.HostDirFromRoot(dir)})(registry)
	if err != nil {
		t.Fatal(err)
	}
	last := hosts[len(hosts)-1]
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, last.Scheme+"://"+last.Host+last.Path+"/", nil)
	resp, err := last.Client.Do(req)
	if err != nil {
		t.Fatalf("containerd's fallback to the local registry: %v\n%s", err, Render(registry, mirror, true))
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot {
		t.Fatalf("containerd's fallback got %s, not the registry's answer", resp.Status)
	}
}

// TestHostsRefuseNonRegistryNames: a registry name is a directory under the hosts directory, so
// one that is not a registry host[:port] could write outside it; Plan and Write refuse it and
// write nothing.
func TestHostsRefuseNonRegistryNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"../../escaped", "a/b", "..", ".", "", "/etc", "docker.io/../..", "a\\b"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			base := t.TempDir()
			dir := filepath.Join(base, "etc", "certs.d")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if c, err := Plan(dir, name, mirror, true); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Plan(%q) = %s %s, %v; want invalid argument", name, c.Action, c.Path, err)
			} else if c.Apply() != nil {
				t.Errorf("Apply of a refused plan failed")
			}
			if err := (Config{Registry: name, Mirror: mirror}).Write(dir); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Write(%q) = %v, want invalid argument", name, err)
			}
			filepath.WalkDir(base, func(path string, _ os.DirEntry, err error) error {
				if err == nil && path != base && path != filepath.Dir(dir) && path != dir {
					t.Errorf("%s was written", path)
				}
				return nil
			})
		})
	}
}
