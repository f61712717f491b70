package launch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RunCtr runs `ctr --address ADDRESS --namespace NS args...` and returns its standard output.
// When ctx ends, ctr and every process it started are killed. On failure the error carries the
// command line and its combined output.
func (c *Containerd) RunCtr(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--address", c.address, "--namespace", c.namespace}, args...)
	cmd := exec.CommandContext(ctx, c.ctrPath, full...)
	var stdout bytes.Buffer
	combined := &lockedBuffer{}
	cmd.Stdout = io.MultiWriter(&stdout, combined)
	cmd.Stderr = combined
	// ctr run waits on FIFOs and signals; make sure a canceled ctr dies with its children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		return stdout.String(), fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, combined.String())
	}
	return stdout.String(), nil
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
