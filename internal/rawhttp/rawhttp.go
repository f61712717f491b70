// Package rawhttp is a hand-written HTTP/1.1 upstream for tests of how lifeboat meets a
// registry that breaks the protocol: bodies longer than their Content-Length, answers cut
// short, headers no server library would send.
package rawhttp

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// Upstream listens on loopback until the test ends. It answers the registry ping (GET /v2/)
// with 200, and any other request with whatever answer writes, then closes the connection. It
// returns the upstream's URL.
func Upstream(t testing.TB, answer func(w *bufio.Writer)) string {
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
			wg.Go(func() {
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
	})
	return "http://" + ln.Addr().String()
}
