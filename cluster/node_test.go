package cluster

import (
	"context"
	"fmt"
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
	"github.com/opencontainers/go-digest"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// fastMemberlist shortens memberlist's timings so that a death is noticed within a few
// seconds, with room for a slow, shared test machine (a member suspected for 1 to 2 s).
func fastMemberlist(mc *memberlist.Config) {
	mc.ProbeInterval = 250 * time.Millisecond
	mc.ProbeTimeout = 200 * time.Millisecond
	mc.SuspicionMult = 4
	mc.SuspicionMaxTimeoutMult = 2
	mc.GossipInterval = 50 * time.Millisecond
	mc.PushPullInterval = 2 * time.Second
	mc.TCPTimeout = 2 * time.Second
	mc.GossipToTheDeadTime = 2 * time.Second
}

// testNode is a Node on its own loopback address with its peer listener: an httptest server
// that serves Node.Handler on Node.Listener, behind Node.Authenticate, as the daemon's peer
// listener does.
type testNode struct {
	*Node
	// gossipAddr is the address the others gossip with this node at.
	gossipAddr string
	// index is the node's index of the keys it is a home of.
	index *Index
	srv   *httptest.Server
	// hangLookups, when set, makes the peer listener hold every lookup until the test ends.
	hangLookups atomic.Bool
	hung        atomic.Int64
	// local is what Config.Local yields.
	local atomic.Pointer[[]Record]
}

type nodeOption func(*Config)

// startNode starts node name on ip (127.0.0.x), joining join.
func startNode(t *testing.T, ip, name string, join []string, opts ...nodeOption) *testNode {
	t.Helper()
	return startNodeAt(t, net.JoinHostPort(ip, "0"), net.JoinHostPort(ip, "0"), name, join, opts...)
}

// startNodeAt starts node name with its gossip and its peer listener on the addresses given.
func startNodeAt(t *testing.T, gossip, peer, name string, join []string, opts ...nodeOption) *testNode {
	t.Helper()
	ln, err := net.Listen("tcp", peer)
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{}
	tn.local.Store(&[]Record{})
	var ready atomic.Pointer[Node]
	tn.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := ready.Load()
		if n == nil {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		from, err := n.Authenticate(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if req.URL.Path == PathLookup && tn.hangLookups.Load() {
			tn.hung.Add(1)
			<-t.Context().Done()
			return
		}
		n.Handler().ServeHTTP(w, req.WithContext(WithPeer(req.Context(), from)))
	}))
	tn.srv.Listener.Close()

	cfg := Config{
		NodeName:         name,
		GossipAddress:    gossip,
		PeerPort:         ln.Addr().(*net.TCPAddr).Port,
		Join:             join,
		RejoinInterval:   200 * time.Millisecond,
		Secret:           testSecret,
		Replicas:         2,
		AnnounceInterval: 20 * time.Millisecond,
		RefreshInterval:  time.Hour,
		LookupTimeout:    10 * time.Second,
		Local: func(ctx context.Context, yield func(Record) bool) error {
			for _, r := range *tn.local.Load() {
				if !yield(r) {
					break
				}
			}
			return nil
		},
		rehomeDelay:    100 * time.Millisecond,
		tuneMemberlist: fastMemberlist,
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	tn.Node = n
	tn.gossipAddr = n.membership.gossipAddr
	tn.index = n.home.index
	tn.srv.Listener = n.Listener(ln)
	tn.srv.Start()
	t.Cleanup(tn.srv.Close)
	ready.Store(n)
	return tn
}

// kill stops n as SIGKILL would: no leave message, its gossip and peer listener gone at once.
func (n *testNode) kill() {
	n.closeOnce.Do(func() {
		n.cancel()
		_ = n.membership.ml.Shutdown()
		n.wg.Wait()
	})
	n.srv.CloseClientConnections()
	n.srv.Close()
}

// eventually polls cond until it holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// states is n's members as "name=state", sorted by name.
func states(n *testNode) string {
	var s []string
	for _, m := range n.Members() {
		s = append(s, m.Name+"="+string(m.State))
	}
	return strings.Join(s, " ")
}

func allAlive(nodes ...*testNode) func() bool {
	return func() bool {
		for _, n := range nodes {
			alive := 0
			for _, m := range n.Members() {
				if m.State == Alive {
					alive++
				}
			}
			if alive != len(nodes) {
				return false
			}
		}
		return true
	}
}

func key(i int) string { return BlobKey(digest.FromString(strconv.Itoa(i))) }

// keyWhere returns the first key for which ok holds of its homes as n sees them.
func keyWhere(t *testing.T, n *testNode, ok func(key string, homes []string) bool) string {
	t.Helper()
	for i := range 10_000 {
		k := key(i)
		var hs []string
		for _, h := range n.Homes(k) {
			hs = append(hs, h.Name)
		}
		if ok(k, hs) {
			return k
		}
	}
	t.Fatal("no key has such homes")
	return ""
}

// Three nodes find each other; what A announces, C finds through the key's homes (test 1's
// routing half).
func TestJoinAnnounceLookup(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.1.1", "a", nil)
	b := startNode(t, "127.0.1.2", "b", []string{a.gossipAddr})
	c := startNode(t, "127.0.1.3", "c", []string{a.gossipAddr, b.gossipAddr})
	eventually(t, 10*time.Second, "three members alive on each node", allAlive(a, b, c))
	for _, n := range []*testNode{a, b, c} {
		for _, m := range n.Members() {
			if want := n.Name() == m.Name; m.Self != want || m.PeerAddr == "" {
				t.Errorf("%s sees %+v", n.Name(), m)
			}
		}
	}

	// A key whose homes are A and B only, so that C must ask over HTTP.
	k := keyWhere(t, c, func(_ string, hs []string) bool { return !slices.Contains(hs, "c") })
	a.Announce(Record{Key: k})
	eventually(t, 10*time.Second, "c finds a as the holder", func() bool {
		hs, err := c.Lookup(t.Context(), k)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Equal(holderNames(hs), []string{"a"})
	})
	// A never finds itself.
	if hs, err := a.Lookup(t.Context(), k); err != nil || len(hs) != 0 {
		t.Errorf("a's own lookup: %v, %v; want nothing", hs, err)
	}
	if s := c.Stats(); s.LookupsFound == 0 || s.Members[Alive] == 0 {
		t.Errorf("c's stats: %+v", s)
	}
	if s := a.Stats(); s.AnnouncedRecords == 0 || s.LookupsNotFound != 1 {
		t.Errorf("a's stats: %+v", s)
	}
}

// A home killed without a word: the others declare it dead, drop its records at once, and
// move its keys to new homes, which the holders tell (test 5's first half).
func TestDeadHomeMovesKeys(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.2.1", "a", nil)
	b := startNode(t, "127.0.2.2", "b", []string{a.gossipAddr})
	c := startNode(t, "127.0.2.3", "c", []string{a.gossipAddr})
	d := startNode(t, "127.0.2.4", "d", []string{a.gossipAddr})
	nodes := []*testNode{a, b, c, d}
	eventually(t, 10*time.Second, "four members alive on each node", allAlive(nodes...))

	// kd is held by d and homed at a and b; ka held by a, homed at d and one other node.
	kd := keyWhere(t, a, func(_ string, hs []string) bool {
		return slices.Equal(hs, []string{"a", "b"}) || slices.Equal(hs, []string{"b", "a"})
	})
	ka := keyWhere(t, a, func(k string, hs []string) bool {
		return slices.Contains(hs, "d") && !slices.Contains(hs, "a") && !slices.Contains(Rendezvous(k, []string{"a", "b", "c"}, 2), "a")
	})
	d.Announce(Record{Key: kd})
	a.local.Store(&[]Record{{Key: ka}})
	a.Announce(Record{Key: ka})
	eventually(t, 10*time.Second, "a and b index d's record", func() bool {
		return slices.Equal(holderNames(a.index.Get(kd, time.Now())), []string{"d"}) &&
			slices.Equal(holderNames(b.index.Get(kd, time.Now())), []string{"d"})
	})
	oldHomes := a.Homes(ka)
	eventually(t, 10*time.Second, "ka's homes index a's record", func() bool {
		for _, h := range oldHomes {
			if !slices.Equal(holderNames(nodes[h.Name[0]-'a'].index.Get(ka, time.Now())), []string{"a"}) {
				return false
			}
		}
		return true
	})

	d.kill()
	for _, n := range []*testNode{a, b, c} {
		eventually(t, 20*time.Second, n.Name()+" declares d dead", func() bool {
			return strings.Contains(states(n), "d=dead")
		})
	}
	// d's records went with it.
	for _, n := range []*testNode{a, b} {
		if hs := n.index.Get(kd, time.Now()); len(hs) != 0 {
			t.Errorf("%s still indexes %v for d's key", n.Name(), hs)
		}
	}
	// ka's new home (b or c, whichever replaced d) learns a's record without a refresh.
	var newHome string
	for _, h := range a.Homes(ka) {
		if !slices.ContainsFunc(oldHomes, func(m Member) bool { return m.Name == h.Name }) {
			newHome = h.Name
		}
	}
	if newHome == "" || newHome == "d" || newHome == "a" {
		t.Fatalf("ka's homes went from %v to %v", oldHomes, a.Homes(ka))
	}
	eventually(t, 10*time.Second, "ka's new home "+newHome+" indexes a's record", func() bool {
		return slices.Equal(holderNames(nodes[newHome[0]-'a'].index.Get(ka, time.Now())), []string{"a"})
	})
	hs, err := c.Lookup(t.Context(), ka)
	if err != nil || !slices.Equal(holderNames(hs), []string{"a"}) {
		t.Errorf("c's lookup of ka after d died: %v, %v", hs, err)
	}
}

// A home that restarts at once, under its name and on its addresses, has lost the index it
// homed; the others tell it again, though they may never have seen it die.
func TestRestartedHomeIsToldAgain(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.8.1", "a", nil)
	b := startNode(t, "127.0.8.2", "b", []string{a.gossipAddr})
	d := startNode(t, "127.0.8.4", "d", []string{a.gossipAddr})
	eventually(t, 10*time.Second, "three members alive on each node", allAlive(a, b, d))
	ka := keyWhere(t, a, func(_ string, hs []string) bool { return slices.Contains(hs, "d") && !slices.Contains(hs, "a") })
	a.local.Store(&[]Record{{Key: ka}})
	a.Announce(Record{Key: ka})
	eventually(t, 10*time.Second, "d indexes a's record", func() bool {
		return slices.Equal(holderNames(d.index.Get(ka, time.Now())), []string{"a"})
	})

	gossip, peer := d.gossipAddr, d.srv.Listener.Addr().String()
	d.kill()
	d = startNodeAt(t, gossip, peer, "d", []string{a.gossipAddr})
	eventually(t, 20*time.Second, "the new d indexes a's record", func() bool {
		return slices.Equal(holderNames(d.index.Get(ka, time.Now())), []string{"a"})
	})
}

// A home that hangs does not hold a lookup up: the next home is asked after HedgeDelay and
// answers (test 5's SIGSTOP half, at the index).
func TestLookupHedgesPastHungHome(t *testing.T) {
	t.Parallel()
	const timeout = 10 * time.Second
	opt := func(c *Config) { c.Replicas = 3; c.LookupTimeout = timeout }
	a := startNode(t, "127.0.3.1", "a", nil, opt)
	b := startNode(t, "127.0.3.2", "b", []string{a.gossipAddr}, opt)
	c := startNode(t, "127.0.3.3", "c", []string{a.gossipAddr}, opt)
	r := startNode(t, "127.0.3.4", "r", []string{a.gossipAddr}, opt)
	nodes := map[string]*testNode{"a": a, "b": b, "c": c}
	eventually(t, 10*time.Second, "four members alive on each node", allAlive(a, b, c, r))

	// A key that r does not home, whose first home hangs; its holder is another home.
	k := keyWhere(t, r, func(_ string, hs []string) bool { return !slices.Contains(hs, "r") })
	homes := r.Homes(k)
	hung, holder := nodes[homes[0].Name], nodes[homes[1].Name]
	holder.Announce(Record{Key: k})
	eventually(t, 10*time.Second, "the homes index the record", func() bool {
		for _, h := range homes {
			if len(nodes[h.Name].index.Get(k, time.Now())) != 1 {
				return false
			}
		}
		return true
	})
	hung.hangLookups.Store(true)

	for range 5 {
		start := time.Now()
		hs, err := r.Lookup(t.Context(), k)
		if err != nil || !slices.Equal(holderNames(hs), []string{holder.Name()}) {
			t.Fatalf("lookup past a hung home: %v, %v", hs, err)
		}
		if d := time.Since(start); d > timeout/4 {
			t.Errorf("lookup took %v, LookupTimeout is %v", d, timeout)
		}
	}
	// The hung home was asked: the lookups hedged past it (a request the lookup cancelled
	// before it reached the handler is not counted).
	if hung.hung.Load() == 0 {
		t.Error("the hung home was never asked")
	}
	if s := r.Stats(); s.LookupsFound != 5 || s.LookupsFailed != 0 {
		t.Errorf("stats: %+v", s)
	}
}

// Every home hanging: the lookup fails at LookupTimeout.
func TestLookupTimesOut(t *testing.T) {
	t.Parallel()
	var observed atomic.Int64
	opt := func(c *Config) {
		c.LookupTimeout = 300 * time.Millisecond
		c.ObserveLookup = func(d time.Duration, found bool, err error) { observed.Add(1) }
	}
	a := startNode(t, "127.0.4.1", "a", nil, opt)
	b := startNode(t, "127.0.4.2", "b", []string{a.gossipAddr}, opt)
	r := startNode(t, "127.0.4.3", "r", []string{a.gossipAddr}, opt)
	eventually(t, 10*time.Second, "three members alive on each node", allAlive(a, b, r))
	a.hangLookups.Store(true)
	b.hangLookups.Store(true)
	k := keyWhere(t, r, func(_ string, hs []string) bool { return !slices.Contains(hs, "r") })
	hs, err := r.Lookup(t.Context(), k)
	if err == nil || len(hs) != 0 {
		t.Fatalf("lookup with every home hung: %v, %v; want an error", hs, err)
	}
	if s := r.Stats(); s.LookupsFailed != 1 || observed.Load() != 1 {
		t.Errorf("stats %+v, observed %d", s, observed.Load())
	}
}

// A node with another cluster key cannot join: the others never list it (test 6's first
// half), while a node with the right key joins the same way.
func TestWrongSecretCannotJoin(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.5.1", "a", nil)
	wrong := []byte("fedcba9876543210fedcba9876543210")
	w := startNode(t, "127.0.5.9", "w", []string{a.gossipAddr}, func(c *Config) { c.Secret = wrong })
	eventually(t, 10*time.Second, "w tried to join a few times", func() bool { return w.membership.joinAttempts.Load() >= 3 })
	b := startNode(t, "127.0.5.2", "b", []string{a.gossipAddr})
	eventually(t, 10*time.Second, "a and b alive on both", allAlive(a, b))
	for _, n := range []*testNode{a, b} {
		if _, ok := n.Member("w"); ok || strings.Contains(states(n), "w=") {
			t.Errorf("%s lists w: %s", n.Name(), states(n))
		}
	}
	if got := states(w); got != "w=alive" {
		t.Errorf("w sees %s; want itself alone", got)
	}
}

// What an announce request can make a home do is bounded, and only members may announce.
func TestHandlerBounds(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.6.1", "a", nil)
	b := startNode(t, "127.0.6.2", "b", []string{a.gossipAddr})
	eventually(t, 10*time.Second, "a and b alive on both", allAlive(a, b))

	many := make([]string, maxAnnounceRecords+1)
	for i := range many {
		many[i] = `{"k":"` + key(i) + `"}`
	}
	x := key(-1)
	one := `{"records":[{"k":"` + x + `"}]}`
	for _, tc := range []struct {
		name, from, body string
		want             int
	}{
		{name: "member", from: "b", body: one, want: http.StatusNoContent},
		{name: "stranger", from: "z", body: one, want: http.StatusForbidden},
		{name: "itself", from: "a", body: one, want: http.StatusForbidden},
		{name: "too many records", from: "b", body: `{"records":[` + strings.Join(many, ",") + `]}`, want: http.StatusRequestEntityTooLarge},
		{name: "too big", from: "b", body: `{"records":[{"k":"` + strings.Repeat("x", maxAnnounceBody) + `"}]}`, want: http.StatusRequestEntityTooLarge},
		{name: "long key", from: "b", body: `{"records":[{"k":"` + strings.Repeat("x", maxKeyLen+1) + `"}]}`, want: http.StatusBadRequest},
		{name: "bad digest", from: "b", body: `{"records":[{"k":"x","d":"sha256:nope"}]}`, want: http.StatusBadRequest},
		{name: "not JSON", from: "b", body: `records`, want: http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequestWithContext(WithPeer(t.Context(), tc.from), http.MethodPost, PathAnnounce, strings.NewReader(tc.body))
			rec := httptest.NewRecorder()
			a.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("status %d, want %d: %s", rec.Code, tc.want, rec.Body)
			}
		})
	}
	if hs := a.index.Get(x, time.Now()); !slices.Equal(holderNames(hs), []string{"b"}) {
		t.Errorf("index holds %v for x; want b only", hs)
	}
	for _, target := range []string{PathLookup + "?key=" + x, PathLookup} {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		want := http.StatusOK
		if !strings.Contains(target, "key=") {
			want = http.StatusBadRequest
		}
		if rec.Code != want || (want == http.StatusOK && !strings.Contains(rec.Body.String(), `"n":"b"`)) {
			t.Errorf("GET %s: %d %s", target, rec.Code, rec.Body)
		}
	}
	req := httptest.NewRequest(http.MethodPost, PathLookup, strings.NewReader(fmt.Sprintf(`{"key":%q}`, x)))
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"n":"b"`) {
		t.Errorf("POST lookup: %d %s", rec.Code, rec.Body)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	t.Parallel()
	good := Config{NodeName: "n", GossipAddress: "127.0.7.1:0", PeerPort: 5102, Secret: testSecret}
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{name: "no name", edit: func(c *Config) { c.NodeName = "" }},
		{name: "no secret", edit: func(c *Config) { c.Secret = nil }},
		{name: "gossip without port", edit: func(c *Config) { c.GossipAddress = "127.0.7.1" }},
		{name: "all addresses, no advertise", edit: func(c *Config) { c.GossipAddress = "0.0.0.0:0" }},
		{name: "no peer port", edit: func(c *Config) { c.PeerPort = 0 }},
		{name: "join without port", edit: func(c *Config) { c.Join = []string{"lifeboat-peers"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			if n, err := Start(t.Context(), cfg); err == nil {
				_ = n.Close()
				t.Fatal("started")
			}
		})
	}
	// Another process's port cannot be bound.
	ln, err := net.ListenPacket("udp", "127.0.7.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := good
	cfg.GossipAddress = ln.LocalAddr().String()
	if n, err := Start(t.Context(), cfg); err == nil {
		_ = n.Close()
		t.Fatal("started on a port in use")
	}
	// Nobody to join is not an error.
	cfg = good
	cfg.Join = []string{"127.0.7.2:1"}
	n, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Error(err)
	}
	if err := n.Close(); err != nil {
		t.Error("second close:", err)
	}
}

// freePort returns a port free for both TCP and UDP on ip, as memberlist needs.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	for range 20 {
		tcp, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := tcp.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		tcp.Close()
		if err == nil {
			udp.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// A node whose join address does not answer yet starts anyway, and joins once it does; the
// address is a DNS name, resolved at every attempt. Close tells the others it left.
func TestJoinRetriesUntilSomeoneAnswers(t *testing.T) {
	t.Parallel()
	port := freePort(t, "127.0.0.1")
	b := startNode(t, "127.0.9.2", "b", []string{"localhost:" + strconv.Itoa(port)})
	eventually(t, 10*time.Second, "b tried to join twice", func() bool { return b.membership.joinAttempts.Load() >= 2 })
	if got := states(b); got != "b=alive" {
		t.Fatalf("b sees %s before anyone answered", got)
	}
	a := startNodeAt(t, "127.0.0.1:"+strconv.Itoa(port), "127.0.0.1:0", "a", nil)
	eventually(t, 10*time.Second, "a and b alive on both", allAlive(a, b))

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b sees a left", func() bool { return states(b) == "a=left b=alive" })
}

// More records than one request carries go in several; a record a home would refuse does not
// spoil its batch.
func TestAnnounceManyRecords(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.10.1", "a", nil)
	b := startNode(t, "127.0.10.2", "b", []string{a.gossipAddr})
	eventually(t, 10*time.Second, "a and b alive on both", allAlive(a, b))
	const count = 2*maxAnnounceRecords + 500
	recs := make([]Record, count)
	for i := range recs {
		recs[i] = Record{Key: key(i)}
	}
	recs = append(recs, Record{Key: strings.Repeat("x", maxKeyLen+1)})
	a.Announce(recs...)
	eventually(t, 20*time.Second, "b indexes every record of a", func() bool { return b.Stats().ReceivedRecords == count })
	if keys, _, _ := b.index.Size(); keys != count {
		t.Errorf("b's index holds %d keys, want %d", keys, count)
	}
	eventually(t, 10*time.Second, "a counts every record sent to both homes", func() bool {
		s := a.Stats()
		return s.AnnouncedRecords == 2*count && s.AnnounceDropped == 0
	})
}
