package serving

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cancelWait bounds how long a server waits, after cutting them, for handlers to return.
const cancelWait = 10 * time.Second

// The bounds every HTTP server lifeboat runs (the mirror, metrics, the admin API) puts on how
// long a connection may wait on its client.
const (
	// IdleTimeout closes a keep-alive connection that has carried no request for this long.
	// It is longer than the idle timeouts of the clients (containerd's 30 s, Go's default
	// 90 s), so that a client closes its idle connection first and does not send a request on
	// one the server is closing.
	IdleTimeout = 2 * time.Minute
	// ReadHeaderTimeout bounds how long a request's headers may take to arrive, so that a
	// client trickling them (slowloris) cannot hold a connection open.
	ReadHeaderTimeout = 10 * time.Second
)

// ErrHandlersRunning means requests were still running after they were cancelled: whatever
// they use (the cache) must be left open.
var ErrHandlersRunning = errors.New("requests still running after they were cancelled")

// HTTP serves h on l until ctx ends (or serving fails), then drains: it stops accepting at
// once and lets the requests in flight finish for up to grace. At the deadline it cancels the
// contexts of the requests still running, closes their connections, and counts them in cut.
// It returns only once every handler has returned: nil for a stop, cut or not; the error if
// serving failed; ErrHandlersRunning if handlers still ran a while after they were cancelled.
//
// The handlers' contexts carry ctx's values but not its end. Connections are bounded by
// IdleTimeout and ReadHeaderTimeout.
func HTTP(ctx context.Context, l net.Listener, h http.Handler, grace time.Duration) (cut int, err error) {
	return serveHTTP(ctx, l, h, grace, IdleTimeout)
}

// serveHTTP is HTTP with an idle timeout of idle, which tests shorten.
func serveHTTP(ctx context.Context, l net.Listener, h http.Handler, grace, idle time.Duration) (cut int, err error) {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var reqs requests
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !reqs.start() {
				http.Error(w, "lifeboat is stopping", http.StatusServiceUnavailable)
				return
			}
			defer reqs.end()
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       idle,
		BaseContext:       func(net.Listener) context.Context { return work },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	serveErr := waitStop(ctx, served)
	cut, err = drain(&reqs, grace, srv.Shutdown, func() {
		// The connections close first, so that a handler ending on its cancelled context
		// cannot still send an (empty) answer.
		srv.Close()
		cancelWork()
	})
	if serveErr == nil {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	}
	if err != nil {
		return cut, err
	}
	return cut, serveErr
}

// GRPCServer is a grpc.Server that counts its calls in flight, so that Serve can drain it as
// HTTP drains an HTTP server.
type GRPCServer struct {
	// Server is the gRPC server, to register services on.
	Server *grpc.Server
	reqs   requests
}

// NewGRPCServer returns a gRPC server with opts, whose handlers Serve waits for.
func NewGRPCServer(opts ...grpc.ServerOption) *GRPCServer {
	s := &GRPCServer{}
	opts = append(opts, grpc.WaitForHandlers(true),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if !s.reqs.start() {
				return nil, status.Error(codes.Unavailable, "lifeboat is stopping")
			}
			defer s.reqs.end()
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if !s.reqs.start() {
				return status.Error(codes.Unavailable, "lifeboat is stopping")
			}
			defer s.reqs.end()
			return h(srv, ss)
		}))
	s.Server = grpc.NewServer(opts...)
	return s
}

// Serve serves on l until ctx ends (or serving fails), then drains as HTTP does: stop
// accepting, let the calls in flight finish for up to grace, then close their connections,
// which cancels them, counting them in cut. It returns once every handler has returned, with
// the same errors as HTTP.
func (s *GRPCServer) Serve(ctx context.Context, l net.Listener, grace time.Duration) (cut int, err error) {
	served := make(chan error, 1)
	go func() { served <- s.Server.Serve(l) }()
	serveErr := waitStop(ctx, served)
	cut, err = drain(&s.reqs, grace, func(ctx context.Context) error {
		stopped := make(chan struct{})
		go func() {
			s.Server.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, func() {
		// Stop closes the connections, which cancels the calls, and waits for their handlers:
		// drain waits for those itself, with a bound.
		go s.Server.Stop()
	})
	if err != nil {
		return cut, err
	}
	return cut, serveErr
}

// waitStop waits until ctx ends or serving fails, and returns the failure.
func waitStop(ctx context.Context, served <-chan error) error {
	select {
	case err := <-served:
		if err == nil {
			// Serving ended without a stop or an error: nothing to return later.
			err = errors.New("the server stopped serving")
		}
		return err
	case <-ctx.Done():
		return nil
	}
}

// drain is the one drain rule. graceful stops accepting and waits, until its context ends, for
// the requests in flight to finish; cutOff cancels those still running. drain returns once no
// handler runs, or with ErrHandlersRunning if they still run cancelWait after they were cut.
func drain(reqs *requests, grace time.Duration, graceful func(context.Context) error, cutOff func()) (cut int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if graceful(ctx) != nil {
		cut = reqs.running()
		cutOff()
	}
	// From here on no handler starts: those that run are the last ones.
	idle := reqs.stop()
	select {
	case <-idle:
		return cut, nil
	default:
	}
	cutOff()
	t := time.NewTimer(cancelWait)
	defer t.Stop()
	select {
	case <-idle:
		return cut, nil
	case <-t.C:
		return cut, fmt.Errorf("%d %w", reqs.running(), ErrHandlersRunning)
	}
}

// requests counts the handlers running.
type requests struct {
	mu      sync.Mutex
	n       int
	stopped bool
	idle    chan struct{} // closed while n is 0; nil before the first request
}

// start counts a handler in; false once stop was called.
func (r *requests) start() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return false
	}
	if r.n == 0 {
		r.idle = make(chan struct{})
	}
	r.n++
	return true
}

func (r *requests) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n--; r.n == 0 {
		close(r.idle)
	}
}

func (r *requests) running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// stop refuses further handlers and returns a channel closed once none runs.
func (r *requests) stop() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if r.n == 0 {
		done := make(chan struct{})
		close(done)
		return done
	}
	return r.idle
}
