package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	mine := filepath.Join(dir, "quay.io", "hosts.toml")
	os.MkdirAll(filepath.Dir(mine), 0o755)
	os.WriteFile(mine, []byte("server = \"https://quay.example\"\n"), 0o644)

	out, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--registry", "quay.io", "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "docker.io")); !os.IsNotExist(err) {
		t.Fatal("--dry-run wrote a file")
	}
	if !strings.Contains(out, "+server = \"https://registry-1.docker.io\"") {
		t.Errorf("dry run does not show the file it would write:\n%s", out)
	}

	out, err = runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--registry", "quay.io")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "docker.io", "hosts.toml"))
	if !strings.Contains(string(b), `server = "https://registry-1.docker.io"`) || !strings.Contains(string(b), `[host."http://127.0.0.1:5100"]`) {
		t.Fatalf("docker.io hosts.toml:\n%s", b)
	}
	if b, _ := os.ReadFile(mine); string(b) != "server = \"https://quay.example\"\n" {
		t.Error("an operator's own hosts.toml was overwritten")
	}
	if !strings.Contains(out, "left alone") {
		t.Errorf("the skipped file is not reported:\n%s", out)
	}

	out, err = runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io")
	if err != nil || !strings.Contains(out, "unchanged") {
		t.Fatalf("a second run is not idempotent: %v\n%s", err, out)
	}

	if _, err := runCLI(t, "configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--fallback", "none"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "docker.io", "hosts.toml"))
	if !strings.Contains(string(b), `server = "http://127.0.0.1:5100"`) || strings.Contains(string(b), "registry-1.docker.io") {
		t.Fatalf("--fallback none left a way around lifeboat:\n%s", b)
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
