package harness

import (
	"os/exec"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// Process is a child process started by a test, with its stdout and stderr captured to a log
// file; AttachLog(t) writes the log into the test output.
type Process = launch.Process

// StartProcess starts cmd with its output appended to logPath (see launch.Start), failing the
// test if it cannot. It does not register any cleanup; callers call Stop, usually from
// t.Cleanup, and AttachLog.
func StartProcess(t testing.TB, name string, cmd *exec.Cmd, logPath string) *Process {
	t.Helper()
	p, err := launch.Start(name, cmd, logPath)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return p
}

// WaitFor calls cond until it returns nil, backing off from 10 ms to 250 ms between calls, and
// fails the test with cond's last error if that does not happen within timeout. It also gives up
// as soon as stop is closed (pass a Process's Exited() to stop waiting for a dead process, or
// nil).
func WaitFor(t testing.TB, what string, timeout time.Duration, stop <-chan struct{}, cond func() error) {
	t.Helper()
	if err := launch.WaitFor(timeout, stop, cond); err != nil {
		t.Fatalf("harness: waiting for %s: %v", what, err)
	}
}
