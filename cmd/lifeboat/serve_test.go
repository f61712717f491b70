package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
)

// TestServeRefusesBadSettings checks that mistakes stop `lifeboat serve` with one sentence
// naming them, before anything is opened or listened on.
func TestServeRefusesBadSettings(t *testing.T) {
	dir := t.TempDir()
	badKey := filepath.Join(dir, "bad.toml")
	os.WriteFile(badKey, []byte("root = \"/tmp/x\"\n[mirror]\nadress = \"127.0.0.1:1\"\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown outage mode", []string{"--simulate-outage", "bogus"}, "bogus"},
		{"unknown config key", []string{"--config", badKey}, `line 3: unknown key "mirror.adress"`},
		{"missing explicit config", []string{"--config", filepath.Join(dir, "none.toml")}, "none.toml"},
		{"bad log level", []string{"--log-level", "loud"}, "log.level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			_, err := runCLI(t, append([]string{"serve", "--root", root, "--listen", "127.0.0.1:0", "--metrics-address", "",
				"--socket", filepath.Join(dir, "p.sock"), "--admin-socket", filepath.Join(dir, "a.sock")}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve %v: %v, want an error naming %q", tc.args, err, tc.want)
			}
			if _, err := os.Stat(root); !os.IsNotExist(err) {
				t.Errorf("the cache root was created although the settings were refused")
			}
		})
	}
}

// TestServeEnvironment checks the precedence flag > LIFEBOAT_* variable > config file.
func TestServeEnvironment(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "c.toml")
	os.WriteFile(cfgFile, []byte("root = \"/from/file\"\n[mirror]\naddress = \"127.0.0.1:7000\"\n"), 0o600)
	t.Setenv("LIFEBOAT_CONFIG", cfgFile)
	t.Setenv("LIFEBOAT_LISTEN", "127.0.0.1:7001")
	t.Setenv("LIFEBOAT_LOG_LEVEL", "debug")
	cmd := newServeCommand()
	if err := cmd.ParseFlags([]string{"--log-level", "warn"}); err != nil {
		t.Fatal(err)
	}
	var f serveFlags
	f.configPath, _ = cmd.Flags().GetString("config")
	f.logLevel, _ = cmd.Flags().GetString("log-level")
	cfg, err := loadServeConfig(cmd, f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != "/from/file" || cfg.Mirror.Address != "127.0.0.1:7001" || cfg.Log.Level != "warn" {
		t.Errorf("root %q (want the file's), mirror %q (want the variable's), log level %q (want the flag's)",
			cfg.Root, cfg.Mirror.Address, cfg.Log.Level)
	}
	// Empty variables, as a template that fills in nothing leaves them, count as unset; but
	// LIFEBOAT_METRICS_ADDRESS="" turns metrics off, as the file's "" does.
	t.Setenv("LIFEBOAT_ROOT", "")
	t.Setenv("LIFEBOAT_LISTEN", "")
	t.Setenv("LIFEBOAT_SIMULATE_OUTAGE", "")
	t.Setenv("LIFEBOAT_METRICS_ADDRESS", "")
	cfg, err = loadServeConfig(newServeCommand(), serveFlags{configPath: "/etc/lifeboat/config.toml"})
	if err != nil {
		t.Fatalf("empty variables: %v", err)
	}
	if cfg.Root != "/from/file" || cfg.Mirror.Address != "127.0.0.1:7000" || cfg.Metrics.Address != "" {
		t.Errorf("empty variables: root %q, mirror %q (want the file's), metrics %q (want off)", cfg.Root, cfg.Mirror.Address, cfg.Metrics.Address)
	}
	t.Setenv("LIFEBOAT_CONFIG", filepath.Join(dir, "missing.toml"))
	if _, err := loadServeConfig(newServeCommand(), serveFlags{configPath: "/etc/lifeboat/config.toml"}); err == nil {
		t.Error("a missing file named by LIFEBOAT_CONFIG must be an error, as with --config")
	}
}

// TestServeNotifiesSystemd runs `lifeboat serve` as a Type=notify unit would: it must send
// READY=1 once its listeners are up (the mirror answers by then) and STOPPING=1 when told to stop.
func TestServeNotifiesSystemd(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	// A free port for the mirror, so the test can check it answers once READY=1 arrives.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mirrorAddr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cmd := newRootCommand()
	cmd.SetOut(io.Discard)
	cmd.SetArgs([]string{"serve", "--root", filepath.Join(dir, "root"), "--listen", mirrorAddr, "--metrics-address", "",
		"--socket", filepath.Join(dir, "p.sock"), "--admin-socket", filepath.Join(dir, "a.sock"), "--log-level", "warn"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	// read returns the next notification, failing the test if serve exits or none comes.
	read := func(want string) string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				select {
				case serr := <-done:
					t.Fatalf("serve returned (%v) before sending %s", serr, want)
				default:
				}
				t.Fatalf("no %s notification: %v", want, err)
			}
			msg := string(buf[:n])
			if strings.Contains(msg, want) {
				return msg
			}
			t.Logf("notification: %q", msg)
		}
	}
	msg := read("READY=1")
	if !strings.Contains(msg, "STATUS=serving the mirror on "+mirrorAddr) {
		t.Errorf("READY=1 came without a status naming the mirror: %q", msg)
	}
	resp, err := http.Get("http://" + mirrorAddr + "/v2/")
	if err != nil {
		t.Fatalf("the mirror does not answer after READY=1: %v", err)
	}
	resp.Body.Close()

	cancel()
	read("STOPPING=1")
	if err := <-done; err != nil {
		t.Fatalf("serve after a stop: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// captureLog sends lifeboat's log to a buffer for the rest of the test.
func captureLog(t *testing.T) *syncBuffer {
	t.Helper()
	var buf syncBuffer
	logger := log.L.Logger
	out, level := logger.Out, logger.GetLevel()
	logger.SetOutput(&buf)
	t.Cleanup(func() {
		logger.SetOutput(out)
		logger.SetLevel(level)
	})
	return &buf
}

// blockingUpstream is a registry whose blob downloads, once block is set, wait until release
// is closed or the request ends.
type blockingUpstream struct {
	*httptest.Server
	host     string
	block    atomic.Bool
	release  chan struct{}
	entered  chan struct{} // closed when the first blocked download starts
	enter    sync.Once
	left     chan struct{} // closed when a blocked download ends without release
	leave    sync.Once
	manifest v1.Manifest
}

func newBlockingUpstream(t *testing.T) *blockingUpstream {
	t.Helper()
	u := &blockingUpstream{release: make(chan struct{}), entered: make(chan struct{}), left: make(chan struct{})}
	reg := registry.New(registry.Logger(stdlog.New(io.Discard, "", 0)))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u.block.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			u.enter.Do(func() { close(u.entered) })
			select {
			case <-u.release:
			case <-r.Context().Done():
				u.leave.Do(func() { close(u.left) })
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		u.block.Store(false)
		u.Close()
	})
	u.host = strings.TrimPrefix(u.URL, "http://")
	img, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(u.host+"/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	u.manifest = *m
	return u
}

// daemonConfig is a configuration for a daemon of the test's own: its root, sockets and a
// mirror on a free port, in a fresh directory.
func daemonConfig(t *testing.T) config.Config {
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

// startServe runs serve until the test calls stop, and returns once it is ready (READY=1).
// wait returns what serve returned.
func startServe(t *testing.T, cfg config.Config, grace time.Duration) (stop func(), wait func() error) {
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
		serveErr = serve(ctx, cfg, grace)
		close(finished)
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

// TestServeStopsCleanlyWithRequestsInFlight stops the daemon while an admin pull waits on a
// download: within the grace the pull finishes and is cached; past it the pull is cancelled.
// Either way serve returns no error, and only once the pull's work ended: the cache it leaves
// opens again with the pull whole or not at all.
func TestServeStopsCleanlyWithRequestsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name    string
		grace   time.Duration
		release bool // the download goes on once the daemon is stopping; else it hangs
	}{
		{"finishes within the grace", time.Minute, true},
		{"cut at the deadline", 100 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := captureLog(t)
			up := newBlockingUpstream(t)
			up.block.Store(true)
			cfg := daemonConfig(t)
			cfg.Registry = map[string]config.Registry{up.host: {Endpoints: []string{up.URL}}}
			stop, wait := startServe(t, cfg, tc.grace)

			type pulled struct {
				rep admin.PullReport
				err error
			}
			pulls := make(chan pulled, 1)
			go func() {
				rep, err := admin.NewClient(cfg.Admin.Address).Pull(t.Context(), admin.PullRequest{Refs: []string{up.host + "/app:v1"}}, nil)
				pulls <- pulled{rep, err}
			}()
			<-up.entered
			stop()
			if tc.release {
				close(up.release)
			}
			if err := wait(); err != nil {
				t.Fatalf("serve stopped with a pull in flight: %v", err)
			}
			p := <-pulls

			store, err := cache.Open(t.Context(), cfg.Root, cache.Options{})
			if err != nil {
				t.Fatalf("the cache does not open after the stop: %v", err)
			}
			defer store.Close()
			_, layerErr := store.Info(t.Context(), digest.Digest(up.manifest.Layers[0].Digest.String()))
			if tc.release {
				if p.err != nil || p.rep.Pulled != 1 {
					t.Fatalf("pull in flight at the stop: %+v, %v; want it pulled", p.rep, p.err)
				}
				if layerErr != nil {
					t.Errorf("the layer the pull fetched is not cached: %v", layerErr)
				}
				if strings.Contains(logs.String(), "were cancelled") {
					t.Errorf("a stop within the grace cut requests:\n%s", logs)
				}
				return
			}
			if p.err == nil {
				t.Errorf("pull cut at the deadline: %+v, want an error", p.rep)
			}
			if !errdefs.IsNotFound(layerErr) {
				t.Errorf("the layer of a pull cut short: %v, want not cached", layerErr)
			}
			select {
			case <-up.left:
			case <-time.After(time.Minute):
				t.Fatal("the download of the cut pull was never cancelled")
			}
			if !strings.Contains(logs.String(), "1 requests in flight were cancelled") || !strings.Contains(logs.String(), "server=\"admin API\"") {
				t.Errorf("no warning that the stop cut the admin request:\n%s", logs)
			}
		})
	}
}

// TestServeLeavesNothingWhenStartFails takes one of the daemon's addresses: serve must fail
// with one sentence naming it, and leave no root, socket or socket directory behind.
func TestServeLeavesNothingWhenStartFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		take func(t *testing.T, cfg *config.Config)
		want string
	}{
		{"plugin socket in use", func(t *testing.T, cfg *config.Config) { cfg.Plugin.Address = liveSocket(t) }, "plugin socket: "},
		{"admin socket in use", func(t *testing.T, cfg *config.Config) { cfg.Admin.Address = liveSocket(t) }, "admin socket: "},
		{"mirror port in use", func(t *testing.T, cfg *config.Config) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			cfg.Mirror.Address = ln.Addr().String()
		}, "cannot listen for registry mirror on "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := daemonConfig(t)
			base := filepath.Dir(cfg.Root)
			cfg.Root = filepath.Join(base, "var", "root") // parents to create too
			cfg.Plugin.Address = filepath.Join(base, "run-p", "p.sock")
			cfg.Admin.Address = filepath.Join(base, "run-a", "a.sock")
			tc.take(t, &cfg)
			err := serve(t.Context(), cfg, time.Minute)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("serve with the %s: %v, want one sentence with %q", tc.name, err, tc.want)
			}
			if msg := sentence(err); strings.HasSuffix(msg, "already exists") {
				t.Errorf("error %q ends in an error class", msg)
			}
			for _, p := range []string{"var", "run-p", "run-a"} {
				if _, err := os.Stat(filepath.Join(base, p)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s left behind after a failed start (%v)", p, err)
				}
			}
		})
	}
}

// liveSocket is a socket a process answers on.
func liveSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lblive")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Close()
		os.RemoveAll(dir)
	})
	return path
}

// TestServeOutageModeErrors checks that a bad outage mode is one sentence naming where it was
// set and the modes there are.
func TestServeOutageModeErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.toml")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"flag", "", []string{"--simulate-outage", "bogus"}, `--simulate-outage "bogus" is not an outage mode; the modes are dns, refused, blackhole, reset, http-<status> (400 to 599, e.g. http-503), slow and flaky`},
		{"environment", "http-999", nil, `LIFEBOAT_SIMULATE_OUTAGE="http-999" is not an outage mode; the modes are dns,`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("LIFEBOAT_SIMULATE_OUTAGE", tc.env)
			}
			root := filepath.Join(dir, tc.name)
			_, err := runCLI(t, append([]string{"serve", "--root", root, "--config", empty}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "configuration") || strings.HasSuffix(sentence(err), "invalid argument") {
				t.Fatalf("serve with outage mode from the %s: %v, want %q", tc.name, err, tc.want)
			}
			if _, err := os.Stat(root); !errors.Is(err, fs.ErrNotExist) {
				t.Error("the root was created although the settings were refused")
			}
		})
	}
}
