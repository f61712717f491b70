package main

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// forwarder is a TCP forwarder on loopback in front of an upstream. It counts the bytes the
// upstream sends, and can be switched to blackhole: every connection it holds is closed, and
// new ones are accepted and never answered. A forwarder started with a link rate sends the
// upstream's bytes no faster than that, over all its connections together, like a network link.
type forwarder struct {
	ln     net.Listener
	target string
	down   atomic.Int64  // bytes from the upstream to the clients
	link   *rate.Limiter // nil: as fast as loopback goes

	mu    sync.Mutex
	black bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// A link sends at most linkChunk bytes at once. Its burst is larger, so that a wait that
// oversleeps is made up by the next ones and the average rate is the link's.
const (
	linkChunk = 64 << 10
	linkBurst = 1 << 20
)

func startForwarder(target string) (*forwarder, error) { return startLinkForwarder(target, 0) }

// startLinkForwarder starts a forwarder whose link carries bytesPerSec from the upstream, or
// is unlimited when bytesPerSec is 0.
func startLinkForwarder(target string, bytesPerSec int64) (*forwarder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &forwarder{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	if bytesPerSec > 0 {
		f.link = rate.NewLimiter(rate.Limit(bytesPerSec), linkBurst)
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *forwarder) addr() string { return f.ln.Addr().String() }

// bytes returns how many bytes the upstream has sent through the forwarder so far.
func (f *forwarder) bytes() int64 { return f.down.Load() }

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.handle(c)
		}()
	}
}

// track registers c so that blackhole and close can cut it; it reports false (and closes c)
// when the forwarder is blackholing and c is a connection to the upstream.
func (f *forwarder) track(c net.Conn) (black bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns[c] = struct{}{}
	return f.black
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *forwarder) handle(c net.Conn) {
	defer f.untrack(c)
	if f.track(c) {
		io.Copy(io.Discard, c) // accept, never answer
		return
	}
	u, err := net.Dial("tcp", f.target)
	if err != nil {
		return
	}
	defer f.untrack(u)
	if f.track(u) {
		return
	}
	go func() {
		io.Copy(u, c)
		u.Close()
	}()
	buf := make([]byte, 256<<10)
	if f.link != nil {
		buf = buf[:linkChunk]
	}
	io.CopyBuffer(countingWriter{c, &f.down, f.link}, struct{ io.Reader }{u}, buf)
}

// blackhole cuts every connection through the forwarder; later ones are held unanswered.
func (f *forwarder) blackhole() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.black = true
	for c := range f.conns {
		c.Close()
	}
}

func (f *forwarder) close() {
	f.ln.Close()
	f.blackhole()
	f.wg.Wait()
}

// countingWriter counts what it writes to w in n, waiting first for link when there is one;
// its writes are at most linkChunk bytes then.
type countingWriter struct {
	w    io.Writer
	n    *atomic.Int64
	link *rate.Limiter
}

func (w countingWriter) Write(p []byte) (int, error) {
	if w.link != nil {
		if err := w.link.WaitN(context.Background(), len(p)); err != nil {
			return 0, err
		}
	}
	n, err := w.w.Write(p)
	w.n.Add(int64(n))
	return n, err
}
