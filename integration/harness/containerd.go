package harness

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// DefaultNamespace is the containerd namespace Ctr uses unless ContainerdOptions says otherwise.
const DefaultNamespace = "lifeboat-test"

// CtrTimeout bounds one ctr command run by Ctr or MustCtr.
const CtrTimeout = 2 * time.Minute

// ContainerdOptions adjusts the containerd StartContainerdWith starts. Tools defaults to
// ToolsDir and Namespace to DefaultNamespace.
type ContainerdOptions = launch.ContainerdOptions

// Containerd is a containerd process started by StartContainerd (launch.Containerd), with
// everything it owns under one temporary directory, and ctr helpers that fail the test.
type Containerd struct {
	*launch.Containerd
}

// StartContainerd starts containerd with the default options; see StartContainerdWith.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	return StartContainerdWith(t, ContainerdOptions{})
}

// StartContainerdWith starts containerd as a child process with its own config file, root,
// state and sockets under a new temporary directory, and waits until it answers gRPC calls (see
// launch.StartContainerd).
//
// On cleanup it stops containers left running, stops containerd (SIGTERM, then SIGKILL), kills
// shims it left behind, unmounts everything under its directory and removes it; if the test
// failed, containerd's log is attached to the test output.
func StartContainerdWith(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	RequireRoot(t)
	// Fail with the harness's advice if a binary is missing.
	Tool(t, ToolContainerd)
	Tool(t, ToolCtr)
	Tool(t, ToolShim)
	Runc(t)
	opts.Tools = cmp.Or(opts.Tools, ToolsDir(t))
	opts.Namespace = cmp.Or(opts.Namespace, DefaultNamespace)
	c, err := launch.StartContainerd(opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(t); err != nil {
			t.Errorf("harness: %v", err)
		}
		if t.Failed() {
			c.Process().AttachLog(t)
		}
		if err := c.RemoveDir(); err != nil {
			t.Errorf("harness: %v", err)
		}
	})
	return &Containerd{c}
}

// SnapshotterConfig is the ContainerdOptions.ExtraConfig that adds lifeboat's snapshotter,
// served on socket, as the proxy plugin "lifeboat" (launch.SnapshotterConfig).
func SnapshotterConfig(socket string) string { return launch.SnapshotterConfig(socket) }

// WithNamespace returns a view of the same containerd whose Ctr uses namespace ns.
func (c *Containerd) WithNamespace(ns string) *Containerd {
	return &Containerd{c.Containerd.WithNamespace(ns)}
}

// Ctr runs `ctr --address ADDRESS --namespace NS args...` with a timeout of CtrTimeout and
// returns its standard output. On failure the error carries the command line and its combined
// output. It does not use t.Context(), so it also works inside t.Cleanup.
func (c *Containerd) Ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeoutCause(context.Background(), CtrTimeout, fmt.Errorf("timed out after %s", CtrTimeout))
	defer cancel()
	return c.RunCtr(ctx, args...)
}

// MustCtr is Ctr that fails the test on error.
func (c *Containerd) MustCtr(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Ctr(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ImageDigest returns the target digest ("sha256:...") of image ref as `ctr images ls` reports
// it, failing the test if containerd does not know the image.
func (c *Containerd) ImageDigest(t testing.TB, ref string) string {
	t.Helper()
	out := c.MustCtr(t, "images", "ls")
	// REF TYPE DIGEST SIZE PLATFORMS LABELS; ref, type and digest never contain blanks.
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 3 && fields[0] == ref {
			return fields[2]
		}
	}
	t.Fatalf("image %s not in `ctr images ls`:\n%s", ref, out)
	return ""
}

// ContentDigests returns the set of blob digests in containerd's content store for the
// namespace, from `ctr content ls --quiet`.
func (c *Containerd) ContentDigests(t testing.TB) map[string]bool {
	t.Helper()
	out := c.MustCtr(t, "content", "ls", "--quiet")
	digests := make(map[string]bool)
	for _, d := range strings.Fields(out) {
		digests[d] = true
	}
	return digests
}
