package mirror

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/rawhttp"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// TestMisbehavingUpstreamsAnswer pulls blobs from broken or hostile upstreams through a real
// resolver and the mirror, and checks what a client gets: the status, the OCI error code and a
// sentence that names neither the fault nor the upstream (the log names the fault), or, for a blob large enough to be streamed before it is
// verified, never a complete body: a 200 cut short, or no answer at all. The resolver runs the
// daemon's rules with only the idle timeout scaled down (30 s to 1 s); the fill timeout of an
// hour cannot be what ends any case.
func TestMisbehavingUpstreamsAnswer(t *testing.T) {
	t.Parallel()
	small := make([]byte, 64<<10) // verified before its first byte is sent
	rand.NewChaCha8([32]byte{9}).Read(small)
	large := make([]byte, 2<<20) // streamed as it arrives
	rand.NewChaCha8([32]byte{10}).Read(large)
	short := len(small) - 1000

	for _, tc := range []struct {
		name   string
		blob   []byte
		serve  http.HandlerFunc    // an httptest upstream, or
		raw    func(*bufio.Writer) // a raw HTTP/1.1 answer to the blob GET
		status int
		code   string // of the OCI error; "" for a 200 whose body must be cut short
		want   string // in the log of the failed request
	}{
		{name: "trickling body (slowloris)", blob: small, serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(small)))
			rawhttp.Trickle(w, r, small)
		}, status: http.StatusNotFound, code: "BLOB_UNKNOWN", want: "upstream stalled: it sent"},
		{name: "trickling large body", blob: large, serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(large)))
			rawhttp.Trickle(w, r, large)
			// Held whole until it verified (verify_before_send), the blob had sent nothing when
			// its fill stalled: the answer is a clean error, which containerd follows to its
			// next host.
		}, status: http.StatusServiceUnavailable, code: "UNAVAILABLE", want: "upstream stalled: it sent"},
		{name: "stream never closed", blob: small, serve: func(w http.ResponseWriter, r *http.Request) {
			w.Write(small) // chunked: no Content-Length, and no end
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}, status: http.StatusNotFound, code: "BLOB_UNKNOWN", want: "upstream stalled: it sent 0 bytes"},
		{name: "Content-Length larger than the body", blob: small, serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(small)+1000))
			w.Write(small)
		}, status: http.StatusNotFound, code: "BLOB_UNKNOWN", want: "unexpected EOF"},
		{name: "truncated body with a matching Content-Length", blob: small, serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(short))
			w.Write(small[:short])
		}, status: http.StatusBadGateway, code: "UNKNOWN", want: "not the requested one"},
		{name: "Content-Length smaller than the body", blob: small, raw: func(w *bufio.Writer) {
			fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", short)
			w.Write(small)
		}, status: http.StatusBadGateway, code: "UNKNOWN", want: "not the requested one"},
		{name: "redirect loop", blob: small, serve: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.Path+"?again="+strconv.Itoa(rand.IntN(1e9)), http.StatusFound)
		}, status: http.StatusNotFound, code: "BLOB_UNKNOWN", want: "stopped after 10 redirects"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var url string
			if tc.raw != nil {
				url = rawhttp.Upstream(t, tc.raw)
			} else {
				up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/v2/" {
						return
					}
					tc.serve(w, r)
				}))
				t.Cleanup(up.Close)
				url = up.URL
			}
			hook := new(logtest.Hook)
			srv := httptest.NewServer(withLog(hook, newHandler(t, newDaemonResolver(t, url), Options{})))
			t.Cleanup(srv.Close)

			target := "/v2/registry.test/app/blobs/" + digest.FromBytes(tc.blob).String()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+target, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := srv.Client().Do(req)
			if ctx.Err() != nil {
				t.Fatal("the request did not end within 30s")
			}
			if err != nil {
				t.Fatalf("GET %s: %v", target, err)
			}
			defer resp.Body.Close()
			body, rerr := io.ReadAll(resp.Body)
			if ctx.Err() != nil {
				t.Fatal("the request did not end within 30s")
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %.200s)", resp.StatusCode, tc.status, body)
			}
			if rerr != nil {
				t.Fatal(rerr)
			}
			checkError(t, resp, body, tc.status, tc.code)
			var e ociError
			if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 {
				t.Fatalf("not an OCI error body (%v): %s", err, body)
			}
			t.Logf("%d %s: %s", resp.StatusCode, e.Errors[0].Code, e.Errors[0].Message)
			for _, leak := range []string{tc.want, strings.TrimPrefix(url, "http://"), "127.0.0.1"} {
				if strings.Contains(string(body), leak) {
					t.Errorf("the answer names %q: %s", leak, body)
				}
			}
			if got := logged(hook); !strings.Contains(got, tc.want) {
				t.Errorf("the log does not name %q:\n%s", tc.want, got)
			}
		})
	}
}

// withLog serves h with every request's log.G logger writing to hook, at debug level.
func withLog(hook *logtest.Hook, h http.Handler) http.Handler {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel)
	l.AddHook(hook)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(log.WithLogger(r.Context(), logrus.NewEntry(l))))
	})
}

// logged is what hook holds, one line per entry.
func logged(hook *logtest.Hook) string {
	var b strings.Builder
	for _, e := range hook.AllEntries() {
		line, _ := e.String()
		b.WriteString(line)
	}
	return b.String()
}

// newDaemonResolver is a resolver for registry.test at url on a fresh cache, with the daemon's
// defaults except for the idle timeout, 1 s instead of 30 s.
func newDaemonResolver(t *testing.T, url string) *resolver.Resolver {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	r, err := resolver.New(t.Context(), store, resolver.Options{
		IdleTimeout: time.Second,
		Endpoints:   map[string][]string{"registry.test": {url}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); store.Close() })
	return r
}
