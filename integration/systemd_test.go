package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestReadyMeansServing runs `lifeboat serve` as the systemd unit does (Type=notify), and
// checks the promise of deploy/systemd/lifeboat.service and the README: READY=1 comes once
// the cache is open and every listener answers. At the moment READY=1 arrives, and without a
// retry, the mirror answers GET /v2/ with 200, /metrics serves lifeboat's metrics, the admin
// socket answers a status request, and the plugin socket answers both of containerd's proxy
// plugin services.
func TestReadyMeansServing(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	dir, err := os.MkdirTemp("", "lb-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	notifySock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifySock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	mirrorAddr, metricsAddr := freeAddr(t), freeAddr(t)
	pluginSock, adminSock := filepath.Join(dir, "lifeboat.sock"), filepath.Join(dir, "admin.sock")
	cmd := exec.Command(harness.BuildLifeboat(t), "serve", "--config", filepath.Join(dir, "none.toml"),
		"--root", filepath.Join(dir, "root"), "--listen", mirrorAddr, "--metrics-address", metricsAddr,
		"--socket", pluginSock, "--admin-socket", adminSock)
	// An explicit config file that does not exist is an error: an empty one stands for none.
	if err := os.WriteFile(filepath.Join(dir, "none.toml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifySock)
	proc := harness.StartProcess(t, "lifeboat", cmd, filepath.Join(dir, "lifeboat.log"))
	t.Cleanup(func() {
		if err := proc.Stop(30 * time.Second); err != nil {
			t.Errorf("stopping lifeboat: %v", err)
		}
		if t.Failed() {
			proc.AttachLog(t)
		}
	})

	// Wait for READY=1, and nothing else: every check below is made once, at that moment.
	buf := make([]byte, 4096)
	for ready := false; !ready; {
		conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no READY=1 from lifeboat serve (exited: %v): %v", !proc.Running(), err)
		}
		msg := string(buf[:n])
		t.Logf("notification: %q", msg)
		ready = strings.Contains(msg, "READY=1")
	}

	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Errorf("GET %s right after READY=1: %v", url, err)
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("http://" + mirrorAddr + "/v2/"); code != http.StatusOK {
		t.Errorf("the mirror answered GET /v2/ right after READY=1 with %d, want 200: %s", code, body)
	}
	if code, body := get("http://" + metricsAddr + "/metrics"); code != http.StatusOK || !strings.Contains(body, "lifeboat_cache_budget_bytes") {
		t.Errorf("GET /metrics right after READY=1: %d, want 200 with lifeboat's metrics:\n%.500s", code, body)
	}
	if st, err := admin.NewClient(adminSock).Status(t.Context()); err != nil || st.Listeners["mirror"] != mirrorAddr {
		t.Errorf("the admin socket right after READY=1: %+v, %v; want the status of this daemon", st, err)
	}

	// The plugin socket: both services containerd's proxy plugins use give an answer (not
	// found), not unavailable.
	gc, err := grpc.NewClient("unix://"+pluginSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	absent := digest.FromString("absent")
	_, err = contentapi.NewContentClient(gc).Info(t.Context(), &contentapi.InfoRequest{Digest: absent.String()})
	if status.Code(err) != codes.NotFound {
		t.Errorf("the content service right after READY=1: Info of an absent blob: %v, want not found", err)
	}
	_, err = snapshotsapi.NewSnapshotsClient(gc).Stat(t.Context(), &snapshotsapi.StatSnapshotRequest{Snapshotter: "lifeboat", Key: "absent"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("the snapshotter right after READY=1: Stat of an absent snapshot: %v, want not found", err)
	}
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprintf("127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
}
