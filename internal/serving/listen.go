// Package serving opens the daemon's listeners and serves on them with one drain rule: when
// told to stop, stop accepting, let the requests in flight finish for a grace period, then cut
// those left and wait for their handlers to return. HTTP and gRPC servers stop the same way.
package serving

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
)

// ListenUnix creates a unix socket at path with mode 0600, its directory made 0700 if missing.
// A socket left by a stopped process is replaced; one a live process answers on is an error
// (errdefs.ErrAlreadyExists). Closing the listener removes the socket file.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s is in use by a running process: %w", path, errdefs.ErrAlreadyExists)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// ListenTCP listens on the TCP address addr ("127.0.0.1:5100"; port 0 for a free one).
func ListenTCP(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}
