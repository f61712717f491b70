package daemon_test

import (
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
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/daemon"
	"github.com/lifeboat-dev/lifeboat/internal/daemon/daemontest"
	"github.com/lifeboat-dev/lifeboat/internal/errmsg"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

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
	img := registrytest.RandomImage(t, 64<<10, 1)
	registrytest.Write(t, u.URL, "app", "v1", img)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	u.manifest = *m
	return u
}

// TestRunStopsCleanlyWithRequestsInFlight stops the daemon while an admin pull waits on a
// download: within the grace the pull finishes and is cached; past it the pull is cancelled.
// Either way Run returns no error, and only once the pull's work ended: the cache it leaves
// opens again with the pull whole or not at all.
func TestRunStopsCleanlyWithRequestsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name    string
		grace   time.Duration
		release bool // the download goes on once the daemon is stopping; else it hangs
	}{
		{"finishes within the grace", time.Minute, true},
		{"cut at the deadline", 100 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := daemontest.CaptureLog(t)
			up := newBlockingUpstream(t)
			up.block.Store(true)
			cfg := daemontest.Config(t)
			cfg.Registry = map[string]config.Registry{up.host: {Endpoints: []string{up.URL}}}
			stop, wait := daemontest.Start(t, cfg, tc.grace)

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

// TestNewLeavesNothingWhenStartFails takes one of the daemon's addresses: New must fail
// with one sentence naming it, and leave no root, socket or socket directory behind.
func TestNewLeavesNothingWhenStartFails(t *testing.T) {
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
			cfg := daemontest.Config(t)
			base := filepath.Dir(cfg.Root)
			cfg.Root = filepath.Join(base, "var", "root") // parents to create too
			cfg.Plugin.Address = filepath.Join(base, "run-p", "p.sock")
			cfg.Admin.Address = filepath.Join(base, "run-a", "a.sock")
			tc.take(t, &cfg)
			_, err := daemon.New(t.Context(), cfg, daemon.Options{Grace: time.Minute})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("New with the %s: %v, want one sentence with %q", tc.name, err, tc.want)
			}
			if msg := errmsg.Sentence(err); strings.HasSuffix(msg, "already exists") {
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

// TestOpenIsComplete opens a daemon without listeners, as the offline commands do: every part
// of its admin service works (Status used to crash on a nil outage simulator), and nothing is
// fetched from an upstream.
func TestOpenIsComplete(t *testing.T) {
	cfg := daemontest.Config(t)
	d, err := daemon.Open(t.Context(), cfg, daemon.Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st := d.Admin.Status(t.Context())
	if st.Version != "test" || st.Root != cfg.Root || st.Outage.Active {
		t.Errorf("status %+v", st)
	}
	if _, err := d.Admin.Images(t.Context(), admin.ImagesRequest{}); err != nil {
		t.Errorf("images: %v", err)
	}
	rep, err := d.Admin.Drill(t.Context(), admin.DrillRequest{Refs: []string{"docker.io/library/alpine:3.20"}, Fix: true})
	if err != nil || len(rep.Results) != 1 || rep.Results[0].Ready || !strings.Contains(rep.Results[0].FixError, "not running") {
		t.Errorf("drill --fix without the daemon: %+v, %v; want not ready, nothing fetched", rep, err)
	}
	for _, p := range []string{cfg.Admin.Address, cfg.Plugin.Address} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists (%v): Open claims no address", p, err)
		}
	}
}
