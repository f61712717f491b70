package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

func TestNew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbageCA := filepath.Join(dir, "garbage.pem")
	must(t, os.WriteFile(garbageCA, []byte("not a certificate"), 0o600))
	badConfig := filepath.Join(dir, "config.json")
	must(t, os.WriteFile(badConfig, []byte(`{"auths": {"r.example": {"auth": "`+testPassword+`"}}`), 0o600))

	tests := []struct {
		name     string
		registry string
		endpoint string
		opts     Options
		want     string // Endpoint(), or "" for an ErrInvalidArgument
	}{
		{name: "https", registry: "docker.io", endpoint: "https://registry-1.docker.io", want: "https://registry-1.docker.io"},
		{name: "trailing slash", registry: "docker.io", endpoint: "https://registry-1.docker.io/", want: "https://registry-1.docker.io"},
		{name: "http with port", registry: "localhost:5000", endpoint: "http://127.0.0.1:5000", want: "http://127.0.0.1:5000"},
		{name: "ipv6", registry: "r.example", endpoint: "https://[::1]:5000", want: "https://[::1]:5000"},
		{name: "missing docker config is anonymous", registry: "r.example", endpoint: "https://r.example", opts: Options{DockerConfig: filepath.Join(dir, "none.json")}, want: "https://r.example"},
		{name: "ftp", registry: "r.example", endpoint: "ftp://r.example"},
		{name: "no scheme", registry: "r.example", endpoint: "r.example:5000"},
		{name: "no host", registry: "r.example", endpoint: "https://"},
		{name: "port only", registry: "r.example", endpoint: "https://:5000"},
		{name: "path", registry: "r.example", endpoint: "https://r.example/v2"},
		{name: "query", registry: "r.example", endpoint: "https://r.example/?ns=docker.io"},
		{name: "fragment", registry: "r.example", endpoint: "https://r.example#x"},
		{name: "userinfo", registry: "r.example", endpoint: "https://" + testUser + ":" + testPassword + "@r.example"},
		{name: "unparsable with password", registry: "r.example", endpoint: "https://" + testUser + ":" + testPassword + "@r.example:port"},
		{name: "empty registry", registry: "", endpoint: "https://r.example"},
		{name: "registry with path", registry: "r.example/x", endpoint: "https://r.example"},
		{name: "missing CA file", registry: "r.example", endpoint: "https://r.example", opts: Options{CAFile: filepath.Join(dir, "none.pem")}},
		{name: "CA file without certificate", registry: "r.example", endpoint: "https://r.example", opts: Options{CAFile: garbageCA}},
		{name: "malformed docker config", registry: "r.example", endpoint: "https://r.example", opts: Options{DockerConfig: badConfig}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tt.registry, tt.endpoint, tt.opts)
			if tt.want == "" {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("New(%q, %q) = %v, want ErrInvalidArgument", tt.registry, tt.endpoint, err)
				}
				noSecret(t, err.Error())
				return
			}
			must(t, err)
			if c.Endpoint() != tt.want || c.Registry() != tt.registry {
				t.Errorf("Endpoint, Registry = %q, %q; want %q, %q", c.Endpoint(), c.Registry(), tt.want, tt.registry)
			}
		})
	}
}

// Bad input is refused before any request is made.
func TestInvalidInput(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	c := newClient(t, srv.URL, Options{})
	good := digest.FromString("x")
	ctx := t.Context()
	call := map[string]func(repo, ref string, d digest.Digest) error{
		"HeadManifest": func(repo, ref string, _ digest.Digest) error { _, _, err := c.HeadManifest(ctx, repo, ref); return err },
		"GetManifest":  func(repo, ref string, _ digest.Digest) error { _, _, err := c.GetManifest(ctx, repo, ref); return err },
		"GetBlob": func(repo, _ string, d digest.Digest) error {
			rc, _, err := c.GetBlob(ctx, repo, d)
			if rc != nil {
				rc.Close()
			}
			return err
		},
		"HeadBlob":  func(repo, _ string, d digest.Digest) error { _, err := c.HeadBlob(ctx, repo, d); return err },
		"Tags":      func(repo, _ string, _ digest.Digest) error { _, err := c.Tags(ctx, repo); return err },
		"Referrers": func(repo, _ string, d digest.Digest) error { _, _, err := c.Referrers(ctx, repo, d, ""); return err },
	}
	tests := []struct {
		name  string
		repo  string
		ref   string
		dgst  digest.Digest
		calls []string
	}{
		{name: "uppercase repo", repo: "Library/alpine", ref: "latest", dgst: good},
		{name: "empty repo", repo: "", ref: "latest", dgst: good},
		{name: "dot-dot", repo: "library/../etc", ref: "latest", dgst: good},
		{name: "double slash", repo: "library//alpine", ref: "latest", dgst: good},
		{name: "trailing slash", repo: "library/alpine/", ref: "latest", dgst: good},
		{name: "encoded slash", repo: "library%2falpine", ref: "latest", dgst: good},
		{name: "repo too long", repo: strings.Repeat("a", 256), ref: "latest", dgst: good},
		{name: "tag with slash", repo: "library/alpine", ref: "a/b", calls: []string{"HeadManifest", "GetManifest"}},
		{name: "tag starting with dash", repo: "library/alpine", ref: "-x", calls: []string{"HeadManifest", "GetManifest"}},
		{name: "tag too long", repo: "library/alpine", ref: strings.Repeat("a", 129), calls: []string{"HeadManifest", "GetManifest"}},
		{name: "empty reference", repo: "library/alpine", ref: "", calls: []string{"HeadManifest", "GetManifest"}},
		{name: "short digest reference", repo: "library/alpine", ref: "sha256:abc", calls: []string{"HeadManifest", "GetManifest"}},
		{name: "query in reference", repo: "library/alpine", ref: "latest?x=1", calls: []string{"HeadManifest", "GetManifest"}},
		{name: "bad digest hex", repo: "library/alpine", dgst: digest.Digest("sha256:" + strings.Repeat("Z", 64)), calls: []string{"GetBlob", "HeadBlob", "Referrers"}},
		{name: "unknown algorithm", repo: "library/alpine", dgst: digest.Digest("md5:" + strings.Repeat("a", 32)), calls: []string{"GetBlob", "HeadBlob", "Referrers"}},
		{name: "path in digest", repo: "library/alpine", dgst: digest.Digest("sha256:../../x"), calls: []string{"GetBlob", "HeadBlob", "Referrers"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := tt.calls
			if calls == nil {
				calls = []string{"HeadManifest", "GetManifest", "GetBlob", "HeadBlob", "Tags", "Referrers"}
			}
			for _, name := range calls {
				if err := call[name](tt.repo, tt.ref, tt.dgst); !errdefs.IsInvalidArgument(err) {
					t.Errorf("%s(%q, %q, %q) = %v, want ErrInvalidArgument", name, tt.repo, tt.ref, tt.dgst, err)
				}
			}
		})
	}
	if _, _, err := c.Referrers(ctx, "library/alpine", good, "not a media type;;"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Referrers with a bad artifact type = %v, want ErrInvalidArgument", err)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the server got %d requests for invalid input, want 0", n)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := httptest.NewUnstartedServer(f.reg)
	srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0) // the failing handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := writeCA(t, srv)

	var wrapped atomic.Int64
	wrapper := func(opts Options) Options {
		base, err := NewTransport(opts)
		must(t, err)
		opts.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			wrapped.Add(1)
			return base.RoundTrip(r)
		})
		return opts
	}
	tests := []struct {
		name string
		opts Options
		want error
	}{
		{name: "system roots only", opts: Options{}, want: errdefs.ErrUnavailable},
		{name: "CA file", opts: Options{CAFile: ca}},
		{name: "insecure skip verify", opts: Options{InsecureSkipVerify: true}},
		{name: "CA file applied to a given *http.Transport", opts: Options{CAFile: ca, Transport: &http.Transport{}}},
		{name: "given *http.Transport keeps its own TLS config", opts: Options{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}},
		{name: "wrapper around NewTransport", opts: wrapper(Options{CAFile: ca})},
		{name: "wrapper around NewTransport without the CA", opts: wrapper(Options{}), want: errdefs.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, srv.URL, tt.opts)
			_, _, err := c.HeadManifest(t.Context(), f.repo, f.tag)
			checkErr(t, err, tt.want, tt.want != nil)
			checkErr(t, c.Ping(t.Context()), tt.want, tt.want != nil)
		})
	}
	t.Cleanup(func() {
		if wrapped.Load() == 0 {
			t.Error("the wrapping transport was never used")
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestPing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name     string
		endpoint func(t *testing.T) string
		want     error
		failure  bool
	}{
		{name: "200", endpoint: func(t *testing.T) string { return f.serve(t).URL }},
		{name: "401 is up", endpoint: func(t *testing.T) string { return f.serve(t, basicAuth(testUser, testPassword)).URL }},
		{name: "404", endpoint: func(t *testing.T) string { return f.serve(t, answer(http.StatusNotFound, "")).URL }, want: errdefs.ErrNotFound},
		{name: "503", endpoint: func(t *testing.T) string { return f.serve(t, answer(http.StatusServiceUnavailable, "")).URL }, want: errdefs.ErrUnavailable, failure: true},
		{name: "refused", endpoint: refusedURL, want: errdefs.ErrUnavailable, failure: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, tt.endpoint(t), Options{Username: testUser, Password: testPassword})
			checkErr(t, c.Ping(t.Context()), tt.want, tt.failure)
		})
	}
}

// A blackholed endpoint costs the caller its deadline, no more, and is an endpoint failure;
// a caller that cancels is not.
func TestBlackholeAndCancel(t *testing.T) {
	t.Parallel()
	c := newClient(t, blackholeURL(t), Options{Username: testUser, Password: testPassword})
	for _, tt := range []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		cause   error
		failure bool
	}{
		{
			name: "deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(t.Context(), 200*time.Millisecond)
			},
			cause:   context.DeadlineExceeded,
			failure: true,
		},
		{
			name:  "canceled",
			ctx:   func() (context.Context, context.CancelFunc) { return context.WithCancel(t.Context()) },
			cause: context.Canceled,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ops := map[string]func(ctx context.Context) error{
				"HeadManifest": func(ctx context.Context) error { _, _, err := c.HeadManifest(ctx, "a/b", "latest"); return err },
				"GetBlob": func(ctx context.Context) error {
					_, _, err := c.GetBlob(ctx, "a/b", digest.FromString("x"))
					return err
				},
				"Tags": func(ctx context.Context) error { _, err := c.Tags(ctx, "a/b"); return err },
				"Ping": func(ctx context.Context) error { return c.Ping(ctx) },
			}
			for name, op := range ops {
				ctx, cancel := tt.ctx()
				if tt.cause == context.Canceled {
					go cancel() // races the request on purpose: before or during, it is a cancellation
				}
				start := time.Now()
				err := op(ctx)
				cancel()
				// The deadline is 200ms; the bound leaves room for a loaded machine and is still
				// far below the 30 s response header timeout a request without it would cost.
				if elapsed := time.Since(start); elapsed > 10*time.Second {
					t.Errorf("%s took %s on a blackholed endpoint: %v", name, elapsed, err)
				}
				if !errors.Is(err, tt.cause) {
					t.Errorf("%s: err = %v, want %v", name, err, tt.cause)
				}
				if tt.failure && !errdefs.IsUnavailable(err) {
					t.Errorf("%s: err = %v, want ErrUnavailable", name, err)
				}
				if got := IsEndpointFailure(err); got != tt.failure {
					t.Errorf("%s: IsEndpointFailure(%v) = %v, want %v", name, err, got, tt.failure)
				}
			}
		})
	}
}
