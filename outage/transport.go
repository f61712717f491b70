package outage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// resetUnknownCut is where reset cuts a body of unknown length; a shorter body is cut at once.
const resetUnknownCut = 32 << 10

// Wrap returns a RoundTripper that applies the simulated outage to the requests base makes for
// registry ("docker.io", as in Spec.Registries). Requests out of the outage's scope, and all
// requests while there is none, go to base unchanged. base nil: http.DefaultTransport.
func (s *Simulator) Wrap(registry string, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{sim: s, registry: strings.ToLower(registry), base: base}
}

// WrapPeers returns a RoundTripper that applies the simulated outage to this node's requests
// to the other nodes of the cluster (index requests and transfers) when its target is
// TargetPeers or TargetAll. A transfer names its registry in the "ns" query parameter and its
// repository in the path, as the mirror API does, and an outage scoped by Registries or Repos
// cuts those in its scope; index requests name neither, and only an outage without a scope
// cuts them. base nil: http.DefaultTransport.
func (s *Simulator) WrapPeers(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{sim: s, peers: true, base: base}
}

type transport struct {
	sim      *Simulator
	registry string // "" for peers: each request names its own
	peers    bool   // the cluster's traffic (WrapPeers), not a registry's (Wrap)
	base     http.RoundTripper
}

// CloseIdleConnections passes the call on to base, as http.Client.CloseIdleConnections expects.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	for {
		o := t.sim.active()
		if o == nil || !t.inScope(o, req) {
			return t.base.RoundTrip(req)
		}
		f, fail := o.pick()
		if !fail {
			return t.base.RoundTrip(req)
		}
		resp, released, err := t.apply(o, f, req)
		if !released {
			return resp, err
		}
		// The outage ended while holding the request back: whatever is in force now decides.
	}
}

// inScope reports whether req, made through t, is in o's scope: its target and its scope.
func (t *transport) inScope(o *outage, req *http.Request) bool {
	upstream, peers := cuts(o.spec.Target)
	if !t.peers {
		return upstream && o.covers(t.registry, req)
	}
	if !peers {
		return false
	}
	registry := strings.ToLower(req.URL.Query().Get("ns"))
	if registry == "" && len(o.registries) > 0 {
		return false
	}
	return o.covers(registry, req)
}

// covers reports whether req, made for registry, is in o's scope.
func (o *outage) covers(registry string, req *http.Request) bool {
	if len(o.registries) > 0 && !slices.Contains(o.registries, registry) {
		return false
	}
	if len(o.spec.Repos) == 0 {
		return true
	}
	repo := requestRepository(req)
	if repo == "" {
		return false
	}
	for _, g := range o.spec.Repos {
		if ok, _ := path.Match(g, repo); ok {
			return true
		}
	}
	return false
}

// requestRepository is the repository req is for, from its path or, for a redirect (to blob
// storage), from the path of the request that was redirected; "" if none names one.
func requestRepository(req *http.Request) string {
	for i := 0; req != nil && i < 32; i++ {
		if repo := repository(req.URL.Path); repo != "" {
			return repo
		}
		if req.Response == nil {
			break
		}
		req = req.Response.Request
	}
	return ""
}

// repository is the <repo> of a distribution API path /v2/<repo>/(manifests|blobs|tags|
// referrers)/... or /v2/<repo>/blobs/uploads/..., or "".
func repository(p string) string {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return ""
	}
	name, _, _, ok := oci.SplitPath(strings.Split(rest, "/"))
	if !ok {
		return ""
	}
	return strings.Join(name, "/")
}

// apply makes req fail as f says. released is true when o ended while req was held back; req
// has then not been sent and is to be decided again.
func (t *transport) apply(o *outage, f fault, req *http.Request) (resp *http.Response, released bool, err error) {
	ctx := req.Context()
	switch f.kind {
	case ModeDNS:
		o.count(f)
		closeRequestBody(req)
		return nil, false, &Error{Mode: f.label, Err: &net.DNSError{Err: "no such host", Name: req.URL.Hostname(), IsNotFound: true}}

	case ModeRefused:
		o.count(f)
		closeRequestBody(req)
		return nil, false, &Error{Mode: f.label, Err: &net.OpError{Op: "dial", Net: "tcp", Addr: remoteAddr(req), Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}

	case ModeBlackhole:
		o.count(f)
		select {
		case <-ctx.Done():
			closeRequestBody(req)
			return nil, false, &Error{Mode: f.label, Err: fmt.Errorf("no answer from %s: %w", remoteAddr(req), ctx.Err())}
		case <-o.done:
			return nil, true, nil
		}

	case ModeHTTPPrefix:
		o.count(f)
		closeRequestBody(req)
		return statusResponse(req, f), false, nil

	case ModeReset:
		resp, err := t.base.RoundTrip(req)
		if err != nil {
			return nil, false, err
		}
		o.count(f)
		if req.Method == http.MethodHead || resp.Body == nil || resp.Body == http.NoBody {
			if resp.Body != nil {
				_ = resp.Body.Close()
			}
			return nil, false, resetError(req, f)
		}
		left := resp.ContentLength / 2
		if resp.ContentLength < 0 {
			left = -1
		}
		resp.Body = &resetBody{body: resp.Body, left: left, err: resetError(req, f)}
		return resp, false, nil

	case ModeSlow:
		o.count(f)
		if d := o.spec.Latency; d > 0 {
			timer := time.NewTimer(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				closeRequestBody(req)
				return nil, false, &Error{Mode: f.label, Err: fmt.Errorf("waiting out %s of added latency: %w", d, ctx.Err())}
			case <-o.done:
				timer.Stop()
				return nil, true, nil
			}
		}
		resp, err := t.base.RoundTrip(req)
		if err != nil || o.spec.Rate <= 0 || resp.Body == nil || resp.Body == http.NoBody {
			return resp, false, err
		}
		resp.Body = newRateBody(ctx, resp.Body, o.spec.Rate, o.done, f.label)
		return resp, false, nil
	}
	panic("outage: unknown fault " + f.kind)
}

func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// hostAddr is a net.Addr for a host name that was never resolved.
type hostAddr string

func (hostAddr) Network() string  { return "tcp" }
func (a hostAddr) String() string { return string(a) }

// remoteAddr is the address req would connect to.
func remoteAddr(req *http.Request) net.Addr {
	host, port := req.URL.Hostname(), req.URL.Port()
	if port == "" {
		port = "443"
		if req.URL.Scheme == "http" {
			port = "80"
		}
	}
	if ip := net.ParseIP(host); ip != nil {
		if p, err := strconv.Atoi(port); err == nil {
			return &net.TCPAddr{IP: ip, Port: p}
		}
	}
	return hostAddr(net.JoinHostPort(host, port))
}

func resetError(req *http.Request, f fault) error {
	return &Error{Mode: f.label, Err: &net.OpError{Op: "read", Net: "tcp", Addr: remoteAddr(req), Err: os.NewSyscallError("read", syscall.ECONNRESET)}}
}

// statusResponse is the answer of an http-<status> outage.
func statusResponse(req *http.Request, f fault) *http.Response {
	body := oci.NewError(f.status, oci.CodeForStatus(f.status), "lifeboat simulated outage: "+f.label).Body()

	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set(oci.HeaderAPIVersion, oci.APIVersion)
	h.Set(HeaderSimulated, f.label)
	if f.status == http.StatusTooManyRequests || f.status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "60")
	}
	resp := &http.Response{
		Status:        strings.TrimSpace(strconv.Itoa(f.status) + " " + http.StatusText(f.status)),
		StatusCode:    f.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: int64(len(body)),
		Body:          io.NopCloser(bytes.NewReader(body)),
		Request:       req,
	}
	if req.Method == http.MethodHead {
		resp.Body = http.NoBody
	}
	return resp
}

// resetBody is a body cut by a connection reset: after left bytes, or, with left -1 (length
// unknown), after resetUnknownCut bytes, or at once if the body is shorter than that.
type resetBody struct {
	body   io.ReadCloser
	left   int64
	peeked []byte // length unknown: the bytes read ahead to decide, not yet returned
	err    error

	closeOnce sync.Once // Close may come from another goroutine, during a Read
	closeErr  error
}

func (b *resetBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		buf := make([]byte, resetUnknownCut)
		_, err := io.ReadFull(b.body, buf)
		switch {
		case err == nil:
			b.peeked, b.left = buf, int64(len(buf))
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			b.left = 0
		default:
			return 0, err
		}
	}
	if b.left == 0 {
		b.reset()
		return 0, b.err
	}
	if len(b.peeked) > 0 {
		n := copy(p, b.peeked)
		b.peeked = b.peeked[n:]
		b.left -= int64(n)
		return n, nil
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.body.Read(p)
	b.left -= int64(n)
	if errors.Is(err, io.EOF) {
		// Shorter than its Content-Length said: the reset comes first.
		b.reset()
		return n, b.err
	}
	return n, err
}

// reset drops the connection: the rest of the body is never read.
func (b *resetBody) reset() { _ = b.Close() }

func (b *resetBody) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.body.Close() })
	return b.closeErr
}

var errBodyClosed = errors.New("read on closed response body")

// maxWait bounds rateBody's pacing arithmetic.
const maxWait = 100 * 365 * 24 * time.Hour

// rateBody paces the reads of body to rate bytes per second, until ctx ends, the body is
// closed, or the outage ends (which lifts the cap).
type rateBody struct {
	body  io.ReadCloser
	ctx   context.Context
	ended <-chan struct{}
	rate  int64
	chunk int
	label string

	start time.Time
	read  int64

	closeOnce sync.Once
	closed    chan struct{}
}

func newRateBody(ctx context.Context, body io.ReadCloser, rate int64, ended <-chan struct{}, label string) *rateBody {
	// Reads of at most 1/20 s worth of bytes keep the pace smooth.
	chunk := int(min(max(rate/20, 1), 1<<20))
	return &rateBody{body: body, ctx: ctx, ended: ended, rate: rate, chunk: chunk, label: label, closed: make(chan struct{})}
}

func (b *rateBody) Read(p []byte) (int, error) {
	select {
	case <-b.ended:
		return b.body.Read(p)
	case <-b.closed:
		return 0, &Error{Mode: b.label, Err: errBodyClosed}
	default:
	}
	if len(p) > b.chunk {
		p = p[:b.chunk]
	}
	if b.start.IsZero() {
		b.start = time.Now()
	}
	n, err := b.body.Read(p)
	b.read += int64(n)
	due := b.start.Add(time.Duration(min(float64(b.read)/float64(b.rate), maxWait.Seconds()) * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-b.ended:
		case <-b.closed:
			return 0, &Error{Mode: b.label, Err: errBodyClosed}
		case <-b.ctx.Done():
			return 0, &Error{Mode: b.label, Err: fmt.Errorf("reading the body at %d bytes/s: %w", b.rate, b.ctx.Err())}
		}
	}
	return n, err
}

func (b *rateBody) Close() error {
	var err error
	b.closeOnce.Do(func() {
		close(b.closed)
		err = b.body.Close()
	})
	return err
}
