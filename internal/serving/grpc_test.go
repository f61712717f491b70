package serving

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// blockingHealth answers Check once release is closed or the call is cancelled.
type blockingHealth struct {
	healthpb.UnimplementedHealthServer
	entered   chan struct{}
	release   chan struct{}
	cancelled chan struct{}
}

func (h *blockingHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	close(h.entered)
	select {
	case <-h.release:
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
	case <-ctx.Done():
		close(h.cancelled)
		return nil, ctx.Err()
	}
}

// TestGRPCDrainsAsHTTP checks that a gRPC server stops by the same rule as HTTP: a call in
// flight finishes within the grace, or is cancelled at its end and counted as cut; Serve
// returns only once its handler has.
func TestGRPCDrainsAsHTTP(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		grace   time.Duration
		release bool
		wantCut int
	}{
		{"finishes within the grace", time.Minute, true, 0},
		{"cancelled at the deadline", 50 * time.Millisecond, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sock := filepath.Join(t.TempDir(), "g.sock")
			ul, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			ln := &closeSignal{Listener: ul, closed: make(chan struct{})}
			h := &blockingHealth{entered: make(chan struct{}), release: make(chan struct{}), cancelled: make(chan struct{})}
			srv := NewGRPCServer()
			healthpb.RegisterHealthServer(srv.Server, h)
			ctx, cancel := context.WithCancel(t.Context())
			type result struct {
				cut int
				err error
			}
			done := make(chan result, 1)
			go func() {
				cut, err := srv.Serve(ctx, ln, tc.grace)
				done <- result{cut, err}
			}()

			conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			called := make(chan error, 1)
			go func() {
				_, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
				called <- err
			}()
			<-h.entered
			cancel()
			if tc.release {
				// The call in flight ends once the stop has begun.
				<-ln.closed
				close(h.release)
			}
			res := <-done
			if res.err != nil || res.cut != tc.wantCut {
				t.Fatalf("Serve = %d cut, %v; want %d cut, no error", res.cut, res.err, tc.wantCut)
			}
			err = <-called
			switch {
			case tc.release && err != nil:
				t.Errorf("the call in flight failed: %v; want its answer", err)
			case !tc.release:
				if err == nil {
					t.Error("the call cut at the deadline succeeded")
				}
				select {
				case <-h.cancelled:
				default:
					t.Error("Serve returned before the cut call's handler saw its cancellation")
				}
			}
		})
	}
}
