package harness

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// DefaultNamespace is the containerd namespace Ctr uses unless ContainerdOptions says otherwise.
const DefaultNamespace = "lifeboat-test"

// Bounds on waiting for containerd.
const (
	containerdReadyTimeout = 30 * time.Second
	containerdStopGrace    = 15 * time.Second
)

// disabledPlugins are containerd plugins the tests do not use and that would slow startup, fail
// on a test machine, listen outside the temporary directory or write outside it (the NRI socket
// in /var/run/nri, /opt/containerd).
var disabledPlugins = []string{
	// CRI: not used by ctr; loads CNI config and starts the streaming server.
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"io.containerd.cri.v1.runtime",
	"io.containerd.podsandbox.controller.v1.podsandbox",
	"io.containerd.nri.v1.nri",
	"io.containerd.internal.v1.tracing",
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.opt",
	"io.containerd.image-verifier.v1.bindir",
	"io.containerd.monitor.container.v1.restart",
	// Snapshotters and differs other than overlayfs and native.
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.blockfile",
	"io.containerd.snapshotter.v1.erofs",
	"io.containerd.differ.v1.erofs",
	"io.containerd.mount-handler.v1.erofs",
	// Servers other than the gRPC and ttrpc unix sockets.
	"io.containerd.server.v1.grpc-tcp",
	"io.containerd.server.v1.debug",
	"io.containerd.server.v1.metrics",
}

// ContainerdOptions adjusts the containerd StartContainerdWith starts.
type ContainerdOptions struct {
	// Namespace is the namespace Ctr passes to ctr; DefaultNamespace if empty.
	Namespace string
	// DisabledPlugins are disabled in addition to the plugins the harness always disables,
	// for example "io.containerd.content.v1.content" when a proxy content store replaces it.
	DisabledPlugins []string
	// ExtraConfig is TOML appended to the generated config file, after its top-level keys:
	// tables such as [proxy_plugins.lifeboat] or [plugins."io.containerd.transfer.v1.local"].
	// It must not repeat what the harness writes: version, root, state, temp,
	// disabled_plugins and the [grpc], [ttrpc], [debug] and [metrics] tables.
	ExtraConfig string
	// Env is added to containerd's environment.
	Env []string
	// LogLevel is containerd's log level; "debug" if empty.
	LogLevel string
}

// Containerd is a containerd process started by StartContainerd, with everything it owns under
// one temporary directory.
type Containerd struct {
	dir        string
	address    string
	ttrpc      string
	configPath string
	namespace  string
	ctrPath    string
	proc       *Process
}

// StartContainerd starts containerd with the default options; see StartContainerdWith.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	return StartContainerdWith(t, ContainerdOptions{})
}

// StartContainerdWith starts containerd as a child process with its own config file, root,
// state and sockets under a new temporary directory, and waits until it answers gRPC calls.
// containerd listens on nothing but its gRPC and ttrpc unix sockets. The shim from ToolsDir is
// first on its PATH, followed by runc's directory.
//
// On cleanup it stops containers left running, stops containerd (SIGTERM, then SIGKILL), kills
// shims it left behind, unmounts everything under its directory and removes it; if the test
// failed, containerd's log is attached to the test output.
func StartContainerdWith(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	RequireRoot(t)
	bin := Tool(t, ToolContainerd)
	ctrPath := Tool(t, ToolCtr)
	shim := Tool(t, ToolShim)
	runc := Runc(t)

	// Unix socket paths must stay under 108 bytes, so not t.TempDir(), whose path contains the
	// test name.
	dir, err := os.MkdirTemp("", "lbctd")
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	c := &Containerd{
		dir:        dir,
		address:    filepath.Join(dir, "c.sock"),
		ttrpc:      filepath.Join(dir, "c.sock.ttrpc"),
		configPath: filepath.Join(dir, "config.toml"),
		namespace:  cmp.Or(opts.Namespace, DefaultNamespace),
		ctrPath:    ctrPath,
	}
	t.Cleanup(func() { c.removeDir(t) })

	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := os.WriteFile(c.configPath, []byte(c.config(opts)), 0o600); err != nil {
		t.Fatalf("harness: writing containerd config: %v", err)
	}

	cmd := exec.Command(bin, "--config", c.configPath)
	path := strings.Join([]string{filepath.Dir(shim), filepath.Dir(runc), os.Getenv("PATH")}, string(os.PathListSeparator))
	cmd.Env = append(append(os.Environ(), "PATH="+path), opts.Env...)
	c.proc = StartProcess(t, "containerd", cmd, filepath.Join(dir, "containerd.log"))
	t.Cleanup(func() { c.stop(t) })

	c.waitReady(t)
	return c
}

// config renders containerd's config file.
func (c *Containerd) config(opts ContainerdOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = 3\n")
	fmt.Fprintf(&b, "root = %s\n", strconv.Quote(filepath.Join(c.dir, "root")))
	fmt.Fprintf(&b, "state = %s\n", strconv.Quote(filepath.Join(c.dir, "state")))
	fmt.Fprintf(&b, "temp = %s\n", strconv.Quote(filepath.Join(c.dir, "tmp")))
	b.WriteString("disabled_plugins = [\n")
	for _, p := range append(append([]string(nil), disabledPlugins...), opts.DisabledPlugins...) {
		fmt.Fprintf(&b, "  %s,\n", strconv.Quote(p))
	}
	b.WriteString("]\n\n")
	fmt.Fprintf(&b, "[grpc]\n  address = %s\n\n", strconv.Quote(c.address))
	fmt.Fprintf(&b, "[ttrpc]\n  address = %s\n\n", strconv.Quote(c.ttrpc))
	fmt.Fprintf(&b, "[debug]\n  address = \"\"\n  level = %s\n\n", strconv.Quote(cmp.Or(opts.LogLevel, "debug")))
	b.WriteString("[metrics]\n  address = \"\"\n\n")
	if opts.ExtraConfig != "" {
		b.WriteString(opts.ExtraConfig)
		b.WriteString("\n")
	}
	return b.String()
}

// waitReady polls containerd with `ctr version` until it answers.
func (c *Containerd) waitReady(t testing.TB) {
	t.Helper()
	err := waitFor(containerdReadyTimeout, c.proc.Exited(), func() error {
		_, err := c.ctr(2*time.Second, "version")
		return err
	})
	if err != nil {
		c.proc.AttachLog(t)
		t.Fatalf("harness: containerd did not become ready on %s: %v (exit: %v)", c.address, err, c.proc.ExitErr())
	}
}

// stop removes leftover containers, stops containerd and its shims, and attaches the log if
// the test failed.
func (c *Containerd) stop(t testing.TB) {
	t.Helper()
	if c.proc.Running() {
		c.removeContainers(t)
	}
	if err := c.proc.Stop(containerdStopGrace); err != nil {
		t.Errorf("harness: stopping containerd: %v", err)
	}
	c.killShims(t)
	if t.Failed() {
		c.proc.AttachLog(t)
	}
}

// removeDir unmounts whatever containerd left mounted and removes its directory.
func (c *Containerd) removeDir(t testing.TB) {
	t.Helper()
	if err := unmountUnder(c.dir); err != nil {
		t.Errorf("harness: %v", err)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		t.Errorf("harness: removing containerd directory: %v", err)
	}
}

// Address returns containerd's gRPC socket path.
func (c *Containerd) Address() string { return c.address }

// TTRPCAddress returns containerd's ttrpc socket path.
func (c *Containerd) TTRPCAddress() string { return c.ttrpc }

// Namespace returns the namespace Ctr uses.
func (c *Containerd) Namespace() string { return c.namespace }

// Dir returns the temporary directory holding containerd's config, log, root, state and sockets.
func (c *Containerd) Dir() string { return c.dir }

// Root returns containerd's root directory (content store, snapshots, metadata).
func (c *Containerd) Root() string { return filepath.Join(c.dir, "root") }

// ConfigPath returns the config file containerd was started with.
func (c *Containerd) ConfigPath() string { return c.configPath }

// FifoDir returns a directory for the FIFOs of `ctr run -d` and `ctr tasks exec`: pass
// `--fifo-dir` with it, or ctr leaves them in /run/containerd/fifo (it removes them only when
// the same ctr process also deletes the task, as `ctr run --rm` does).
func (c *Containerd) FifoDir() string { return filepath.Join(c.dir, "fifo") }

// Process returns the containerd process.
func (c *Containerd) Process() *Process { return c.proc }

// WithNamespace returns a view of the same containerd whose Ctr uses namespace ns.
func (c *Containerd) WithNamespace(ns string) *Containerd {
	cp := *c
	cp.namespace = ns
	return &cp
}
