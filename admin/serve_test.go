package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/outage"
)

// closeSignal is a listener that says when it is closed: when a shutdown begins.
type closeSignal struct {
	net.Listener
	closed chan struct{}
	once   atomic.Bool
}

func (l *closeSignal) Close() error {
	if l.once.CompareAndSwap(false, true) {
		close(l.closed)
	}
	return l.Listener.Close()
}

// TestServeHTTPWaitsForHandlers checks that ServeHTTP returns only once the request in flight
// at the stop has ended: finished within the grace, or cancelled at its end.
func TestServeHTTPWaitsForHandlers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		grace   time.Duration
		release bool // the handler finishes once the shutdown began; else only when cancelled
		wantCut int
	}{
		{"finishes within the grace", time.Minute, true, 0},
		{"cancelled at the deadline", 50 * time.Millisecond, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
			if err != nil {
				t.Fatal(err)
			}
			l := &closeSignal{Listener: ln, closed: make(chan struct{})}
			entered := make(chan struct{})
			var finished atomic.Bool
			var cancelled atomic.Bool
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(entered)
				if tc.release {
					<-l.closed
					io.WriteString(w, "done")
				} else {
					<-r.Context().Done()
					cancelled.Store(true)
				}
				finished.Store(true)
			})
			ctx, cancel := context.WithCancel(t.Context())
			type result struct {
				cut int
				err error
			}
			done := make(chan result, 1)
			go func() {
				cut, err := ServeHTTP(ctx, l, h, tc.grace)
				done <- result{cut, err}
			}()

			client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", ln.Addr().String())
			}}}
			type answer struct {
				body string
				err  error
			}
			answered := make(chan answer, 1)
			go func() {
				resp, err := client.Get("http://test/")
				if err != nil {
					answered <- answer{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				answered <- answer{string(b), err}
			}()
			<-entered
			cancel()
			res := <-done
			if res.err != nil || res.cut != tc.wantCut {
				t.Fatalf("ServeHTTP = %d cut, %v; want %d cut, no error", res.cut, res.err, tc.wantCut)
			}
			if !finished.Load() {
				t.Fatal("ServeHTTP returned while its handler was still running")
			}
			a := <-answered
			switch {
			case tc.release && (a.err != nil || a.body != "done"):
				t.Errorf("the request in flight got %q, %v; want its whole answer", a.body, a.err)
			case !tc.release && (a.err == nil || !cancelled.Load()):
				t.Errorf("the request cut got %q, %v (handler cancelled: %v); want its connection closed and its context ended", a.body, a.err, cancelled.Load())
			}
		})
	}
}

// TestServeHTTPListenerFails checks that a listener that fails ends ServeHTTP with its error.
func TestServeHTTPListenerFails(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // Accept fails at once
	_, err = ServeHTTP(t.Context(), ln, http.NotFoundHandler(), time.Minute)
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("ServeHTTP on a closed listener = %v, want its error", err)
	}
}

// TestStatusJSON checks the shape `lifeboat status --json` prints: endpoints a list with the
// configured registries before any request, and no zero times for an outage never started.
func TestStatusJSON(t *testing.T) {
	t.Parallel()
	served, c := newService(t)
	// A Service over the same parts, configured as the daemon does.
	svc := &Service{
		StartedAt: served.StartedAt, Store: served.Store, Resolver: served.Resolver, Outage: served.Outage,
		Upstreams: map[string][]string{
			"docker.io": {"https://registry-1.docker.io"},
			"ghcr.io":   {"https://ghcr.example", "https://ghcr.io"},
		},
		Listeners: map[string]string{"mirror": "127.0.0.1:5100", "plugin": "/run/lifeboat/lifeboat.sock"},
	}

	st := svc.Status(t.Context())
	var got []string
	for _, e := range st.Endpoints {
		if !e.Up || !e.Since.Equal(svc.StartedAt) {
			t.Errorf("endpoint %+v not contacted yet: want it up since the start", e)
		}
		got = append(got, e.Registry+" "+e.Endpoint)
	}
	if want := "docker.io https://registry-1.docker.io,ghcr.io https://ghcr.example,ghcr.io https://ghcr.io"; strings.Join(got, ",") != want {
		t.Errorf("endpoints %q, want %q", got, want)
	}

	b, err := json.Marshal(svc.Status(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Endpoints json.RawMessage            `json:"endpoints"`
		Outage    map[string]json.RawMessage `json:"outage"`
		Listeners map[string]string          `json:"listeners"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"since", "until", "ended"} {
		if v, ok := raw.Outage[k]; ok {
			t.Errorf("outage never started has %s %s, want none", k, v)
		}
	}
	if raw.Listeners["plugin"] == "" {
		t.Errorf("listeners %v without the plugin socket", raw.Listeners)
	}

	// Without a configured registry (the CLI's own Service) endpoints is still a list.
	svc.Upstreams = nil
	b, _ = json.Marshal(svc.Status(t.Context()))
	json.Unmarshal(b, &raw)
	if string(raw.Endpoints) != "[]" {
		t.Errorf("endpoints with none in use: %s, want []", raw.Endpoints)
	}

	// An outage started has its since, and reads back whole.
	if _, err := c.StartOutage(t.Context(), OutageRequest{Spec: outage.Spec{Mode: "dns"}}); err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(svc.Status(t.Context()))
	raw.Outage = nil
	json.Unmarshal(b, &raw)
	if _, ok := raw.Outage["since"]; !ok {
		t.Errorf("outage in force without its since: %s", b)
	}
	if _, ok := raw.Outage["until"]; ok {
		t.Errorf("outage until stopped has an until: %s", b)
	}
	st, err = c.Status(t.Context())
	if err != nil || !st.Outage.Active || st.Outage.Since.IsZero() || st.Outage.Spec.Mode != "dns" {
		t.Errorf("status read back: %+v, %v", st.Outage, err)
	}
}
