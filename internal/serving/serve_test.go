package serving

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
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

// TestHTTPWaitsForHandlers checks that HTTP returns only once the request in flight
// at the stop has ended: finished within the grace, or cancelled at its end.
func TestHTTPWaitsForHandlers(t *testing.T) {
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
				cut, err := HTTP(ctx, l, h, tc.grace)
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
				t.Fatalf("HTTP = %d cut, %v; want %d cut, no error", res.cut, res.err, tc.wantCut)
			}
			if !finished.Load() {
				t.Fatal("HTTP returned while its handler was still running")
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

// TestHTTPListenerFails checks that a listener that fails ends HTTP with its error.
func TestHTTPListenerFails(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // Accept fails at once
	_, err = HTTP(t.Context(), ln, http.NotFoundHandler(), time.Minute)
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("HTTP on a closed listener = %v, want its error", err)
	}
}

// TestHTTPClosesIdleConnections checks that a keep-alive connection left idle after a request
// is closed by the server once the idle timeout passes, so that idle clients cannot hold
// connections (and their goroutines) for ever.
func TestHTTPClosesIdleConnections(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveHTTP(ctx, ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "ok")
		}), time.Minute, 100*time.Millisecond)
	}()
	t.Cleanup(func() { cancel(); <-done })

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: lifeboat\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "ok" || resp.Close {
		t.Fatalf("answer %q, %v, close %v: want a kept-alive ok", body, err, resp.Close)
	}

	// The connection now stays idle: the server must close it, well before the deadline.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := br.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("idle keep-alive connection: read %d bytes, %v; want the server to close it (EOF)", n, err)
	}
}
