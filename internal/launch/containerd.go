package launch

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Names of the containerd binaries in ContainerdOptions.Tools, as `make tools` (hack/tools.sh)
// installs them.
const (
	ContainerdBin = "containerd"
	CtrBin        = "ctr"
	ShimBin       = "containerd-shim-runc-v2"
)

// Bounds on waiting for containerd.
const (
	containerdReadyTimeout = 30 * time.Second
	containerdStopGrace    = 15 * time.Second
)

// disabledPlugins are containerd plugins neither the tests nor the benchmark use and that would
// slow startup, fail on a test machine, listen outside containerd's directory or write outside
// it (the NRI socket in /var/run/nri, /opt/containerd).
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

// ContainerdOptions adjust the containerd StartContainerd starts.
type ContainerdOptions struct {
	// Tools is the directory holding containerd, ctr and the runc shim (bin/tools). runc itself
	// is found on PATH.
	Tools string
	// Dir is the directory that will hold containerd's config, log, root, state and sockets; a
	// new temporary directory if empty. Unix socket paths must stay under 108 bytes, so keep it
	// short. It is removed by RemoveDir, or when StartContainerd fails.
	Dir string
	// Namespace is the namespace RunCtr passes to ctr; "default" if empty.
	Namespace string
	// DisabledPlugins are disabled in addition to the plugins always disabled, for example
	// "io.containerd.content.v1.content" when a proxy content store replaces it.
	DisabledPlugins []string
	// ExtraConfig is TOML appended to the generated config file, after its top-level keys:
	// tables such as [proxy_plugins.lifeboat] or [plugins."io.containerd.transfer.v1.local"]
	// (SnapshotterConfig). It must not repeat what StartContainerd writes: version, root, state,
	// temp, disabled_plugins and the [grpc], [ttrpc], [debug] and [metrics] tables.
	ExtraConfig string
	// Env is added to containerd's environment.
	Env []string
	// LogLevel is containerd's log level; "debug" if empty.
	LogLevel string
}

// Containerd is a containerd process started by StartContainerd, with everything it owns under
// one directory.
type Containerd struct {
	dir        string
	address    string
	ttrpc      string
	configPath string
	namespace  string
	ctrPath    string
	proc       *Process
}

// StartContainerd starts containerd as a child process with its own config file, root, state
// and sockets under opts.Dir, and waits until it answers gRPC calls. containerd listens on
// nothing but its gRPC and ttrpc unix sockets. The shim from opts.Tools is first on its PATH,
// followed by runc's directory.
//
// Stop it with Stop, then RemoveDir. If it does not become ready, StartContainerd stops it,
// removes its directory and returns an error that carries its log.
func StartContainerd(opts ContainerdOptions) (*Containerd, error) {
	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "lbctd")
		if err != nil {
			return nil, err
		}
		dir = d
	}
	c := &Containerd{
		dir:        dir,
		address:    filepath.Join(dir, "c.sock"),
		ttrpc:      filepath.Join(dir, "c.sock.ttrpc"),
		configPath: filepath.Join(dir, "config.toml"),
		namespace:  cmp.Or(opts.Namespace, "default"),
		ctrPath:    filepath.Join(opts.Tools, CtrBin),
	}
	if err := c.start(opts); err != nil {
		if c.proc != nil {
			err = errors.Join(err, c.Stop(discard{}))
			c.proc.AttachLog(errorLog{&err})
		}
		return nil, errors.Join(err, c.RemoveDir())
	}
	return c, nil
}

// start writes the config, starts containerd and waits until it is ready.
func (c *Containerd) start(opts ContainerdOptions) error {
	if err := os.MkdirAll(filepath.Join(c.dir, "tmp"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(c.configPath, []byte(c.config(opts)), 0o600); err != nil {
		return fmt.Errorf("writing containerd config: %w", err)
	}
	path := []string{opts.Tools}
	if runc, err := exec.LookPath("runc"); err == nil {
		path = append(path, filepath.Dir(runc))
	}
	path = append(path, os.Getenv("PATH"))
	cmd := exec.Command(filepath.Join(opts.Tools, ContainerdBin), "--config", c.configPath)
	cmd.Env = append(append(os.Environ(), "PATH="+strings.Join(path, string(os.PathListSeparator))), opts.Env...)
	proc, err := Start("containerd", cmd, filepath.Join(c.dir, "containerd.log"))
	if err != nil {
		return err
	}
	c.proc = proc
	err = WaitFor(containerdReadyTimeout, proc.Exited(), func() error {
		_, err := c.ctrWithin(2*time.Second, "version")
		return err
	})
	if err != nil {
		return fmt.Errorf("containerd did not become ready on %s: %v (exit: %v)", c.address, err, proc.ExitErr())
	}
	return nil
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

// SnapshotterConfig is the ExtraConfig that adds lifeboat's snapshotter, served on socket, as
// the proxy plugin "lifeboat": remote snapshot annotations exported, and an unpack_config
// naming it beside overlayfs, so that `ctr images pull --snapshotter lifeboat` unpacks with it.
func SnapshotterConfig(socket string) string {
	return fmt.Sprintf(`
[proxy_plugins.lifeboat]
  type = "snapshot"
  address = %[1]q
  [proxy_plugins.lifeboat.exports]
    enable_remote_snapshot_annotations = "true"

[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[2]q
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[2]q
    snapshotter = "lifeboat"
`, socket, "linux/"+runtime.GOARCH)
}

// Stop removes leftover containers, stops containerd (SIGTERM, then SIGKILL) and kills the
// shims it left behind, saying to log what it cleans up. It returns what went wrong.
func (c *Containerd) Stop(log Logger) error {
	if c.proc.Running() {
		c.removeContainers(log)
	}
	var errs []error
	if err := c.proc.Stop(containerdStopGrace); err != nil {
		errs = append(errs, fmt.Errorf("stopping containerd: %w", err))
	}
	if err := c.killShims(log); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RemoveDir unmounts whatever containerd left mounted and removes its directory. Call it after
// Stop.
func (c *Containerd) RemoveDir() error {
	var errs []error
	if err := unmountUnder(c.dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("removing containerd directory: %w", err))
	}
	return errors.Join(errs...)
}

// Address returns containerd's gRPC socket path.
func (c *Containerd) Address() string { return c.address }

// TTRPCAddress returns containerd's ttrpc socket path.
func (c *Containerd) TTRPCAddress() string { return c.ttrpc }

// Namespace returns the namespace RunCtr uses.
func (c *Containerd) Namespace() string { return c.namespace }

// Dir returns the directory holding containerd's config, log, root, state and sockets.
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

// WithNamespace returns a view of the same containerd whose RunCtr uses namespace ns.
func (c *Containerd) WithNamespace(ns string) *Containerd {
	cp := *c
	cp.namespace = ns
	return &cp
}

// errorLog is a Logger that adds what it is given to an error.
type errorLog struct{ err *error }

func (l errorLog) Logf(format string, args ...any) {
	*l.err = fmt.Errorf("%w\n"+format, append([]any{*l.err}, args...)...)
}

// discard is a Logger that drops everything.
type discard struct{}

func (discard) Logf(string, ...any) {}
