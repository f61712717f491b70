// Package launch starts the real processes that lifeboat's integration tests and benchmark run
// against, with everything they own under one directory: any child process with its output in a
// log file (Process), and containerd with its own config, root, state and sockets (Containerd),
// stopped with the containers, shims and mounts it leaves behind.
//
// It reports through errors and a Logger rather than a testing.TB, so that hack/bench uses it as
// it is; integration/harness wraps it for tests.
package launch

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// maxAttachedLog bounds how much of a process log AttachLog and startup errors carry.
const maxAttachedLog = 256 << 10

// Logger receives what cleanup has to say; testing.TB is one.
type Logger interface {
	Logf(format string, args ...any)
}

// Process is a child process, with its stdout and stderr captured to a log file.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has exited and waitErr is set
	waitErr error
}

// Start starts cmd with its output appended to logPath. cmd must not have been started and
// must not use exec.CommandContext with a context that ends before Stop is called (a test's
// t.Context() is canceled before its cleanups run): that kills the process before Stop gets a
// chance to stop it gracefully. The process gets SIGKILL if its parent dies. Start registers no
// cleanup: callers call Stop.
func Start(name string, cmd *exec.Cmd, logPath string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, cmd.Path, err)
	}
	p := &Process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath returns the file the process writes its output to.
func (p *Process) LogPath() string { return p.logPath }

// Log returns the process output so far.
func (p *Process) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p.logPath, err)
	}
	return string(b)
}

// Exited returns a channel that is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// ExitErr returns how the process exited (nil for status 0), or an error saying it is still
// running.
func (p *Process) ExitErr() error {
	select {
	case <-p.done:
		return p.waitErr
	default:
		return fmt.Errorf("%s (pid %d) is still running", p.name, p.Pid())
	}
}

// Stop sends SIGTERM and waits up to grace for the process to exit, then sends SIGKILL and
// waits for it. It returns an error if the process had to be killed or exited with a status
// other than 0 after SIGTERM; stopping an already stopped process returns how it exited.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.exitError()
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending SIGTERM to %s: %w", p.name, err)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.exitError()
	case <-timer.C:
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s: %w", p.name, err)
	}
	<-p.done
	return fmt.Errorf("%s did not exit within %s of SIGTERM and was killed", p.name, grace)
}

// Kill sends SIGKILL, as a crash would, and waits for the process to exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// exitError reports an exit other than a clean one; a process that died of the SIGTERM we sent
// (one that installs no handler, like the registry on some paths) counts as clean.
func (p *Process) exitError() error {
	if p.waitErr == nil {
		return nil
	}
	var exitErr *exec.ExitError
	if errors.As(p.waitErr, &exitErr) {
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return fmt.Errorf("%s exited: %w", p.name, p.waitErr)
}

// AttachLog writes the process log to l, keeping the last part of a large log.
func (p *Process) AttachLog(l Logger) {
	b, note, err := p.logTail()
	if err != nil {
		l.Logf("%s log: %v", p.name, err)
		return
	}
	l.Logf("---- %s log %s%s ----\n%s\n---- end of %s log ----", p.name, p.logPath, note, b, p.name)
}

// logTail reads the log, or its last maxAttachedLog bytes with a note saying so.
func (p *Process) logTail() (b []byte, note string, err error) {
	f, err := os.Open(p.logPath)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > maxAttachedLog {
		if _, err := f.Seek(-maxAttachedLog, io.SeekEnd); err == nil {
			note = fmt.Sprintf(" (last %d of %d bytes)", maxAttachedLog, info.Size())
		}
	}
	b, err = io.ReadAll(f)
	return b, note, err
}

// ErrStopped is returned by WaitFor when its stop channel closes.
var ErrStopped = errors.New("stopped")

// WaitFor calls cond until it returns nil, backing off from 10 ms to 250 ms between calls, and
// returns cond's last error if that does not happen within timeout. It also gives up, with an
// error wrapping ErrStopped, as soon as stop is closed (pass a Process's Exited() to stop
// waiting for a dead process, or nil).
func WaitFor(timeout time.Duration, stop <-chan struct{}, cond func() error) error {
	deadline := time.Now().Add(timeout)
	delay := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %s: %w", timeout, err)
		}
		timer := time.NewTimer(delay)
		select {
		case <-stop:
			timer.Stop()
			return fmt.Errorf("%w (last check: %v)", ErrStopped, err)
		case <-timer.C:
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// GetOK returns nil if GET url with client answers 200 OK, and otherwise says what it got: a
// WaitFor condition for a server that is coming up.
func GetOK(client *http.Client, url string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return DoOK(client, req)
}

// DoOK sends req with client and returns nil if it is answered 200 OK, and otherwise says
// what it got. It discards the body.
func DoOK(client *http.Client, req *http.Request) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", req.Method, req.URL, resp.Status)
	}
	return nil
}
