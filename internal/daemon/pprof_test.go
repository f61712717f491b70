package daemon_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/daemon"
	"github.com/lifeboat-dev/lifeboat/internal/daemon/daemontest"
)

// TestPprof: the metrics address serves /debug/pprof/ only with [metrics] pprof set.
func TestPprof(t *testing.T) {
	for _, tt := range []struct {
		name   string
		pprof  bool
		status int
	}{
		{name: "default off", pprof: false, status: http.StatusNotFound},
		{name: "on", pprof: true, status: http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := daemontest.Config(t)
			cfg.Metrics.Pprof = tt.pprof
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
			resp, err := http.Get("http://" + d.Admin.Status(ctx).Listeners["metrics"] + "/debug/pprof/heap")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("GET /debug/pprof/heap: %s, want %d", resp.Status, tt.status)
			}
		})
	}
}
