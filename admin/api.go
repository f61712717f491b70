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
	"syscall"
	"time"

	"github.com/containerd/errdefs"

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

// err is the error an answer carries, with its message as the daemon wrote it and classified
// again for errors.Is.
func (e apiError) err() error {
	switch e.Kind {
	case "invalid":
		return &remoteError{msg: e.Error, class: errdefs.ErrInvalidArgument}
	case "notfound":
		return &remoteError{msg: e.Error, class: errdefs.ErrNotFound}
	}
	return errors.New(e.Error)
}

// remoteError is an error the daemon answered: its message, which names its class already, and
// the class.
type remoteError struct {
	msg   string
	class error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.class }

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
