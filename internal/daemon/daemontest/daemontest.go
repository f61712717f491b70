// Package daemontest runs daemons for tests: each with its own root, sockets and free ports.
package daemontest

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/log"

	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/daemon"
)

// LogBuffer is a bytes.Buffer safe for the logger and the test to share.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *LogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// CaptureLog sends lifeboat's log to a buffer for the rest of the test.
func CaptureLog(t testing.TB) *LogBuffer {
	t.Helper()
	var buf LogBuffer
	logger := log.L.Logger
	out, level := logger.Out, logger.GetLevel()
	logger.SetOutput(&buf)
	t.Cleanup(func() {
		logger.SetOutput(out)
		logger.SetLevel(level)
	})
	return &buf
}

// Config is a configuration for a daemon of the test's own: its root, sockets and a
// mirror on a free port, in a fresh directory.
func Config(t testing.TB) config.Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "lbserve") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := config.Default()
	cfg.Root = filepath.Join(dir, "root")
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = "127.0.0.1:0"
	cfg.Plugin.Address = filepath.Join(dir, "run", "p.sock")
	cfg.Admin.Address = filepath.Join(dir, "run", "a.sock")
	cfg.Log.Level = "warn"
	return cfg
}

// Start runs a daemon until the test calls stop, and returns once it is ready (READY=1).
// wait returns what New or Run returned.
func Start(t testing.TB, cfg config.Config, grace time.Duration) (stop func(), wait func() error) {
	t.Helper()
	notifySock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifySock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", notifySock)
	ctx, cancel := context.WithCancel(t.Context())
	var serveErr error
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var d *daemon.Daemon
		if d, serveErr = daemon.New(ctx, cfg, daemon.Options{Version: "test", Grace: grace}); serveErr == nil {
			serveErr = d.Run(ctx)
		}
	}()
	wait = func() error {
		<-finished
		return serveErr
	}
	t.Cleanup(func() {
		cancel()
		wait()
	})
	buf := make([]byte, 4096)
	for {
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		n, err := conn.Read(buf)
		if err != nil {
			select {
			case <-finished:
				t.Fatalf("serve returned before it was ready: %v", serveErr)
			default:
			}
			t.Fatalf("serve did not get ready: %v", err)
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			return cancel, wait
		}
	}
}
