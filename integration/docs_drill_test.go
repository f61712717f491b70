package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestDocumentedDrillScript runs the script in docs/outage-drill.md, as a user would copy it,
// against a real containerd, registry and lifeboat, so that the page stays true.
func TestDocumentedDrillScript(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	page, err := os.ReadFile(filepath.Join(harness.ModuleRoot(t), "docs", "outage-drill.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```sh\n(#!/usr/bin/env bash\n# outage-drill.sh.*?)```").FindSubmatch(page)
	if m == nil {
		t.Fatal("docs/outage-drill.md has no outage-drill.sh script")
	}
	script := filepath.Join(t.TempDir(), "outage-drill.sh")
	if err := os.WriteFile(script, m[1], 0o755); err != nil {
		t.Fatal(err)
	}

	reg := harness.StartRegistry(t)
	reg.PushBusybox(t, "library/busybox", "1.36")
	reg.PushRandom(t, "library/nginx", "1.27", 2, 8192)
	reg.PushRandom(t, "library/hello-world", "latest", 1, 1024)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{"docker.io": {reg.URL()}}})
	ctd := harness.StartContainerd(t)

	// The fail-open hosts.toml `lifeboat configure containerd` writes, with the local registry
	// standing in for Docker Hub as the fallback server.
	hostsDir := t.TempDir()
	out, err := exec.Command(harness.BuildLifeboat(t), "configure", "containerd", "--hosts-dir", hostsDir,
		"--registry", "docker.io", "--mirror", lb.URL()).CombinedOutput()
	if err != nil {
		t.Fatalf("configure containerd: %v\n%s", err, out)
	}
	file := filepath.Join(hostsDir, "docker.io", "hosts.toml")
	b, _ := os.ReadFile(file)
	original := strings.Replace(string(b), "https://registry-1.docker.io", reg.URL(), 1)
	os.WriteFile(file, []byte(original), 0o644)

	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(),
		"PATH="+filepath.Dir(harness.BuildLifeboat(t))+":"+harness.ToolsDir(t)+":"+os.Getenv("PATH"),
		"CONTAINERD_ADDRESS="+ctd.Address(),
		"LIFEBOAT_ADMIN_SOCKET="+lb.AdminSocket,
		"HOSTS_DIR="+hostsDir,
		"NS="+ctd.Namespace(),
		"MODE=blackhole",
		"IMAGES=docker.io/library/busybox:1.36 docker.io/library/nginx:1.27",
		"NEVER_CACHED=docker.io/library/hello-world:latest",
	)
	got, err := cmd.CombinedOutput()
	t.Logf("the documented script printed:\n%s", got)
	if err != nil {
		t.Fatalf("the documented drill failed: %v", err)
	}
	for _, want := range []string{"ok    docker.io/library/busybox:1.36", "ok    docker.io/library/nginx:1.27",
		"container started during a simulated blackhole outage", "never-cached image failed after"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("the script's output lacks %q", want)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != original {
		t.Errorf("hosts.toml not restored after the documented drill:\n%s", b)
	}
}
