package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// The gossip port's defences: memberlist's complaints about foreign packets counted and
// logged once a minute, inbound streams bounded, members whose peer address is elsewhere
// ignored, and seeds that come back joined again.

// clock is a settable time for gossipLog.
type clock struct{ t atomic.Pointer[time.Time] }

func newClock() *clock {
	c := &clock{}
	c.set(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return c
}
func (c *clock) now() time.Time          { return *c.t.Load() }
func (c *clock) set(t time.Time)         { c.t.Store(&t) }
func (c *clock) advance(d time.Duration) { c.set(c.now().Add(d)) }

// testGossipLog is a gossipLog on clock c, whose lines hook records, and memberlist's logger
// over it.
func testGossipLog(c *clock) (*gossipLog, *stdlog.Logger, *logtest.Hook) {
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	g := newGossipLog(logrus.NewEntry(logger))
	g.now = c.now
	return g, stdlog.New(g, "", 0), hook
}

func TestClassifyComplaint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, line string
		reason     dropReason
		foreign    bool
	}{
		{"junk datagram", `memberlist: discarding packet with unacceptable label "": from=10.0.0.9:4000`, dropLabel, true},
		{"other cluster's stream", `memberlist: discarding stream with unacceptable label "other": from=10.0.0.9:4000`, dropLabel, true},
		{"truncated label", `memberlist: cannot decode label; packet has been truncated from=10.0.0.9:4000`, dropLabel, true},
		{"idle stream", `memberlist: failed to receive and remove the stream label header: read tcp 10.0.0.1:7946->10.0.0.9:4000: i/o timeout from=10.0.0.9:4000`, dropStreamIdle, true},
		{"wrong key, packet", `memberlist: Decrypt packet failed: no installed keys could decrypt the message from=10.0.0.9:4000`, dropDecrypt, true},
		{"wrong key, stream", `memberlist: failed to receive: No installed keys could decrypt the message from=10.0.0.9:4000`, dropDecrypt, true},
		{"plain stream", `memberlist: failed to receive: encryption is configured but remote state is not encrypted from=10.0.0.9:4000`, dropDecrypt, true},
		{"short datagram", `memberlist: UDP packet too short (65536 bytes) from=10.0.0.9:4000`, dropMalformed, true},
		{"bad type", `memberlist: msg type (77) not supported from=10.0.0.9:4000`, dropMalformed, true},
		{"bad ping", `memberlist: Failed to decode ping request: EOF from=10.0.0.9:4000`, dropMalformed, true},
		{"member's push/pull", `memberlist: Push/Pull with b failed: dial tcp 10.0.0.2:7946: i/o timeout`, 0, false},
		{"member's probe", `memberlist: Failed fallback TCP ping: timeout 1s: read tcp: i/o timeout`, 0, false},
		{"refute", `memberlist: Refuting a dead message (from: b)`, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := classifyComplaint(tc.line)
			if ok != tc.foreign || (ok && r != tc.reason) {
				t.Errorf("classifyComplaint = %v, %v; want %v, %v", r, ok, tc.reason, tc.foreign)
			}
		})
	}
}

// 5,000 junk datagrams make one line at once and one line a minute later with the rest; the
// counts hold all of them; memberlist's other lines keep their level.
func TestGossipLogRateLimited(t *testing.T) {
	t.Parallel()
	c := newClock()
	g, l, hook := testGossipLog(c)
	const junk = 5000
	for range junk {
		l.Printf(`[ERR] memberlist: discarding packet with unacceptable label "": from=10.0.0.9:4000`)
	}
	l.Printf("[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=10.0.0.9:4000")
	l.Printf("[ERR] memberlist: Push/Pull with b failed: connection refused")
	l.Printf("[DEBUG] memberlist: Stream connection from=10.0.0.2:4000")

	entries := hook.AllEntries()
	if len(entries) != 3 {
		t.Fatalf("%d lines, want 3 (one about the drops, memberlist's own two): %v", len(entries), messages(entries))
	}
	first := entries[0]
	if first.Level != logrus.WarnLevel || first.Data["dropped"] != int64(1) || first.Data["reasons"] != "label=1" {
		t.Errorf("first line: %s %q %v", first.Level, first.Message, first.Data)
	}
	if entries[1].Level != logrus.ErrorLevel || !strings.Contains(entries[1].Message, "Push/Pull with b failed") {
		t.Errorf("memberlist's error about a member: %s %q", entries[1].Level, entries[1].Message)
	}
	if entries[2].Level != logrus.DebugLevel {
		t.Errorf("memberlist's debug line at %s", entries[2].Level)
	}

	// Within the minute: counted, not logged; a flush does not log either.
	c.advance(30 * time.Second)
	l.Printf(`[ERR] memberlist: discarding packet with unacceptable label "": from=10.0.0.9:4000`)
	g.flush()
	if n := len(hook.AllEntries()); n != 3 {
		t.Fatalf("%d lines within the minute, want 3", n)
	}
	// A minute after the first line, the flush says what came since.
	c.advance(31 * time.Second)
	g.flush()
	entries = hook.AllEntries()
	if len(entries) != 4 {
		t.Fatalf("%d lines after the minute, want 4: %v", len(entries), messages(entries))
	}
	second := entries[3]
	if second.Data["dropped"] != int64(junk+1) || second.Data["reasons"] != "label=5000 decrypt=1" {
		t.Errorf("second line: %q %v; want %d dropped since the first", second.Message, second.Data, junk+1)
	}
	g.flush()
	c.advance(2 * time.Minute)
	g.flush()
	if n := len(hook.AllEntries()); n != 4 {
		t.Errorf("%d lines with nothing dropped since the last, want 4", n)
	}
	counts := g.counts()
	if counts["label"] != junk+1 || counts["decrypt"] != 1 || counts["malformed"] != 0 {
		t.Errorf("counts %v", counts)
	}
}

func messages(es []*logrus.Entry) []string {
	var ms []string
	for _, e := range es {
		ms = append(ms, e.Level.String()+": "+e.Message)
	}
	return ms
}

// setLimits sets the transport's bounds (before it accepted anything).
func (t *guardedTransport) setLimits(maxOpen, maxPerIP int, firstByte time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.maxOpen, t.maxPerIP, t.firstByte = maxOpen, maxPerIP, firstByte
}

// dialFrom connects to addr from the local IP from.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dropped(n *testNode, r dropReason) int64 { return n.GossipStats().Dropped[r.String()] }

// Idle connections to the gossip port hold at most maxPerIP slots from one address and
// maxOpen in all, whatever their number; past the bound, a new one takes the oldest silent
// one's slot. Connections that send a byte and stall are memberlist's until its TCPTimeout;
// with every slot so held, a new one is refused. A member joins through a flood of idle
// connections: its stream takes a silent one's slot.
func TestGossipStreamsBounded(t *testing.T) {
	t.Parallel()
	slowTCP := func(c *Config) {
		c.tuneMemberlist = func(mc *memberlist.Config) { fastMemberlist(mc); mc.TCPTimeout = time.Minute }
	}
	a := startNode(t, "127.0.121.1", "a", nil, slowTCP) // alone: no member's streams
	const maxOpen, maxPerIP = 8, 4
	tr := a.membership.transport
	tr.setLimits(maxOpen, maxPerIP, time.Minute)
	open := func() (open, silent int) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return tr.open, tr.silent.Len()
	}
	wantOpen := func(what string, wantOpen, wantSilent int, limit, idle int64) {
		t.Helper()
		eventually(t, 10*time.Second, what, func() bool {
			o, s := open()
			return o == wantOpen && s == wantSilent && dropped(a, dropStreamLimit) == limit && dropped(a, dropStreamIdle) == idle
		})
	}

	// One address: maxPerIP held, the rest closed at once.
	for range 10 {
		dialFrom(t, "127.0.121.101", a.gossipAddr)
	}
	wantOpen("4 silent streams held, 6 refused", maxPerIP, maxPerIP, 6, 0)

	// Five more addresses, 4 each: maxOpen held, the oldest silent ones replaced.
	for i := range 5 {
		for range 4 {
			dialFrom(t, fmt.Sprintf("127.0.121.%d", 110+i), a.gossipAddr)
		}
	}
	wantOpen("8 silent streams held, 16 replaced", maxOpen, maxOpen, 6, 16)

	// Streams that send their first byte (a label header's) and stall are memberlist's: they
	// replace the silent ones, and once they hold every slot the next stream is refused.
	var stalled []net.Conn
	for i := range maxOpen {
		c := dialFrom(t, fmt.Sprintf("127.0.121.%d", 120+i%4), a.gossipAddr)
		if _, err := c.Write([]byte{244}); err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
	}
	wantOpen("8 stalled streams held", maxOpen, 0, 6, 24)
	late := dialFrom(t, "127.0.121.200", a.gossipAddr)
	wantOpen("the next stream refused", maxOpen, 0, 7, 24)
	_ = late.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := late.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("the refused stream read %v, want it closed", err)
	}
	for _, c := range stalled {
		c.Close()
	}
	wantOpen("the stalled streams' slots freed", 0, 0, 7, 24)

	// A member joins through a flood of idle connections.
	for i := range maxOpen {
		dialFrom(t, fmt.Sprintf("127.0.121.%d", 130+i%2), a.gossipAddr)
	}
	wantOpen("8 silent streams held", maxOpen, maxOpen, 7, 24)
	b := startNode(t, "127.0.121.2", "b", []string{a.gossipAddr})
	eventually(t, 10*time.Second, "a and b alive on both", allAlive(a, b))
	if o, _ := open(); o > maxOpen {
		t.Fatalf("%d streams open, bound %d", o, maxOpen)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

// A connection that sends nothing is closed after the first-byte timeout and its slot freed;
// Close does not wait for silent connections.
func TestSilentGossipStreamTimesOut(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.122.1", "a", nil)
	a.membership.transport.setLimits(maxGossipStreams, maxGossipStreamsPerIP, 300*time.Millisecond)
	conns := make([]net.Conn, 3)
	for i := range conns {
		conns[i] = dialFrom(t, "127.0.122.101", a.gossipAddr)
	}
	eventually(t, 10*time.Second, "three silent streams closed", func() bool {
		return dropped(a, dropStreamIdle) == 3 && a.GossipStats().Streams == 0
	})
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
			t.Errorf("a silent stream read %v, want it closed", err)
		}
	}

	a.membership.transport.setLimits(maxGossipStreams, maxGossipStreamsPerIP, time.Hour)
	dialFrom(t, "127.0.122.101", a.gossipAddr)
	eventually(t, 10*time.Second, "a silent stream open", func() bool { return a.GossipStats().Streams == 1 })
	done := make(chan error, 1)
	go func() { done <- a.Close() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waits for a silent stream")
	}
}

func TestPeerAddrOK(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		peer string
		ip   string
		ok   bool
	}{
		{"10.0.0.5:5102", "10.0.0.5", true},
		{"10.0.0.6:5102", "10.0.0.5", false},
		{"[fd00::1]:5102", "fd00::1", true},
		{"[fd00::2]:5102", "fd00::1", false},
		{"[::ffff:10.0.0.5]:5102", "10.0.0.5", true},
		{"peer.example:5102", "10.0.0.5", false},
		{"10.0.0.5", "10.0.0.5", false},
	} {
		t.Run(tc.peer+" on "+tc.ip, func(t *testing.T) {
			if got := peerAddrOK(tc.peer, net.ParseIP(tc.ip)); got != tc.ok {
				t.Errorf("peerAddrOK(%q, %s) = %v, want %v", tc.peer, tc.ip, got, tc.ok)
			}
		})
	}
}

// A member (with the key) that advertises a peer address not on its own address is not used
// for peer traffic: it is no home, nobody sends it announces or lookups, and its own
// announces are refused. Each node counts it once.
func TestMemberWithForeignPeerAddressIgnored(t *testing.T) {
	t.Parallel()
	var sent atomic.Int64
	elsewhere := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		sent.Add(1)
		http.Error(w, "not a lifeboat", http.StatusTeapot)
	}))
	ln, err := net.Listen("tcp", "127.0.123.99:0")
	if err != nil {
		t.Fatal(err)
	}
	elsewhere.Listener.Close()
	elsewhere.Listener = ln
	elsewhere.Start()
	t.Cleanup(elsewhere.Close)

	a := startNode(t, "127.0.123.1", "a", nil)
	b := startNode(t, "127.0.123.2", "b", []string{a.gossipAddr})
	x := startNode(t, "127.0.123.3", "x", []string{a.gossipAddr})
	md := x.membership.meta
	md.Peer = ln.Addr().String()
	if err := x.membership.setMeta(md); err != nil {
		t.Fatal(err)
	}
	if err := x.membership.ml.UpdateNode(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b} {
		eventually(t, 10*time.Second, n.Name()+" ignores x", func() bool { return n.GossipStats().IgnoredMembers == 1 })
		if _, ok := n.Member("x"); ok {
			t.Errorf("%s returns x as a member", n.Name())
		}
		if got := states(n); got != "a=alive b=alive x=alive" {
			t.Errorf("%s lists %s; want x alive in gossip", n.Name(), got)
		}
	}

	const count = 200
	recs := make([]Record, count)
	for i := range recs {
		recs[i] = Record{Key: key(i)}
		if hs := a.Homes(recs[i].Key); slices.ContainsFunc(hs, func(m Member) bool { return m.Name == "x" }) {
			t.Fatalf("x is a home of %s", recs[i].Key)
		}
	}
	a.Announce(recs...)
	// Replicas 2 among a and b: b is a home of every key.
	eventually(t, 20*time.Second, "b indexes every record of a", func() bool { return b.Stats().ReceivedRecords == count })
	for i := range 20 {
		if _, err := b.Lookup(t.Context(), key(i)); err != nil {
			t.Fatal(err)
		}
	}
	// x announces a key it claims to hold: the homes refuse it.
	kx := key(count + 1)
	body, err := json.Marshal(announceRequest{Records: []Record{{Key: kx}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b} {
		resp, err := x.Client().Post("https://"+n.srv.Listener.Addr().String()+PathAnnounce, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s answered x's announce %s, want 403", n.Name(), resp.Status)
		}
		if hs := n.index.Get(kx, time.Now()); len(hs) != 0 {
			t.Errorf("%s indexes x's record: %v", n.Name(), hs)
		}
	}
	if n := sent.Load(); n != 0 {
		t.Errorf("%d requests went to the address x advertised", n)
	}
	// An update with the same metadata is not counted again.
	if err := x.membership.ml.UpdateNode(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := a.GossipStats().IgnoredMembers; got != 1 {
		t.Errorf("a counted x %d times", got)
	}
}

// The by-hand recipe: b and c join a; a restarts under its name and address and joins nobody
// (its join list is itself). b and c join it again, and every node lists every other alive.
func TestRestartedSeedIsJoinedAgain(t *testing.T) {
	t.Parallel()
	port := freePort(t, "127.0.124.1")
	seed := net.JoinHostPort("127.0.124.1", strconv.Itoa(port))
	a := startNodeAt(t, seed, "127.0.124.1:0", "a", []string{seed})
	b := startNode(t, "127.0.124.2", "b", []string{seed})
	c := startNode(t, "127.0.124.3", "c", []string{seed})
	eventually(t, 10*time.Second, "three alive on each node", allAlive(a, b, c))

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a.srv.Close()
	eventually(t, 10*time.Second, "b and c see a left", func() bool {
		return strings.Contains(states(b), "a=left") && strings.Contains(states(c), "a=left")
	})
	a = startNodeAt(t, seed, "127.0.124.1:0", "a", []string{seed})
	eventually(t, 20*time.Second, "a, b and c alive on each node again", allAlive(a, b, c))
}
