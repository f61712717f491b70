package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// ToolsDirEnv names the environment variable that overrides where the test binaries are found.
const ToolsDirEnv = "LIFEBOAT_TOOLS_DIR"

// Names of the binaries installed into bin/tools by `make tools` (hack/tools.sh).
const (
	ToolContainerd = launch.ContainerdBin
	ToolCtr        = launch.CtrBin
	ToolShim       = launch.ShimBin
	ToolRegistry   = "registry"
	ToolCrane      = "crane"
)

// RequireRoot skips the test unless it runs as root: containerd mounts snapshots and runs
// containers, which needs root. CI runs the integration tests as root. In a full integration
// run (see CannotRun) it fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		CannotRun(t, "integration tests start containerd, which needs root; run them as root (sudo go test ./integration/...)")
	}
}

// CannotRun ends a test that this host cannot run. A plain `go test` skips it. When
// LIFEBOAT_TOOLS_DIR is set, as `make integration` (and so `make test`) sets it, the run is meant
// to prove every drill, so the test fails instead: a skip would count as a pass.
func CannotRun(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(ToolsDirEnv) != "" {
		t.Fatalf("%s\n(%s is set, so this is a full integration run: a test that cannot run fails it rather than skip; unset %s to skip instead)", msg, ToolsDirEnv, ToolsDirEnv)
	}
	t.Skip(msg)
}

// ModuleRoot returns the directory holding lifeboat's go.mod, found by walking up from the
// working directory (go test runs a package's tests in the package directory).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := moduleRoot()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return dir
}

func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding module root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod in %s or any parent directory", wd)
		}
	}
}

// ToolsDir returns the directory holding the test binaries: $LIFEBOAT_TOOLS_DIR if set, else
// bin/tools at the module root.
func ToolsDir(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(ToolsDirEnv); dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			t.Fatalf("harness: %s=%q: %v", ToolsDirEnv, dir, err)
		}
		return abs
	}
	return filepath.Join(ModuleRoot(t), "bin", "tools")
}

// Tool returns the path of the named binary in ToolsDir. It fails the test, saying how to
// install the binaries, if it is missing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(ToolsDir(t), name)
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		t.Fatalf("harness: %s not found at %s: run `make tools` (or `bash hack/tools.sh`) first, or point %s at a directory holding it", name, path, ToolsDirEnv)
	case err != nil:
		t.Fatalf("harness: %s: %v", name, err)
	case info.IsDir() || info.Mode()&0o111 == 0:
		t.Fatalf("harness: %s is not an executable file", path)
	}
	return path
}

// Runc returns the path of the runc binary the containerd shim will run. It fails the test if
// runc is not on PATH.
func Runc(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("runc")
	if err != nil {
		t.Fatalf("harness: runc not found on PATH (%v): install it, e.g. `apt-get install -y runc`", err)
	}
	return path
}
