package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CtrTimeout bounds one ctr command run by Ctr or MustCtr.
const CtrTimeout = 2 * time.Minute

// Ctr runs `ctr --address ADDRESS --namespace NS args...` with a timeout of CtrTimeout and
// returns its standard output. On failure the error carries the command line and its combined
// output. It does not use t.Context(), so it also works inside t.Cleanup.
func (c *Containerd) Ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return c.ctr(CtrTimeout, args...)
}

// MustCtr is Ctr that fails the test on error.
func (c *Containerd) MustCtr(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.ctr(CtrTimeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (c *Containerd) ctr(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"--address", c.address, "--namespace", c.namespace}, args...)
	cmd := exec.CommandContext(ctx, c.ctrPath, full...)
	var stdout bytes.Buffer
	combined := &lockedBuffer{}
	cmd.Stdout = io.MultiWriter(&stdout, combined)
	cmd.Stderr = combined
	// ctr run waits on FIFOs and signals; make sure a timed-out ctr dies with its children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (timed out after %s)", err, timeout)
		}
		return stdout.String(), fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, combined.String())
	}
	return stdout.String(), nil
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

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a command's stdout and
// stderr copying goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
