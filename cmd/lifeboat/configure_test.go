package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dev/lifeboat/hosts"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

func TestConfigureContainerd(t *testing.T) {
	dir := t.TempDir()
	docker := filepath.Join(dir, "docker.io", "hosts.toml")
	mine := filepath.Join(dir, "quay.io", "hosts.toml")
	const mineContent = "server = \"https://quay.example\"\n"
	os.MkdirAll(filepath.Dir(mine), 0o755)
	os.WriteFile(mine, []byte(mineContent), 0o644)

	out, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "docker.io")); !os.IsNotExist(err) {
		t.Fatal("--dry-run wrote a file")
	}
	wantDiff := "--- /dev/null\n+++ " + docker + "\n@@ -0,0 +1,6 @@\n" +
		"+# Written by lifeboat: pulls go through the lifeboat mirror first.\n" +
		"+server = \"https://registry-1.docker.io\"   # kept: if lifeboat is down, containerd falls back upstream\n+\n"
	if !strings.Contains(out, wantDiff) {
		t.Errorf("dry run does not show the diff of the file it would write:\n%s", out)
	}

	// An operator's own file is named, left alone, and fails the command; the other
	// registries are configured all the same.
	out, err = runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "quay.io", "--registry", "docker.io")
	if err == nil || !strings.Contains(err.Error(), mine) || strings.Contains(err.Error(), "\n") {
		t.Errorf("a skipped registry: error %v, want one sentence naming %s", err, mine)
	}
	b, _ := os.ReadFile(docker)
	if !strings.Contains(string(b), `server = "https://registry-1.docker.io"`) || !strings.Contains(string(b), `[host."http://127.0.0.1:5100"]`) {
		t.Fatalf("docker.io hosts.toml:\n%s", b)
	}
	if b, _ := os.ReadFile(mine); string(b) != mineContent {
		t.Error("an operator's own hosts.toml was overwritten")
	}
	if !strings.Contains(out, mine+": left alone") || !strings.Contains(out, "remove the file or add that line") {
		t.Errorf("the skipped file is not reported with what to do:\n%s", out)
	}

	out, err = runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io")
	if err != nil || !strings.Contains(out, docker+": unchanged") {
		t.Fatalf("a second run is not idempotent: %v\n%s", err, out)
	}

	if _, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--fallback", "none"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(docker)
	if !strings.Contains(string(b), `server = "http://127.0.0.1:5100"`) || strings.Contains(string(b), "registry-1.docker.io") {
		t.Fatalf("--fallback none left a way around lifeboat:\n%s", b)
	}
}

// TestConfigureOwnsFilesByMarker: lifeboat's own files follow the mirror when its address
// changes, and an operator's file stays as it is even when it has lifeboat's host entry.
func TestConfigureOwnsFilesByMarker(t *testing.T) {
	dir := t.TempDir()
	docker := filepath.Join(dir, "docker.io", "hosts.toml")
	ghcr := filepath.Join(dir, "ghcr.io", "hosts.toml")
	operators := "server = \"https://ghcr.io\"\n\n[host.\"http://127.0.0.1:5100\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"https://ghcr-cache.corp\"]\n  capabilities = [\"pull\"]\n"
	os.MkdirAll(filepath.Dir(ghcr), 0o755)
	os.WriteFile(ghcr, []byte(operators), 0o644)
	if _, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io"); err != nil {
		t.Fatal(err)
	}

	// The mirror moves: a dry run shows the change as a diff, the run makes it.
	moved := []string{"configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--registry", "ghcr.io", "--mirror", "10.0.0.5:5100"}
	out, err := runCLI(t, append(moved, "--dry-run")...)
	wantDiff := "--- " + docker + "\n+++ " + docker + "\n@@ -1,6 +1,6 @@\n" +
		" # Written by lifeboat: pulls go through the lifeboat mirror first.\n" +
		" server = \"https://registry-1.docker.io\"   # kept: if lifeboat is down, containerd falls back upstream\n \n" +
		"-[host.\"http://127.0.0.1:5100\"]\n+[host.\"http://10.0.0.5:5100\"]\n" +
		"   capabilities = [\"pull\", \"resolve\"]\n   dial_timeout = \"200ms\"\n"
	if !strings.Contains(out, wantDiff) || err == nil {
		t.Errorf("dry run after the mirror moved: %v, want the diff\n%s\nand an error for ghcr.io; got\n%s", err, wantDiff, out)
	}
	if b, _ := os.ReadFile(docker); !strings.Contains(string(b), "127.0.0.1:5100") {
		t.Fatal("--dry-run changed a file")
	}
	out, err = runCLI(t, moved...)
	if err == nil || !strings.Contains(err.Error(), ghcr) || strings.Contains(err.Error(), filepath.Join(dir, "docker.io")) {
		t.Errorf("error %v, want one naming only %s", err, ghcr)
	}
	if b, _ := os.ReadFile(docker); !strings.Contains(string(b), `[host."http://10.0.0.5:5100"]`) || strings.Contains(string(b), "127.0.0.1:5100") {
		t.Errorf("lifeboat's own file did not follow the mirror (%s):\n%s", out, b)
	}
	if !strings.Contains(out, docker+": updated") || !strings.Contains(out, ghcr+": left alone") {
		t.Errorf("output:\n%s", out)
	}
	if b, _ := os.ReadFile(ghcr); string(b) != operators {
		t.Errorf("an operator's file with lifeboat's host entry was changed:\n%s", b)
	}

	// Once the operator removes it, lifeboat writes its own.
	os.Remove(ghcr)
	if _, err := runCLI(t, moved...); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, moved...); err != nil || strings.Count(out, ": unchanged") != 2 {
		t.Errorf("a second run: %v\n%s", err, out)
	}
}

func TestClientCommandsWithoutDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	for _, args := range [][]string{
		{"status"},
		{"outage", "status"},
		{"outage", "stop"},
		{"outage", "start", "--mode", "blackhole"},
	} {
		_, err := runCLI(t, append(args, "--admin-socket", sock)...)
		if err == nil || !strings.Contains(err.Error(), "not running") || strings.Contains(err.Error(), "\n") {
			t.Errorf("lifeboat %v without a daemon: %v, want one sentence saying it is not running", args, err)
		}
	}
	if _, err := runCLI(t, "outage", "start", "--mode", "http-99", "--admin-socket", sock); err == nil || !strings.Contains(err.Error(), "http-99") {
		t.Errorf("a bad mode must be refused before contacting the daemon, naming it: %v", err)
	}
}

// TestConfigureFromConfig checks that configure takes the mirror address and the plugin socket
// from the configuration file, as serve listens on them, and that flags still win.
func TestConfigureFromConfig(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfgFile, []byte("[mirror]\naddress = \"127.0.0.2:6000\"\n[plugin]\naddress = \"/run/lb/p.sock\"\n"), 0o600)
	docker := filepath.Join(dir, "docker.io", "hosts.toml")

	out, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--config", cfgFile, "--proxy-plugins")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(docker); !strings.Contains(string(b), `[host."http://127.0.0.2:6000"]`) {
		t.Errorf("hosts.toml does not point at the configured mirror:\n%s", b)
	}
	if !strings.Contains(out, `address = "/run/lb/p.sock"`) {
		t.Errorf("--proxy-plugins does not name the configured socket:\n%s", out)
	}

	out, err = runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--config", cfgFile,
		"--mirror", "127.0.0.3:7000", "--proxy-plugins", "--socket", "/tmp/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(docker); !strings.Contains(string(b), `[host."http://127.0.0.3:7000"]`) {
		t.Errorf("--mirror does not win over the configuration:\n%s", b)
	}
	if !strings.Contains(out, `address = "/tmp/s.sock"`) {
		t.Errorf("--socket does not win over the configuration:\n%s", out)
	}

	// A mirror listening on every address is reached on loopback.
	os.WriteFile(cfgFile, []byte("[mirror]\naddress = \"0.0.0.0:5100\"\n"), 0o600)
	if _, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--config", cfgFile); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(docker); !strings.Contains(string(b), `[host."http://127.0.0.1:5100"]`) {
		t.Errorf("a mirror on 0.0.0.0 is not reached on loopback:\n%s", b)
	}

	if _, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--config", filepath.Join(dir, "none.toml")); err == nil {
		t.Error("a missing --config file must be an error")
	}
}

func TestVersionJSON(t *testing.T) {
	out, err := runCLI(t, "version", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Version, Go string }
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil || v.Version != version || !strings.HasPrefix(v.Go, "go") {
		t.Errorf("version --json: %+v, %v\n%s", v, err, out)
	}
	if out, _ := runCLI(t, "version"); out != "lifeboat "+version+"\n" {
		t.Errorf("version: %q", out)
	}
}

// TestConfigureRefusesBadRegistryNames: a --registry that is not a registry host[:port] could
// name a file outside the hosts directory; the command refuses it in one sentence and writes
// nothing at all, the valid registries named with it included.
func TestConfigureRefusesBadRegistryNames(t *testing.T) {
	for _, tc := range []struct {
		name     string
		registry []string
	}{
		{"a parent path", []string{"--registry", "../../escaped"}},
		{"a path", []string{"--registry", "a/b"}},
		{"the parent directory", []string{"--registry", ".."}},
		{"the directory itself", []string{"--registry", "."}},
		{"an empty name", []string{"--registry", ""}},
		{"an empty name in a list", []string{"--registry", "docker.io,"}},
		{"a bad name after a good one", []string{"--registry", "docker.io", "--registry", "../../escaped"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "etc", "certs.d")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"configure", "containerd", "--hosts-dir", dir}, tc.registry...)
			_, err := runCLI(t, args...)
			if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "registry") {
				t.Errorf("lifeboat %v: %v, want one sentence refusing the registry name", args, err)
			}
			filepath.WalkDir(base, func(path string, d os.DirEntry, err error) error {
				if err == nil && path != base && path != filepath.Dir(dir) && path != dir {
					t.Errorf("%s was written", path)
				}
				return nil
			})
		})
	}
}

// TestConfigureRefusesDuringDrill: while an outage drill holds the hosts.toml files, configure
// changes none (the drill's restore would undo it) and says to stop the outage first; once
// the drill has restored them, it works as usual.
func TestConfigureRefusesDuringDrill(t *testing.T) {
	dir, backup := t.TempDir(), filepath.Join(t.TempDir(), "outage-hosts")
	const mirror = "http://127.0.0.1:5100"
	docker := filepath.Join(dir, "docker.io", "hosts.toml")
	ghcr := filepath.Join(dir, "ghcr.io", "hosts.toml")
	if _, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--mirror", mirror); err != nil {
		t.Fatal(err)
	}
	original, _ := os.ReadFile(docker)
	// What `lifeboat outage start --hosts-dir` does to the files.
	if _, err := hosts.Switch(dir, backup, mirror, nil); err != nil {
		t.Fatal(err)
	}
	drilled, _ := os.ReadFile(docker)

	for _, args := range [][]string{
		{"--registry", "docker.io", "--registry", "ghcr.io"},
		{"--registry", "ghcr.io", "--registry", "docker.io", "--fallback", "none"},
		{"--registry", "docker.io", "--dry-run"},
	} {
		args = append([]string{"configure", "containerd", "--hosts-dir", dir, "--mirror", mirror}, args...)
		out, err := runCLI(t, args...)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), docker) ||
			!strings.Contains(err.Error(), "lifeboat outage stop") {
			t.Errorf("lifeboat %v during a drill: %v, want one sentence naming %s and saying to stop the outage first", args, err, docker)
		}
		if b, _ := os.ReadFile(docker); string(b) != string(drilled) {
			t.Errorf("lifeboat %v rewrote the file a drill holds:\n%s", args, b)
		}
		if _, err := os.Stat(ghcr); !os.IsNotExist(err) {
			t.Errorf("lifeboat %v wrote %s during the drill", args, ghcr)
		}
		if strings.Contains(out, "written") || strings.Contains(out, "updated") || strings.Contains(out, "+++") {
			t.Errorf("lifeboat %v reports a change:\n%s", args, out)
		}
	}

	// The drill ends: its originals are back, and configure works again.
	if _, err := hosts.Restore(backup); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(docker); string(b) != string(original) {
		t.Fatalf("the drill did not restore the original:\n%s", b)
	}
	if _, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--mirror", mirror, "--registry", "docker.io", "--registry", "ghcr.io", "--fallback", "none"); err != nil {
		t.Fatalf("configure after the drill: %v", err)
	}
	if b, _ := os.ReadFile(ghcr); !strings.Contains(string(b), `server = "`+mirror+`"`) {
		t.Errorf("ghcr.io after the drill:\n%s", b)
	}
}
