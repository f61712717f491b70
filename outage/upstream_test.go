package outage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// TestThroughUpstreamClient wires the simulator the way the resolver does and checks that each
// failure mode reaches the upstream client's caller as an endpoint failure (what the breaker
// counts) that names the simulated outage.
func TestThroughUpstreamClient(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("layer"), 20000)
	dgst := digest.FromBytes(blob)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/library/alpine/blobs/"+dgst.String() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		_, _ = w.Write(blob)
	}))
	t.Cleanup(srv.Close)

	tests := []struct {
		mode       string
		retryAfter time.Duration // http-429, http-503
	}{
		{mode: "dns"},
		{mode: "refused"},
		{mode: "blackhole"},
		{mode: "reset"},
		{mode: "http-500"},
		{mode: "http-503", retryAfter: time.Minute},
		{mode: "http-429", retryAfter: time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			t.Parallel()
			sim := outage.New()
			base, err := upstream.NewTransport(upstream.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(base.CloseIdleConnections)
			c, err := upstream.New("docker.io", srv.URL, upstream.Options{Transport: sim.Wrap("docker.io", base)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sim.Start(t.Context(), outage.Spec{Mode: tt.mode}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			body, _, err := c.GetBlob(ctx, "library/alpine", dgst)
			if err == nil {
				_, err = io.ReadAll(body)
				body.Close()
			}
			if !upstream.IsEndpointFailure(err) {
				t.Fatalf("error %v is not an endpoint failure", err)
			}
			// The upstream client reports a request its caller's deadline ended as that deadline
			// alone, dropping the transport's error: a blackhole is not named there.
			if msg := err.Error(); !strings.Contains(msg, "simulated outage") || !strings.Contains(msg, tt.mode) {
				t.Errorf("error %q does not name the simulated outage", msg)
			}
			// Each cause is said once, however many layers wrap it.
			for _, cause := range []string{"context deadline exceeded", "simulated outage", "unavailable"} {
				if n := strings.Count(err.Error(), cause); n > 1 {
					t.Errorf("error %q says %q %d times", err, cause, n)
				}
			}
			if tt.mode == "blackhole" && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("blackhole: error %v is not the deadline", err)
			}
			d, ok := upstream.RetryAfter(err)
			if ok != (tt.retryAfter != 0) || d != tt.retryAfter {
				t.Errorf("RetryAfter = %s, %v; want %s", d, ok, tt.retryAfter)
			}

			if _, err := sim.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := c.Ping(t.Context()); err != nil {
				t.Errorf("Ping after the outage stopped: %v", err)
			}
		})
	}
}
