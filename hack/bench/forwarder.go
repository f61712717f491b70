package main

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// forwarder is a TCP forwarder on loopback in front of an upstream. It counts the bytes the
// upstream sends, and can be switched to blackhole: every connection it holds is closed, and
// new ones are accepted and never answered.
type forwarder struct {
	ln     net.Listener
	target string
	down   atomic.Int64 // bytes from the upstream to the clients

	mu    sync.Mutex
	black bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startForwarder(target string) (*forwarder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &forwarder{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
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
	io.CopyBuffer(countingWriter{c, &f.down}, struct{ io.Reader }{u}, make([]byte, 256<<10))
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

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n.Add(int64(n))
	return n, err
}
