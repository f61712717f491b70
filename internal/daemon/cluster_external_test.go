package daemon_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/daemon"
	"github.com/lifeboat-dev/lifeboat/internal/daemon/daemontest"
)

// TestSingleNodeUnchanged: without join the daemon has no cluster tier: no peer listener, no
// cluster section in status, no cluster metrics.
func TestSingleNodeUnchanged(t *testing.T) {
	cfg := daemontest.Config(t)
	ctx, cancel := context.WithCancel(t.Context())
	d, err := daemon.New(ctx, cfg, daemon.Options{Version: "test", Grace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if d.Cluster != nil || d.Peers != nil {
		t.Errorf("cluster parts without join: %v %v", d.Cluster, d.Peers)
	}
	st := d.Admin.Status(ctx)
	if st.Cluster != nil || st.Listeners["peer"] != "" || st.Listeners["gossip"] != "" {
		t.Errorf("status without join: cluster %+v, listeners %v", st.Cluster, st.Listeners)
	}
	resp, err := http.Get("http://" + st.Listeners["metrics"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "lifeboat_cache_bytes") || strings.Contains(string(body), "lifeboat_cluster_") || strings.Contains(string(body), "lifeboat_peer_") {
		t.Errorf("metrics without join:\n%s", body)
	}
}
