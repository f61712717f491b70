package cluster

import (
	"container/list"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Bounds of the gossip streams (TCP) this node accepts. memberlist's NetTransport accepts every
// connection and hands it to a goroutine of its own, so a flood of idle connections would
// take a file descriptor each until the process has none left for its mirror.
const (
	// maxGossipStreams bounds the inbound gossip streams open at once, and so the descriptors a
	// flood can take. A member opens a stream for a push/pull (each member with one other every
	// 30 s, and every join) and for a fallback probe when UDP failed, each done in milliseconds;
	// memberlist serves at most 128 push/pulls at once and refuses more itself. 256 leaves them
	// all room, with probes, while a node keeps thousands of descriptors for its clients.
	maxGossipStreams = 256
	// maxGossipStreamsPerIP bounds those from one IP address, so that a flood from one machine
	// leaves the members their slots: a member has a stream or two open with a node at a time.
	maxGossipStreamsPerIP = 32
	// streamFirstByteTimeout is how long an accepted stream may stay silent: a member writes at
	// once (memberlist's dialer speaks first), so a connection that sends nothing in this long
	// is not a member's. memberlist then bounds the rest of the stream by its TCPTimeout
	// (10 s).
	streamFirstByteTimeout = 5 * time.Second
	// bindTries is how often a transport on port 0 is tried, as memberlist does: the port the
	// kernel gives for TCP may be taken for UDP.
	bindTries = 10
)

// guardedTransport is memberlist's NetTransport with its inbound streams bounded: at most
// maxGossipStreams open at once, maxGossipStreamsPerIP from one address. A stream is handed to
// memberlist once it sent its first byte; until then it is silent, and closed after
// streamFirstByteTimeout. When every slot is taken, a new stream takes the slot of the oldest
// silent one, so that idle connections, however many, cannot keep a member's stream out (a
// member sends at once); with no silent stream to replace, the new one is closed as soon as it
// is accepted. Packets (UDP) and outbound streams are the NetTransport's own.
type guardedTransport struct {
	*memberlist.NetTransport
	maxOpen, maxPerIP int
	firstByte         time.Duration
	drops             dropCounter

	streams chan net.Conn // to memberlist
	done    chan struct{} // closed by Shutdown: hand nothing more over
	stopped chan struct{} // closed once the NetTransport's listeners are down
	admits  sync.WaitGroup
	forward sync.WaitGroup
	once    sync.Once

	mu     sync.Mutex
	open   int            // streams holding a slot: silent, or handed to memberlist
	perIP  map[string]int // of open, by remote IP
	silent list.List      // of *guardedConn not heard from yet, oldest first
}

var _ memberlist.NodeAwareTransport = (*guardedTransport)(nil)

// dropCounter counts a stream dropped for reason; what says what was dropped, for a log line.
// *gossipLog is one.
type dropCounter interface {
	add(reason dropReason, what string)
}

// newGuardedTransport binds host:port (TCP and UDP; port 0 takes a free port) and starts
// handing memberlist the streams within the bounds. Complaints go to logger; dropped streams
// are counted in drops.
func newGuardedTransport(host string, port int, logger *stdlog.Logger, drops dropCounter) (*guardedTransport, error) {
	nc := &memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: port, Logger: logger}
	tries := 1
	if port == 0 {
		tries = bindTries
	}
	var nt *memberlist.NetTransport
	var err error
	for range tries {
		if nt, err = memberlist.NewNetTransport(nc); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip on %s: %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
	}
	t := &guardedTransport{
		NetTransport: nt,
		maxOpen:      maxGossipStreams,
		maxPerIP:     maxGossipStreamsPerIP,
		firstByte:    streamFirstByteTimeout,
		drops:        drops,
		streams:      make(chan net.Conn),
		done:         make(chan struct{}),
		stopped:      make(chan struct{}),
		perIP:        map[string]int{},
	}
	t.forward.Add(1)
	go t.forwardLoop()
	return t, nil
}

// StreamCh is where memberlist takes the streams admitted.
func (t *guardedTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown stops the listeners and closes the streams not handed over yet.
func (t *guardedTransport) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.done)
		// The NetTransport's accept loop may be handing forwardLoop a connection: forwardLoop
		// takes (and closes) them until the listeners are down.
		err = t.NetTransport.Shutdown()
		close(t.stopped)
		t.forward.Wait()
		t.mu.Lock()
		for e := t.silent.Front(); e != nil; e = e.Next() {
			_ = e.Value.(*guardedConn).Conn.Close() // ends its wait for a first byte
		}
		t.mu.Unlock()
		t.admits.Wait()
	})
	return err
}

// openStreams is how many inbound streams hold a slot.
func (t *guardedTransport) openStreams() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}

// forwardLoop takes the NetTransport's accepted connections and admits those within bounds.
func (t *guardedTransport) forwardLoop() {
	defer t.forward.Done()
	for {
		select {
		case conn := <-t.NetTransport.StreamCh():
			t.accept(conn)
		case <-t.stopped:
			return
		}
	}
}

// accept gives conn a slot, the oldest silent stream's if need be, or closes it at once. Only
// forwardLoop calls it, so slots freed here stay free until it takes one.
func (t *guardedTransport) accept(conn net.Conn) {
	select {
	case <-t.done:
		_ = conn.Close()
		return
	default:
	}
	ip := remoteIP(conn)
	t.mu.Lock()
	var oldest *guardedConn
	if t.open >= t.maxOpen && t.perIP[ip] < t.maxPerIP && t.silent.Len() > 0 {
		// Taken off the silent list here, so that admit, should its first byte come now,
		// does not hand it over.
		oldest = t.silent.Remove(t.silent.Front()).(*guardedConn)
		oldest.elem = nil
	}
	t.mu.Unlock()
	if oldest != nil {
		// Its slot is free once Close returns; its wait for a first byte ends in an error.
		_ = oldest.Close()
	}

	t.mu.Lock()
	if t.open >= t.maxOpen || t.perIP[ip] >= t.maxPerIP {
		t.mu.Unlock()
		_ = conn.Close()
		t.drops.add(dropStreamLimit, "gossip stream refused, too many open: from="+conn.RemoteAddr().String())
		return
	}
	t.open++
	t.perIP[ip]++
	gc := &guardedConn{Conn: conn, t: t, ip: ip}
	gc.elem = t.silent.PushBack(gc)
	t.mu.Unlock()
	t.admits.Add(1)
	go t.admit(gc)
}

// admit hands conn to memberlist once it sent its first byte, or closes it.
func (t *guardedTransport) admit(conn *guardedConn) {
	defer t.admits.Done()
	err := conn.readFirst(t.firstByte)
	t.mu.Lock()
	replaced := conn.elem == nil // its slot went to a newer stream
	if !replaced {
		t.silent.Remove(conn.elem)
		conn.elem = nil
	}
	t.mu.Unlock()
	if err != nil || replaced {
		_ = conn.Close()
		select {
		case <-t.done: // closed by Shutdown
		default:
			t.drops.add(dropStreamIdle, "gossip stream closed, nothing received: from="+conn.RemoteAddr().String())
		}
		return
	}
	select {
	case t.streams <- conn:
	case <-t.done:
		_ = conn.Close()
	}
}

// release frees conn's slot.
func (t *guardedTransport) release(conn *guardedConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if conn.elem != nil {
		t.silent.Remove(conn.elem)
		conn.elem = nil
	}
	t.open--
	if t.perIP[conn.ip]--; t.perIP[conn.ip] <= 0 {
		delete(t.perIP, conn.ip)
	}
}

// remoteIP is the IP a connection comes from ("" if it has none).
func remoteIP(conn net.Conn) string {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return ""
}

// guardedConn is a stream with a slot: its first byte, read before memberlist saw it, comes
// first; closing it frees its slot (once).
type guardedConn struct {
	net.Conn
	t      *guardedTransport
	ip     string
	elem   *list.Element // in t.silent while silent; guarded by t.mu
	first  []byte
	closed atomic.Bool
}

// readFirst reads the stream's first byte within timeout.
func (c *guardedConn) readFirst(timeout time.Duration) error {
	if err := c.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c.Conn, b); err != nil {
		return err
	}
	c.first = b
	return c.Conn.SetReadDeadline(time.Time{})
}

func (c *guardedConn) Read(p []byte) (int, error) {
	if len(c.first) > 0 && len(p) > 0 {
		n := copy(p, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *guardedConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := c.Conn.Close()
	c.t.release(c)
	return err
}
