package outage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// upstream is a real HTTP server that counts the requests it receives. It answers every
// request with 200 and a body of ?size= bytes (default 2), with a Content-Length unless
// ?chunked=1.
type upstream struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		size := 2
		if v := r.URL.Query().Get("size"); v != "" {
			size, _ = strconv.Atoi(v)
		}
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		w.WriteHeader(http.StatusOK)
		if r.URL.Query().Get("chunked") != "" {
			w.(http.Flusher).Flush()
		}
		if r.Method != http.MethodHead {
			_, _ = w.Write(bytes.Repeat([]byte("x"), size))
		}
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// client returns a client whose transport is a fresh base wrapped by sim for registry.
func (u *upstream) client(t *testing.T, sim *Simulator, registry string) *http.Client {
	t.Helper()
	base := u.srv.Client().Transport.(*http.Transport).Clone()
	t.Cleanup(base.CloseIdleConnections)
	return &http.Client{Transport: sim.Wrap(registry, base)}
}

func (u *upstream) url(path string) string { return u.srv.URL + path }

func start(t *testing.T, spec Spec) *Simulator {
	t.Helper()
	s := New()
	if _, err := s.Start(t.Context(), spec); err != nil {
		t.Fatal(err)
	}
	return s
}

func do(ctx context.Context, c *http.Client, method, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// wantSimulated checks that err names the simulated outage and its mode.
func wantSimulated(t *testing.T, err error, mode string) {
	t.Helper()
	if err == nil {
		t.Fatal("got no error")
	}
	if msg := err.Error(); !strings.Contains(msg, "simulated outage") || !strings.Contains(msg, mode) {
		t.Errorf("error %q does not name the simulated outage %s", msg, mode)
	}
	if !IsSimulated(err) {
		t.Errorf("IsSimulated(%v) = false", err)
	}
}

const manifestPath = "/v2/library/alpine/manifests/latest"

func TestDNS(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	s := start(t, Spec{Mode: "dns"})
	_, err := do(t.Context(), u.client(t, s, "docker.io"), http.MethodGet, u.url(manifestPath))
	wantSimulated(t, err, "dns")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) {
		t.Fatalf("error %v is not a *net.DNSError", err)
	}
	if !dnsErr.IsNotFound || dnsErr.Err != "no such host" || dnsErr.Name != "127.0.0.1" {
		t.Errorf("DNSError = %+v, want not found for 127.0.0.1", dnsErr)
	}
	if !strings.Contains(err.Error(), "lookup 127.0.0.1: no such host (lifeboat simulated outage: dns)") {
		t.Errorf("error = %q", err)
	}
	if n := u.hits.Load(); n != 0 {
		t.Errorf("upstream got %d requests, want 0", n)
	}
	if st := s.Status(); st.Affected != 1 || st.Faults["dns"] != 1 {
		t.Errorf("Status() = %+v, want 1 affected", st)
	}
}

func TestRefused(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	s := start(t, Spec{Mode: "refused"})
	_, err := do(t.Context(), u.client(t, s, "docker.io"), http.MethodGet, u.url(manifestPath))
	wantSimulated(t, err, "refused")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("error %v is not ECONNREFUSED", err)
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) || opErr.Op != "dial" || opErr.Net != "tcp" {
		t.Errorf("error %v is not a dial *net.OpError", err)
	}
	if !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), u.srv.Listener.Addr().String()) {
		t.Errorf("error %q does not say connection refused to %s", err, u.srv.Listener.Addr())
	}
	if n := u.hits.Load(); n != 0 {
		t.Errorf("upstream got %d requests, want 0", n)
	}
}

func TestBlackhole(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	s := start(t, Spec{Mode: "blackhole"})
	const deadline = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	begin := time.Now()
	_, err := do(ctx, u.client(t, s, "docker.io"), http.MethodGet, u.url(manifestPath))
	elapsed := time.Since(begin)
	wantSimulated(t, err, "blackhole")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v is not DeadlineExceeded", err)
	}
	if elapsed < deadline || elapsed > 5*time.Second {
		t.Errorf("returned after %s, want at the %s deadline", elapsed, deadline)
	}
	if n := u.hits.Load(); n != 0 {
		t.Errorf("upstream got %d requests, want 0", n)
	}
}

// A blackholed request without a deadline is released when the outage ends, and then goes to
// the upstream.
func TestBlackholeReleasedOnStop(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	s := start(t, Spec{Mode: "blackhole"})
	c := u.client(t, s, "docker.io")
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := do(t.Context(), c, http.MethodGet, u.url(manifestPath))
		done <- result{resp, err}
	}()
	registrytest.Wait(t, "the request to be held", func() bool { return s.Status().Affected == 1 })
	select {
	case r := <-done:
		t.Fatalf("blackholed request returned %v, %v", r.resp, r.err)
	default:
	}
	if _, err := s.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.resp.Body.Close()
		if r.resp.StatusCode != http.StatusOK || u.hits.Load() != 1 {
			t.Fatalf("status %d, %d upstream requests; want 200 from the upstream", r.resp.StatusCode, u.hits.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("request still held 10s after the outage stopped")
	}
}

func TestReset(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		method   string
		query    string
		wantRead int // bytes read before the reset; -1: RoundTrip fails
	}{
		{name: "known length", method: http.MethodGet, query: "size=100000", wantRead: 50000},
		{name: "odd length", method: http.MethodGet, query: "size=3", wantRead: 1},
		{name: "one byte", method: http.MethodGet, query: "size=1", wantRead: 0},
		{name: "unknown length", method: http.MethodGet, query: "size=100000&chunked=1", wantRead: resetUnknownCut},
		{name: "unknown length, short", method: http.MethodGet, query: "size=1000&chunked=1", wantRead: 0},
		{name: "empty body", method: http.MethodGet, query: "size=0", wantRead: -1},
		{name: "HEAD", method: http.MethodHead, query: "size=100", wantRead: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			s := start(t, Spec{Mode: "reset"})
			resp, err := do(t.Context(), u.client(t, s, "docker.io"), tt.method, u.url("/v2/library/alpine/blobs/sha256:abc?"+tt.query))
			if tt.wantRead < 0 {
				if err == nil {
					resp.Body.Close()
				}
				checkReset(t, err)
			} else {
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				checkReset(t, err)
				if len(got) != tt.wantRead {
					t.Errorf("read %d bytes before the reset, want %d", len(got), tt.wantRead)
				}
			}
			if n := u.hits.Load(); n != 1 {
				t.Errorf("upstream got %d requests, want 1 (the real request is made)", n)
			}
			if st := s.Status(); st.Affected != 1 {
				t.Errorf("Affected = %d, want 1", st.Affected)
			}
		})
	}
}

func checkReset(t *testing.T, err error) {
	t.Helper()
	wantSimulated(t, err, "reset")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("error %v is not ECONNRESET", err)
	}
	if !strings.Contains(err.Error(), "connection reset by peer") {
		t.Errorf("error %q does not say connection reset by peer", err)
	}
}

func TestHTTPStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode       string
		method     string
		status     int
		code       string
		retryAfter string
	}{
		{mode: "http-503", method: http.MethodGet, status: 503, code: "UNAVAILABLE", retryAfter: "60"},
		{mode: "http-429", method: http.MethodGet, status: 429, code: "TOOMANYREQUESTS", retryAfter: "60"},
		{mode: "http-500", method: http.MethodGet, status: 500, code: "UNKNOWN"},
		{mode: "http-502", method: http.MethodGet, status: 502, code: "UNKNOWN"},
		{mode: "http-404", method: http.MethodGet, status: 404, code: "UNKNOWN"},
		{mode: "http-418", method: http.MethodGet, status: 418, code: "UNKNOWN"},
		{mode: "http-429", method: http.MethodHead, status: 429, retryAfter: "60"},
		{mode: "http-500", method: http.MethodHead, status: 500},
	}
	for _, tt := range tests {
		t.Run(tt.mode+" "+tt.method, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			s := start(t, Spec{Mode: tt.mode})
			req, err := http.NewRequestWithContext(t.Context(), tt.method, u.url(manifestPath), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := u.client(t, s, "docker.io").Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || !strings.HasPrefix(resp.Status, strconv.Itoa(tt.status)+" ") {
				t.Errorf("status = %d %q, want %d", resp.StatusCode, resp.Status, tt.status)
			}
			if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			if got := resp.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q", got)
			}
			if got := resp.Header.Get(HeaderSimulated); got != tt.mode {
				t.Errorf("%s = %q, want %q", HeaderSimulated, got, tt.mode)
			}
			if resp.Request != req {
				t.Error("resp.Request is not the request")
			}
			if n := u.hits.Load(); n != 0 {
				t.Errorf("upstream got %d requests, want 0", n)
			}
			if tt.method == http.MethodHead {
				if len(body) != 0 {
					t.Errorf("HEAD answer has a body: %q", body)
				}
				return
			}
			if resp.ContentLength != int64(len(body)) || resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
				t.Errorf("Content-Length = %d / %q, body is %d bytes", resp.ContentLength, resp.Header.Get("Content-Length"), len(body))
			}
			var oci struct {
				Errors []struct{ Code, Message string } `json:"errors"`
			}
			if err := json.Unmarshal(body, &oci); err != nil || len(oci.Errors) != 1 {
				t.Fatalf("body %q is not one OCI error: %v", body, err)
			}
			if oci.Errors[0].Code != tt.code || oci.Errors[0].Message != "lifeboat simulated outage: "+tt.mode {
				t.Errorf("OCI error = %+v, want code %s naming the simulated outage", oci.Errors[0], tt.code)
			}
		})
	}
}

func TestSlowLatency(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	const latency = 150 * time.Millisecond
	s := start(t, Spec{Mode: "slow", Latency: latency})
	begin := time.Now()
	resp, err := do(t.Context(), u.client(t, s, "docker.io"), http.MethodGet, u.url(manifestPath+"?size=10"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if elapsed := time.Since(begin); elapsed < latency {
		t.Errorf("took %s, want at least the %s latency", elapsed, latency)
	}
	if err != nil || len(body) != 10 {
		t.Errorf("body: %d bytes, %v; want the 10 bytes intact", len(body), err)
	}
	if n := u.hits.Load(); n != 1 {
		t.Errorf("upstream got %d requests, want 1", n)
	}
}

func TestSlowLatencyRespectsDeadline(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	s := start(t, Spec{Mode: "slow", Latency: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := do(ctx, u.client(t, s, "docker.io"), http.MethodGet, u.url(manifestPath))
	wantSimulated(t, err, "slow")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v is not DeadlineExceeded", err)
	}
	if elapsed := time.Since(begin); elapsed > 5*time.Second {
		t.Errorf("returned after %s, want at the deadline", elapsed)
	}
	if n := u.hits.Load(); n != 0 {
		t.Errorf("upstream got %d requests, want 0", n)
	}
}

// TestSlowRate reads 1 MiB at a 2 MiB/s cap: never faster than the cap, and not a stall. How
// close to the cap the throughput comes is a figure of make bench, not a test on a busy machine.
func TestSlowRate(t *testing.T) {
	t.Parallel()
	const (
		size = 1 << 20
		rate = 2 << 20
	)
	u := newUpstream(t)
	s := start(t, Spec{Mode: "slow", Rate: rate})
	c := u.client(t, s, "docker.io")
	resp, err := do(t.Context(), c, http.MethodGet, u.url(fmt.Sprintf("/v2/library/alpine/blobs/sha256:abc?size=%d", size)))
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	n, err := io.Copy(io.Discard, resp.Body)
	elapsed := time.Since(begin)
	resp.Body.Close()
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v; want %d", n, err, size)
	}
	got := float64(n) / elapsed.Seconds()
	ratio := got / rate
	t.Logf("%d bytes in %s: %.0f bytes/s, %.2f of the cap", n, elapsed, got, ratio)
	// The cap is a ceiling: the body is paced to it from its first read, and a busy machine only
	// slows the reader down, so it is never beaten (1.05 allows for the clock's granularity).
	if ratio > 1.05 {
		t.Errorf("throughput %.0f bytes/s beats the %d bytes/s cap", got, rate)
	}
	// And a cap, not a stall: even two loaded cores pace 20 reads a second at a quarter of it.
	// How close to the cap it runs on an idle machine is measured by make bench.
	if ratio < 0.25 {
		t.Errorf("throughput %.0f bytes/s is under a quarter of the %d bytes/s cap", got, rate)
	}
}

func TestSlowRateBodyStops(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		stop func(cancel context.CancelFunc, body io.Closer)
		want error // errors.Is the read error
	}{
		{name: "context canceled", stop: func(cancel context.CancelFunc, _ io.Closer) { cancel() }, want: context.Canceled},
		{name: "body closed", stop: func(_ context.CancelFunc, body io.Closer) { body.Close() }, want: errBodyClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			s := start(t, Spec{Mode: "slow", Rate: 1})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			resp, err := do(ctx, u.client(t, s, "docker.io"), http.MethodGet, u.url("/v2/library/alpine/blobs/sha256:abc?size=1000"))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			done := make(chan error, 1)
			go func() {
				_, err := io.ReadAll(resp.Body) // 1000 s at 1 byte/s
				done <- err
			}()
			tt.stop(cancel, resp.Body)
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Fatalf("read error = %v, want %v", err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("read still blocked 10s after it was stopped")
			}
		})
	}
}

// flakyOutcome makes one request and says what happened to it: "ok", or the fault.
func flakyOutcome(t *testing.T, c *http.Client, u *upstream) string {
	t.Helper()
	resp, err := do(t.Context(), c, http.MethodGet, u.url(manifestPath))
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return "dns"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case err != nil:
		t.Fatalf("unexpected error %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "http-" + strconv.Itoa(resp.StatusCode)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			return "reset"
		}
		t.Fatalf("unexpected read error %v", err)
	}
	return "ok"
}

func TestFlakyRatio(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		spec      Spec
		wantRatio float64
		modes     []string // the faults allowed
	}{
		{name: "default", spec: Spec{Mode: "flaky", Seed: 42}, wantRatio: DefaultFailRatio, modes: randomFailModes},
		{name: "half, 503", spec: Spec{Mode: "flaky", FailRatio: 0.5, FailMode: "http-503", Seed: 7}, wantRatio: 0.5, modes: []string{"http-503"}},
		{name: "all", spec: Spec{Mode: "flaky", FailRatio: 1, FailMode: "refused"}, wantRatio: 1, modes: []string{"refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const n = 2000
			u := newUpstream(t)
			s := start(t, tt.spec)
			c := u.client(t, s, "docker.io")
			counts := map[string]int{}
			for range n {
				counts[flakyOutcome(t, c, u)]++
			}
			failed := n - counts["ok"]
			if got := float64(failed) / n; math.Abs(got-tt.wantRatio) > 0.05 {
				t.Errorf("failure fraction %.3f, want %.2f ± 0.05 (%v)", got, tt.wantRatio, counts)
			}
			for m := range counts {
				if m != "ok" && !contains(tt.modes, m) {
					t.Errorf("a request failed as %s, want one of %v", m, tt.modes)
				}
			}
			if len(tt.modes) > 1 && len(counts) != len(tt.modes)+1 {
				t.Errorf("faults %v: want every one of %v", counts, tt.modes)
			}
			st := s.Status()
			if st.Affected != int64(failed) {
				t.Errorf("Affected = %d, want %d", st.Affected, failed)
			}
			for m, c := range st.Faults {
				if int64(counts[m]) != c {
					t.Errorf("Faults[%s] = %d, seen %d", m, c, counts[m])
				}
			}
			// Failures made without the network never reach the upstream.
			if want := int64(counts["ok"] + counts["reset"]); u.hits.Load() != want {
				t.Errorf("upstream got %d requests, want %d", u.hits.Load(), want)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestFlakySeedRepeats(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	run := func(seed int64) string {
		s := start(t, Spec{Mode: "flaky", Seed: seed})
		c := u.client(t, s, "docker.io")
		var seq []string
		for range 200 {
			seq = append(seq, flakyOutcome(t, c, u))
		}
		return strings.Join(seq, ",")
	}
	a, b := run(5), run(5)
	if a != b {
		t.Errorf("seed 5 gave two different sequences:\n%s\n%s", a, b)
	}
	if c := run(6); c == a {
		t.Errorf("seeds 5 and 6 gave the same sequence")
	}
}

func TestScopeRegistry(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	s := start(t, Spec{Mode: "dns", Registries: []string{"ghcr.io", "Quay.io"}})
	tests := []struct {
		registry string
		affected bool
	}{
		{registry: "ghcr.io", affected: true},
		{registry: "quay.io", affected: true},
		{registry: "GHCR.IO", affected: true},
		{registry: "docker.io", affected: false},
		{registry: "localhost:5000", affected: false},
	}
	for _, tt := range tests {
		t.Run(tt.registry, func(t *testing.T) {
			t.Parallel()
			resp, err := do(t.Context(), u.client(t, s, tt.registry), http.MethodGet, u.url(manifestPath))
			checkAffected(t, resp, err, tt.affected)
		})
	}
}

func checkAffected(t *testing.T, resp *http.Response, err error, affected bool) {
	t.Helper()
	if affected {
		if err == nil {
			resp.Body.Close()
		}
		wantSimulated(t, err, "dns")
		return
	}
	if err != nil {
		t.Fatalf("request out of scope failed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("request out of scope: status %d", resp.StatusCode)
	}
}

func TestScopeRepository(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	scoped := start(t, Spec{Mode: "dns", Repos: []string{"library/*", "team/app"}})
	all := start(t, Spec{Mode: "dns"})
	tests := []struct {
		path             string
		scoped, unscoped bool // affected by the scoped outage, by the unscoped one
	}{
		{path: "/v2/library/alpine/manifests/latest", scoped: true, unscoped: true},
		{path: "/v2/library/alpine/blobs/sha256:abc", scoped: true, unscoped: true},
		{path: "/v2/library/alpine/tags/list", scoped: true, unscoped: true},
		{path: "/v2/library/alpine/referrers/sha256:abc", scoped: true, unscoped: true},
		{path: "/v2/team/app/manifests/v1", scoped: true, unscoped: true},
		{path: "/v2/team/app/sub/manifests/v1", scoped: false, unscoped: true},
		{path: "/v2/library/alpine/x/manifests/latest", scoped: false, unscoped: true},
		{path: "/v2/other/app/manifests/latest", scoped: false, unscoped: true},
		{path: "/v2/", scoped: false, unscoped: true},
		{path: "/token?scope=repository:library/alpine:pull", scoped: false, unscoped: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			resp, err := do(t.Context(), u.client(t, scoped, "docker.io"), http.MethodGet, u.url(tt.path))
			checkAffected(t, resp, err, tt.scoped)
			resp, err = do(t.Context(), u.client(t, all, "docker.io"), http.MethodGet, u.url(tt.path))
			checkAffected(t, resp, err, tt.unscoped)
		})
	}
}

func TestRepository(t *testing.T) {
	t.Parallel()
	tests := []struct{ path, want string }{
		{"/v2/library/alpine/manifests/latest", "library/alpine"},
		{"/v2/alpine/manifests/sha256:abc", "alpine"},
		{"/v2/a/b/c/blobs/sha256:abc", "a/b/c"},
		{"/v2/a/blobs/uploads/", "a"},
		{"/v2/a/blobs/uploads/1234", "a"},
		{"/v2/a/tags/list", "a"},
		{"/v2/a/referrers/sha256:abc", "a"},
		{"/v2/x/manifests/manifests/latest", "x/manifests"},
		{"/v2/x/blobs/blobs/sha256:abc", "x/blobs"},
		{"/v2/", ""},
		{"/v2/manifests/latest", ""},
		{"/v2//manifests/latest", ""},
		{"/v2/a/other/latest", ""},
		{"/token", ""},
		{"/library/alpine/manifests/latest", ""},
	}
	for _, tt := range tests {
		if got := repository(tt.path); got != tt.want {
			t.Errorf("repository(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

// A redirect (blob storage) is scoped by the repository of the request that was redirected.
func TestRequestRepositoryFollowsRedirects(t *testing.T) {
	t.Parallel()
	orig := &http.Request{URL: &url.URL{Path: "/v2/library/alpine/blobs/sha256:abc"}}
	redirected := &http.Request{
		URL:      &url.URL{Host: "storage.example", Path: "/bucket/sha256/abc"},
		Response: &http.Response{StatusCode: http.StatusTemporaryRedirect, Request: orig},
	}
	if got := requestRepository(redirected); got != "library/alpine" {
		t.Errorf("requestRepository = %q, want library/alpine", got)
	}
	if got := requestRepository(&http.Request{URL: &url.URL{Path: "/bucket/x"}}); got != "" {
		t.Errorf("requestRepository without a repository = %q", got)
	}
}

func TestRedirectScopedByRepository(t *testing.T) {
	t.Parallel()
	var storageHits atomic.Int64
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageHits.Add(1)
		_, _ = w.Write([]byte("blob"))
	}))
	t.Cleanup(storage.Close)
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, storage.URL+"/bucket/blob", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(reg.Close)

	// reset lets the redirect through (the client does not need a redirect's body) and cuts
	// the storage's answer, which is in scope by the repository of the redirected request.
	s := start(t, Spec{Mode: "reset", Repos: []string{"library/*"}})
	base := reg.Client().Transport.(*http.Transport).Clone()
	t.Cleanup(base.CloseIdleConnections)
	c := &http.Client{Transport: s.Wrap("docker.io", base)}
	for _, tt := range []struct {
		repo     string
		affected bool
	}{{"library/alpine", true}, {"other/app", false}} {
		resp, err := do(t.Context(), c, http.MethodGet, reg.URL+"/v2/"+tt.repo+"/blobs/sha256:abc")
		if err != nil {
			if !tt.affected {
				t.Fatalf("%s: %v", tt.repo, err)
			}
			checkReset(t, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if tt.affected {
			checkReset(t, err)
		} else if err != nil || string(body) != "blob" {
			t.Errorf("%s: read %q, %v; want the blob", tt.repo, body, err)
		}
	}
	if storageHits.Load() == 0 {
		t.Error("storage never reached")
	}
}

func TestInactiveAndExpiredPassThrough(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	s := New()
	c := u.client(t, s, "docker.io")
	get := func() (*http.Response, error) { return do(t.Context(), c, http.MethodGet, u.url(manifestPath)) }

	resp, err := get()
	checkAffected(t, resp, err, false)

	if _, err := s.Start(t.Context(), Spec{Mode: "dns", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	resp, err = get()
	checkAffected(t, resp, err, true)

	// Past its end, before the timer fires: the transport already lets requests through.
	s.mu.Lock()
	s.cur.Load().until = time.Now().Add(-time.Millisecond)
	s.mu.Unlock()
	resp, err = get()
	checkAffected(t, resp, err, false)
	if st := s.Status(); st.Active || st.Affected != 1 {
		t.Errorf("Status() = %+v, want ended with 1 affected", st)
	}
}
