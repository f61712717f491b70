package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// lifeboatBuild is the one build of ./cmd/lifeboat per test binary. It is package state
// because its whole point is to be shared by every test of the run; Run removes its directory.
var lifeboatBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// BuildLifeboat builds ./cmd/lifeboat once per test binary run and returns the binary's path.
// Every later call returns the same binary, or fails the same way.
func BuildLifeboat(t testing.TB) string {
	t.Helper()
	lifeboatBuild.once.Do(func() {
		lifeboatBuild.path, lifeboatBuild.err = buildLifeboat()
	})
	if lifeboatBuild.err != nil {
		t.Fatalf("harness: %v", lifeboatBuild.err)
	}
	return lifeboatBuild.path
}

func buildLifeboat() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "lifeboat-build")
	if err != nil {
		return "", err
	}
	lifeboatBuild.dir = dir
	out := filepath.Join(dir, "lifeboat")
	cmd := exec.Command(goTool(), "build", "-o", out, "./cmd/lifeboat")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/lifeboat: %w\n%s", err, b)
	}
	return out, nil
}

// goTool returns the go command: "go" from PATH, else $GOROOT/bin/go (sudo often resets PATH
// to one without the Go toolchain).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}

// Run runs the tests of a package that uses the harness and removes what the harness shares
// between tests (the lifeboat build). Use it from TestMain: os.Exit(harness.Run(m)).
func Run(m *testing.M) int {
	code := m.Run()
	if lifeboatBuild.dir != "" {
		os.RemoveAll(lifeboatBuild.dir)
	}
	return code
}
