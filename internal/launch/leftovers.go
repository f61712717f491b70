package launch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Where the runc shim keeps what it does not put in containerd's state directory: runc's state
// for namespace ns in runcStateRoot/ns (unless a client sets another root), and its sockets in
// shimSocketDir.
const (
	runcStateRoot = "/run/containerd/runc"
	shimSocketDir = "/run/containerd/s"
)

// removeContainers force-deletes the tasks and containers of every namespace, so that no shim
// and no rootfs mount outlives a failed test. Errors are logged, not returned: this is cleanup.
func (c *Containerd) removeContainers(log Logger) {
	nsOut, err := c.ctrWithin(30*time.Second, "namespaces", "ls", "--quiet")
	if err != nil {
		log.Logf("launch: listing namespaces for cleanup: %v", err)
		return
	}
	for _, ns := range strings.Fields(nsOut) {
		view := c.WithNamespace(ns)
		out, err := view.ctrWithin(30*time.Second, "containers", "ls", "--quiet")
		if err != nil {
			log.Logf("launch: listing containers for cleanup: %v", err)
			continue
		}
		for _, id := range strings.Fields(out) {
			// A container without a task makes `tasks delete` fail; that is fine.
			_, _ = view.ctrWithin(30*time.Second, "tasks", "delete", "--force", id)
			if _, err := view.ctrWithin(30*time.Second, "containers", "delete", id); err != nil {
				log.Logf("launch: removing leftover container %s/%s: %v", ns, id, err)
			}
		}
	}
}

// shim is a containerd shim process found in /proc.
type shim struct {
	pid       int
	namespace string
	id        string
}

// killShims cleans up after a containerd that died without stopping its containers: for every
// shim still serving it (one whose command line names its gRPC address) it force-deletes the
// runc container, kills the container processes the shim parents, kills the shim, and waits for
// the shims to go. It returns an error if some shim is still running after that.
func (c *Containerd) killShims(log Logger) error {
	shims := c.shims()
	if len(shims) == 0 {
		return nil
	}
	pids := make([]int, 0, len(shims))
	for _, s := range shims {
		log.Logf("launch: removing container %s/%s of leftover shim %d", s.namespace, s.id, s.pid)
		pids = append(pids, s.pid)
		if s.namespace != "" && s.id != "" {
			root := filepath.Join(runcStateRoot, s.namespace)
			if out, err := exec.Command("runc", "--root", root, "delete", "--force", s.id).CombinedOutput(); err != nil {
				log.Logf("launch: runc delete --force %s: %v: %s", s.id, err, out)
			}
		}
	}
	// Container init processes are children of their shim (a child subreaper); killing one
	// kills its whole PID namespace. Kill them first, so they do not outlive the shim.
	for _, pid := range childPids(pids) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// A killed shim leaves its sockets behind.
	for _, s := range shims {
		for _, debug := range []bool{false, true} {
			if err := os.Remove(shimSocket(c.address, s.namespace, s.id, debug)); err != nil && !errors.Is(err, os.ErrNotExist) {
				log.Logf("launch: %v", err)
			}
		}
	}
	return WaitFor(10*time.Second, nil, func() error {
		if left := c.shims(); len(left) > 0 {
			return fmt.Errorf("%d shims still running", len(left))
		}
		return nil
	})
}

// ctrWithin runs ctr with a timeout.
func (c *Containerd) ctrWithin(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.RunCtr(ctx, args...)
}

// shims returns the live (not zombie) containerd shims whose -address is this containerd's
// socket.
func (c *Containerd) shims() []shim {
	var shims []shim
	for _, pid := range allPids() {
		dir := filepath.Join("/proc", strconv.Itoa(pid))
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") || argValue(args, "-address") != c.address {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil && isZombie(string(stat)) {
			continue
		}
		shims = append(shims, shim{pid: pid, namespace: argValue(args, "-namespace"), id: argValue(args, "-id")})
	}
	return shims
}

// shimSocket returns the path of the socket the runc shim for container id in namespace ns
// of the containerd at address listens on (pkg/shim.CreateSocketAddress); the debug socket
// exists when containerd logs at debug level.
func shimSocket(address, ns, id string, debug bool) string {
	path := filepath.Join(address, ns, id)
	if debug {
		path = filepath.Join(path, "debug")
	}
	return filepath.Join(shimSocketDir, fmt.Sprintf("%x", sha256.Sum256([]byte(path))))
}

// argValue returns the argument following flag in args, or "".
func argValue(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// allPids lists the process ids in /proc.
func allPids() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// childPids returns the processes whose parent is one of parents.
func childPids(parents []int) []int {
	isParent := make(map[int]bool, len(parents))
	for _, p := range parents {
		isParent[p] = true
	}
	var pids []int
	for _, pid := range allPids() {
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			continue
		}
		if f := statFields(string(stat)); len(f) > 1 {
			if ppid, err := strconv.Atoi(f[1]); err == nil && isParent[ppid] {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// statFields returns the fields of a /proc/PID/stat line after "pid (comm)": state, ppid, ...
// comm may contain blanks and parentheses, so the split is at the last ')'.
func statFields(stat string) []string {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(stat[i+1:])
}

// isZombie reports whether a /proc/PID/stat line has state Z (zombie) or X (dead).
func isZombie(stat string) bool {
	f := statFields(stat)
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}
