package daemon_test

import (
	"net"
	"net/http"
	"testing"
	"time"

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
			// A port of the test's own, to know where the profiles would be.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cfg.Metrics.Address = ln.Addr().String()
			ln.Close()
			stop, _ := daemontest.Start(t, cfg, time.Minute)
			defer stop()
			resp, err := http.Get("http://" + cfg.Metrics.Address + "/debug/pprof/heap")
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
