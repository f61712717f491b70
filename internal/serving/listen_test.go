package serving

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

// TestListenUnix checks the socket's modes and that a live socket is refused, a stale one replaced.
func TestListenUnix(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "lbsrv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "run", "s.sock")

	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, want 0700", di.Mode().Perm())
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := ListenUnix(path); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("ListenUnix on a live socket = %v, want already exists", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a daemon killed with its socket left behind
	l2, err := ListenUnix(path)
	if err != nil {
		t.Fatalf("ListenUnix over a stale socket: %v", err)
	}
	l2.Close()
}
