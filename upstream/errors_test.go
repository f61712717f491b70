package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// Every kind of answer and failure, through every call, classified exactly.
func TestErrorClassification(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ociErr := func(code string) string {
		return `{"errors":[{"code":"` + code + `","message":"` + strings.ToLower(code) + `"}]}`
	}
	// A resolver whose DNS server refuses: a real *net.DNSError from the Go resolver.
	noDNS := &http.Transport{DialContext: (&net.Dialer{Resolver: &net.Resolver{
		PreferGo: true,
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("no DNS server here")
		},
	}}).DialContext}

	tests := []struct {
		name     string
		endpoint func(t *testing.T) string
		opts     Options
		want     error
		headWant error // for HEADs, when it differs: a HEAD answer has no body to read a code from
		failure  bool
	}{
		{name: "404 without a body", endpoint: wrapped(f, answer(http.StatusNotFound, "")), want: errdefs.ErrNotFound},
		{name: "404 NAME_UNKNOWN", endpoint: wrapped(f, answer(http.StatusNotFound, ociErr("NAME_UNKNOWN"))), want: errdefs.ErrNotFound},
		{name: "400 MANIFEST_UNKNOWN", endpoint: wrapped(f, answer(http.StatusBadRequest, ociErr("MANIFEST_UNKNOWN"))), want: errdefs.ErrNotFound, headWant: errdefs.ErrInvalidArgument},
		{name: "400 BLOB_UNKNOWN", endpoint: wrapped(f, answer(http.StatusBadRequest, ociErr("BLOB_UNKNOWN"))), want: errdefs.ErrNotFound, headWant: errdefs.ErrInvalidArgument},
		{name: "400 other", endpoint: wrapped(f, answer(http.StatusBadRequest, ociErr("NAME_INVALID"))), want: errdefs.ErrInvalidArgument},
		{name: "401 without a challenge", endpoint: wrapped(f, answer(http.StatusUnauthorized, ociErr("UNAUTHORIZED"))), want: errdefs.ErrUnauthenticated},
		{name: "401 with an unknown scheme", endpoint: wrapped(f, answer(http.StatusUnauthorized, "", "WWW-Authenticate", `Negotiate`)), want: errdefs.ErrUnauthenticated},
		{name: "401 with a Bearer challenge without realm", endpoint: wrapped(f, answer(http.StatusUnauthorized, "", "WWW-Authenticate", `Bearer service="x"`)), want: errdefs.ErrUnauthenticated},
		{name: "403", endpoint: wrapped(f, answer(http.StatusForbidden, ociErr("DENIED"))), want: errdefs.ErrPermissionDenied},
		{name: "408", endpoint: wrapped(f, answer(http.StatusRequestTimeout, "")), want: errdefs.ErrUnavailable, failure: true},
		{name: "429", endpoint: wrapped(f, answer(http.StatusTooManyRequests, ociErr("TOOMANYREQUESTS"), "Retry-After", "7")), want: errdefs.ErrUnavailable, failure: true},
		{name: "500", endpoint: wrapped(f, answer(http.StatusInternalServerError, "boom")), want: errdefs.ErrUnavailable, failure: true},
		{name: "502", endpoint: wrapped(f, answer(http.StatusBadGateway, "<html>")), want: errdefs.ErrUnavailable, failure: true},
		{name: "503 with a NAME_UNKNOWN body is still a failure", endpoint: wrapped(f, answer(http.StatusServiceUnavailable, ociErr("NAME_UNKNOWN"))), want: errdefs.ErrUnavailable, failure: true},
		{name: "418", endpoint: wrapped(f, answer(http.StatusTeapot, "")), want: errdefs.ErrUnknown},
		{name: "connection refused", endpoint: refusedURL, want: errdefs.ErrUnavailable, failure: true},
		{name: "connection reset", endpoint: wrapped(f, resetConn), want: errdefs.ErrUnavailable, failure: true},
		{name: "DNS failure", endpoint: func(*testing.T) string { return "http://registry.invalid" }, opts: Options{Transport: noDNS}, want: errdefs.ErrUnavailable, failure: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := tt.opts
			opts.Username, opts.Password = testUser, testPassword
			c := newClient(t, tt.endpoint(t), opts)
			ctx := t.Context()
			calls := map[string]func() error{
				"HeadManifest": func() error { _, _, err := c.HeadManifest(ctx, f.repo, f.tag); return err },
				"GetManifest":  func() error { _, _, err := c.GetManifest(ctx, f.repo, f.tag); return err },
				"GetBlob": func() error {
					rc, _, err := c.GetBlob(ctx, f.repo, f.layer)
					if err == nil {
						_, err = io.Copy(io.Discard, rc)
						rc.Close()
					}
					return err
				},
				"HeadBlob":  func() error { _, err := c.HeadBlob(ctx, f.repo, f.layer); return err },
				"Tags":      func() error { _, err := c.Tags(ctx, f.repo); return err },
				"Referrers": func() error { _, _, err := c.Referrers(ctx, f.repo, f.desc.Digest, ""); return err },
			}
			for name, call := range calls {
				err := call()
				want := tt.want
				if strings.HasPrefix(name, "Head") && tt.headWant != nil {
					want = tt.headWant
				}
				t.Run(name, func(t *testing.T) { checkErr(t, err, want, tt.failure) })
				if tt.name == "429" {
					if d, ok := RetryAfter(err); !ok || d != 7*time.Second {
						t.Errorf("%s: RetryAfter = %s, %v; want 7s", name, d, ok)
					}
				} else if _, ok := RetryAfter(err); ok {
					t.Errorf("%s: RetryAfter reported for %v", name, err)
				}
			}
		})
	}
}

func wrapped(f *fixture, wraps ...func(http.Handler) http.Handler) func(t *testing.T) string {
	return func(t *testing.T) string { return f.serve(t, wraps...).URL }
}

// resetConn answers every request by resetting the connection.
func resetConn(http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // close with RST
		}
		conn.Close()
	})
}

func TestRetryAfterParse(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name  string
		value string
		want  time.Duration
		ok    bool
	}{
		{name: "seconds", value: "120", want: 2 * time.Minute, ok: true},
		{name: "zero", value: "0", want: 0, ok: true},
		{name: "spaces", value: " 5 ", want: 5 * time.Second, ok: true},
		{name: "HTTP date", value: now.Add(90 * time.Second).Format(http.TimeFormat), want: 90 * time.Second, ok: true},
		{name: "date in the past", value: now.Add(-time.Hour).Format(http.TimeFormat), want: 0, ok: true},
		{name: "huge", value: "99999999999999999", want: time.Duration(int64(1<<63-1)/int64(time.Second)) * time.Second, ok: true},
		{name: "negative", value: "-1"},
		{name: "empty", value: ""},
		{name: "garbage", value: "soon"},
		{name: "fraction", value: "1.5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := parseRetryAfter(tt.value, now)
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", tt.value, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestIsEndpointFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "nil", err: nil},
		{name: "unavailable", err: fmt.Errorf("x: %w", errdefs.ErrUnavailable), want: true},
		{name: "deadline", err: fmt.Errorf("x: %w", context.DeadlineExceeded), want: true},
		{name: "ctxErr deadline", err: ctxErr(expired(t), "x"), want: true},
		{name: "canceled", err: fmt.Errorf("x: %w", context.Canceled)},
		{name: "ctxErr canceled", err: ctxErr(canceled(t), "x")},
		{name: "not found", err: errdefs.ErrNotFound},
		{name: "unauthenticated", err: errdefs.ErrUnauthenticated},
		{name: "permission denied", err: errdefs.ErrPermissionDenied},
		{name: "invalid argument", err: errdefs.ErrInvalidArgument},
		{name: "failed precondition", err: errdefs.ErrFailedPrecondition},
		{name: "plain", err: errors.New("x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsEndpointFailure(tt.err); got != tt.want {
				t.Errorf("IsEndpointFailure(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func expired(t *testing.T) context.Context {
	ctx, cancel := context.WithDeadline(t.Context(), time.Unix(0, 0))
	t.Cleanup(cancel)
	return ctx
}

func canceled(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	return ctx
}
