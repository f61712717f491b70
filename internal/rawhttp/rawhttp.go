// Package rawhttp holds misbehaving upstreams for tests of how lifeboat meets a registry that
// breaks the protocol or crawls: a hand-written HTTP/1.1 server (bodies longer than their
// Content-Length, answers cut short, headers no server library would send) and a trickling body.
package rawhttp

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Upstream listens on loopback until the test ends. It answers the registry ping (GET /v2/)
// with 200, and any other request with whatever answer writes, then closes the connection. It
// returns the upstream's URL.
func Upstream(t testing.TB, answer func(w *bufio.Writer)) string {
	t.Helper()
	return "http://" + listen(t, func(conn net.Conn) {
		defer conn.Close()
		br, bw := bufio.NewReader(conn), bufio.NewWriter(conn)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if req.URL.Path == "/v2/" {
				bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				bw.Flush()
				continue
			}
			answer(bw)
			bw.Flush()
			return
		}
	})
}

// listen accepts connections on loopback until the test ends, each handled by handle on a
// goroutine of its own, and returns the listener's host:port. The test's cleanup closes the
// listener and waits for the handlers.
func listen(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { handle(conn) })
		}
	})
	return ln.Addr().String()
}

// Trickle sends body a byte every 50 ms (20 B/s), as a slowloris upstream does, until the
// client goes away.
func Trickle(w http.ResponseWriter, r *http.Request, body []byte) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for _, b := range body {
		if _, err := w.Write([]byte{b}); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

// Closer listens on loopback until the test ends and closes every connection it accepts at
// once, counting them: a host that tells whether anything dialled it. It returns its host:port.
func Closer(t testing.TB) (addr string, accepts *atomic.Int64) {
	t.Helper()
	accepts = &atomic.Int64{}
	return listen(t, func(conn net.Conn) {
		accepts.Add(1)
		conn.Close()
	}), accepts
}
