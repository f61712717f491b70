package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/lifeboat-dev/lifeboat/cache"
)

// The admin API: JSON over HTTP on a unix socket.
//
//	GET    /v1/status   → Status
//	GET    /v1/outage   → outage.Status
//	POST   /v1/outage   OutageRequest → OutageResult
//	DELETE /v1/outage   → OutageResult
//	POST   /v1/drill    DrillRequest → DrillReport
//	GET    /v1/images   ?platform= → ImagesReport
//	POST   /v1/pull     PullRequest → newline-delimited {"progress": PullProgress}..., then
//	                    {"report": PullReport} or {"error": ...}
//	POST   /v1/pin      RefRequest → RefResult
//	POST   /v1/unpin    RefRequest → RefResult
//	POST   /v1/rm       RefRequest → RefResult
//	POST   /v1/gc       GCRequest → GCReport
//	POST   /v1/verify   VerifyRequest → cache.VerifyReport
//
// Errors are {"error": "...", "kind": "invalid" | "notfound" | "internal"} with 400, 404 or 500.

type apiError struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
}

// Handler serves the admin API of s.
func Handler(s *Service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		reply(w, s.Status(r.Context()), nil)
	})
	mux.HandleFunc("GET /v1/outage", func(w http.ResponseWriter, r *http.Request) {
		reply(w, s.Outage.Status(), nil)
	})
	mux.HandleFunc("POST /v1/outage", func(w http.ResponseWriter, r *http.Request) {
		var req OutageRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("outage request: %v: %w", err, errdefs.ErrInvalidArgument))
			return
		}
		res, err := s.StartOutage(r.Context(), req)
		reply(w, res, err)
	})
	mux.HandleFunc("DELETE /v1/outage", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.StopOutage(r.Context())
		reply(w, res, err)
	})
	mux.HandleFunc("POST /v1/drill", func(w http.ResponseWriter, r *http.Request) {
		var req DrillRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 16<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("drill request: %v: %w", err, errdefs.ErrInvalidArgument))
			return
		}
		res, err := s.Drill(r.Context(), req)
		reply(w, res, err)
	})
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.Images(r.Context(), ImagesRequest{Platform: r.URL.Query().Get("platform")})
		reply(w, res, err)
	})
	mux.HandleFunc("POST /v1/pull", servePull(s))
	mux.HandleFunc("POST /v1/pin", handle(s.Pin))
	mux.HandleFunc("POST /v1/unpin", handle(s.Unpin))
	mux.HandleFunc("POST /v1/rm", handle(s.Remove))
	mux.HandleFunc("POST /v1/gc", handle(s.GC))
	mux.HandleFunc("POST /v1/verify", handle(s.Verify))
	return mux
}

// handle serves a JSON request with fn and answers with its result.
func handle[Req, Res any](fn func(context.Context, Req) (Res, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("request to %s: %v: %w", r.URL.Path, err, errdefs.ErrInvalidArgument))
			return
		}
		res, err := fn(r.Context(), req)
		reply(w, res, err)
	}
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		status, kind := errorKind(err)
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(apiError{Error: err.Error(), Kind: kind})
		return
	}
	json.NewEncoder(w).Encode(v)
}

// errorKind classifies an error for an answer: its HTTP status and apiError kind.
func errorKind(err error) (status int, kind string) {
	switch {
	case errdefs.IsInvalidArgument(err):
		return http.StatusBadRequest, "invalid"
	case errdefs.IsNotFound(err):
		return http.StatusNotFound, "notfound"
	}
	return http.StatusInternalServerError, "internal"
}

// err is the error an answer carries, classified again.
func (e apiError) err() error {
	switch e.Kind {
	case "invalid":
		return fmt.Errorf("%s: %w", strings.TrimSuffix(e.Error, ": "+errdefs.ErrInvalidArgument.Error()), errdefs.ErrInvalidArgument)
	case "notfound":
		return fmt.Errorf("%s: %w", strings.TrimSuffix(e.Error, ": "+errdefs.ErrNotFound.Error()), errdefs.ErrNotFound)
	}
	return errors.New(e.Error)
}

// Listen creates the admin socket at path with mode 0600 (its directory 0700). A socket left by
// a stopped daemon is replaced; one a live daemon answers on is an error.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s is in use by a running process: %w", path, errdefs.ErrAlreadyExists)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Client talks to a daemon's admin socket.
type Client struct {
	socket string
	http   *http.Client
}

// ErrUnreachable means no daemon answers on the socket.
var ErrUnreachable = errors.New("the lifeboat daemon is not running")

// NewClient returns a client of the admin socket at path.
func NewClient(path string) *Client {
	return &Client{socket: path, http: &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
		Timeout: time.Minute,
	}}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin socket %s: bad answer: %w", c.socket, err)
	}
	return nil
}

// send sends a request and returns the response if it is a success; the caller closes its body.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://lifeboat"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (nothing answers on %s)", ErrUnreachable, c.socket)
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("cannot open %s: permission denied (the admin socket is for root)", c.socket)
		}
		return nil, fmt.Errorf("admin socket %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e apiError
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			return nil, fmt.Errorf("admin socket %s answered %s", c.socket, resp.Status)
		}
		return nil, e.err()
	}
	return resp, nil
}

// Status asks for the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// StartOutage starts or replaces a simulated outage.
func (c *Client) StartOutage(ctx context.Context, req OutageRequest) (OutageResult, error) {
	var r OutageResult
	return r, c.do(ctx, http.MethodPost, "/v1/outage", req, &r)
}

// StopOutage ends the simulated outage.
func (c *Client) StopOutage(ctx context.Context) (OutageResult, error) {
	var r OutageResult
	return r, c.do(ctx, http.MethodDelete, "/v1/outage", nil, &r)
}

// Drill asks whether the images would pull through lifeboat during an outage. With req.Fix it
// waits, without the client's usual time limit, until what was missing has been fetched.
func (c *Client) Drill(ctx context.Context, req DrillRequest) (DrillReport, error) {
	var r DrillReport
	cc := c
	if req.Fix {
		cc = c.withoutTimeout()
	}
	return r, cc.do(ctx, http.MethodPost, "/v1/drill", req, &r)
}

// Images lists the cached images.
func (c *Client) Images(ctx context.Context, req ImagesRequest) (ImagesReport, error) {
	var r ImagesReport
	path := "/v1/images"
	if req.Platform != "" {
		path += "?" + url.Values{"platform": {req.Platform}}.Encode()
	}
	return r, c.do(ctx, http.MethodGet, path, nil, &r)
}

// Pin keeps a cached image out of eviction.
func (c *Client) Pin(ctx context.Context, req RefRequest) (RefResult, error) {
	var r RefResult
	return r, c.do(ctx, http.MethodPost, "/v1/pin", req, &r)
}

// Unpin makes a cached image evictable again.
func (c *Client) Unpin(ctx context.Context, req RefRequest) (RefResult, error) {
	var r RefResult
	return r, c.do(ctx, http.MethodPost, "/v1/unpin", req, &r)
}

// Remove forgets a cached image; its blobs stay until evicted.
func (c *Client) Remove(ctx context.Context, req RefRequest) (RefResult, error) {
	var r RefResult
	return r, c.do(ctx, http.MethodPost, "/v1/rm", req, &r)
}

// GC runs an eviction pass now, without the client's usual time limit.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCReport, error) {
	var r GCReport
	return r, c.withoutTimeout().do(ctx, http.MethodPost, "/v1/gc", req, &r)
}

// Verify rehashes every cached blob, without the client's usual time limit.
func (c *Client) Verify(ctx context.Context, req VerifyRequest) (cache.VerifyReport, error) {
	var r cache.VerifyReport
	return r, c.withoutTimeout().do(ctx, http.MethodPost, "/v1/verify", req, &r)
}

// withoutTimeout is c without a bound on a whole request, for requests that download images;
// the caller's context still ends them.
func (c *Client) withoutTimeout() *Client {
	hc := *c.http
	hc.Timeout = 0
	return &Client{socket: c.socket, http: &hc}
}

// ShutdownGrace is how long Serve lets the admin requests in flight (a pull, gc, verify
// --repair) finish once its context ends, before it cancels them.
const ShutdownGrace = 10 * time.Second

// cancelWait bounds how long ServeHTTP waits, after cancelling them, for handlers to return.
const cancelWait = 10 * time.Second

// ErrHandlersRunning means requests were still running after they were cancelled: whatever
// they use (the cache) must be left open.
var ErrHandlersRunning = errors.New("requests still running after they were cancelled")

// Serve serves the admin API on l until ctx ends, then stops as ServeHTTP does, with
// ShutdownGrace. It returns once no admin request is running any more, so that the caller can
// close the cache.
func Serve(ctx context.Context, l net.Listener, s *Service) error {
	log.G(ctx).WithField("address", l.Addr().String()).Info("serving the admin API")
	cut, err := ServeHTTP(ctx, l, Handler(s), ShutdownGrace)
	if cut > 0 {
		log.G(ctx).WithField("requests", cut).Warn("admin requests still running at the shutdown deadline were cancelled")
	}
	return err
}

// ServeHTTP serves h on l until ctx ends (or serving fails), then shuts down: it stops
// accepting at once and lets the requests in flight finish for up to grace. At the deadline it
// cancels the contexts of the requests still running, closes their connections, and counts
// them in cut. It returns only once every handler has returned: nil for a stop, cut or not;
// the error if serving failed; ErrHandlersRunning if handlers still ran a while after they
// were cancelled.
//
// The handlers' contexts carry ctx's values but not its end.
func ServeHTTP(ctx context.Context, l net.Listener, h http.Handler, grace time.Duration) (cut int, err error) {
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
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return work },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var serveErr error
	select {
	case serveErr = <-served:
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(work, grace)
	if srv.Shutdown(sctx) != nil {
		// The deadline passed: cut what is left. The connections close first, so that a
		// handler ending on its cancelled context cannot still send an (empty) answer.
		cut = reqs.running()
		srv.Close()
		cancelWork()
	}
	cancel()
	if serveErr == nil {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	}
	// From here on no handler starts: those that run are the last ones.
	idle := reqs.stop()
	select {
	case <-idle:
	default:
		cancelWork()
		t := time.NewTimer(cancelWait)
		defer t.Stop()
		select {
		case <-idle:
		case <-t.C:
			return cut, fmt.Errorf("%d %w", reqs.running(), ErrHandlersRunning)
		}
	}
	return cut, serveErr
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
