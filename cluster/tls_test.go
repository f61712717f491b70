package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

var otherSecret = []byte("fedcba9876543210fedcba9876543210")

func authority(t *testing.T, secret []byte) *Authority {
	t.Helper()
	ca, err := NewAuthority(secret)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *Authority, node string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	c, err := ca.Issue(node, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Every node derives the same authority from the same key, and another from another key.
func TestAuthorityIsTheKeys(t *testing.T) {
	t.Parallel()
	a, b := authority(t, testSecret), authority(t, bytes.Clone(testSecret))
	if !bytes.Equal(a.Certificate().Raw, b.Certificate().Raw) {
		t.Fatal("two authorities of one key differ: nodes would not trust each other")
	}
	if other := authority(t, otherSecret); bytes.Equal(other.Certificate().Raw, a.Certificate().Raw) ||
		bytes.Equal(other.Certificate().PublicKey.(ed25519.PublicKey), a.Certificate().PublicKey.(ed25519.PublicKey)) {
		t.Fatal("the authorities of two keys are the same")
	}
	if !a.Certificate().IsCA || a.Certificate().CheckSignatureFrom(a.Certificate()) != nil {
		t.Fatal("the authority's certificate is not a self-signed CA")
	}
	if _, err := NewAuthority(nil); err == nil {
		t.Fatal("an authority without a key")
	}
}

func TestAuthorityCheck(t *testing.T) {
	t.Parallel()
	ca, other := authority(t, testSecret), authority(t, otherSecret)
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	valid := func(c *Authority, node string) tls.Certificate {
		return issue(t, c, node, now.Add(-CertificateBackdate), now.Add(CertificateLifetime))
	}
	for _, tc := range []struct {
		name   string
		certs  []*x509.Certificate
		node   string // accepted as
		reason string // refused for
		says   string
	}{
		{name: "valid", certs: []*x509.Certificate{valid(ca, "node-a").Leaf}, node: "node-a"},
		{name: "a name with commas and signs", certs: []*x509.Certificate{valid(ca, "a,b=c_d@e*f").Leaf}, node: "a,b=c_d@e*f"},
		{name: "a long name", certs: []*x509.Certificate{valid(ca, strings.Repeat("n", 128)).Leaf}, node: strings.Repeat("n", 128)},
		{name: "at its first second", certs: []*x509.Certificate{issue(t, ca, "a", now, now.Add(time.Hour)).Leaf}, node: "a"},
		{name: "at its last second", certs: []*x509.Certificate{issue(t, ca, "a", now.Add(-time.Hour), now).Leaf}, node: "a"},
		{name: "none", reason: ReasonNoCertificate},
		{name: "another key's", certs: []*x509.Certificate{valid(other, "node-a").Leaf}, reason: ReasonUnknownAuthority, says: "another cluster key"},
		{name: "not valid yet", certs: []*x509.Certificate{issue(t, ca, "node-a", now.Add(time.Second), now.Add(time.Hour)).Leaf},
			reason: ReasonNotYetValid, says: "node node-a's certificate is not valid yet"},
		{name: "expired", certs: []*x509.Certificate{issue(t, ca, "node-a", now.Add(-2*time.Hour), now.Add(-time.Second)).Leaf},
			reason: ReasonExpired, says: "node node-a's certificate expired"},
		{name: "the CA's own", certs: []*x509.Certificate{ca.Certificate()}, reason: ReasonBadCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			node, err := ca.check(tc.certs, now)
			if tc.reason == "" {
				if err != nil || node != tc.node {
					t.Fatalf("check = %q, %v; want %q", node, err, tc.node)
				}
				return
			}
			if got := failureReason(err); got != tc.reason || node != "" {
				t.Fatalf("check = %q, %v (reason %s); want refused for %s", node, err, got, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("%q does not say %q", err, tc.says)
			}
		})
	}
	if _, err := ca.Issue("a b", now, now.Add(time.Hour)); err == nil {
		t.Error("issued a certificate for an invalid node name")
	}
}

// A node's certificate is valid from CertificateBackdate before its issue; the same one serves
// until it is renewAge old, or until the clock goes back before its issue.
func TestIdentityRenews(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	clock := now
	id, err := newIdentity(authority(t, testSecret), "a", func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	first, _ := id.certificate()
	if !first.Leaf.NotBefore.Equal(now.Add(-CertificateBackdate)) || !first.Leaf.NotAfter.Equal(now.Add(CertificateLifetime)) ||
		first.Leaf.Subject.CommonName != "a" {
		t.Fatalf("certificate of %q valid %s to %s", first.Leaf.Subject.CommonName, first.Leaf.NotBefore, first.Leaf.NotAfter)
	}
	for _, step := range []struct {
		at    time.Duration
		fresh bool
	}{
		{time.Minute, false},
		{renewAge - time.Second, false},
		{renewAge, true},
		{renewAge + time.Minute, false},
		{renewAge - time.Hour, true}, // the clock went back before the last issue
	} {
		clock = now.Add(step.at)
		before := id.cert
		got, err := id.certificate()
		if err != nil {
			t.Fatal(err)
		}
		if (got != before) != step.fresh {
			t.Fatalf("at +%s: renewed = %t, want %t", step.at, got != before, step.fresh)
		}
		if _, err := id.ca.check([]*x509.Certificate{got.Leaf}, clock); err != nil {
			t.Fatalf("at +%s: own certificate refused: %v", step.at, err)
		}
	}
}

// tlsPeer is one node's side of the peer transport, without memberlist: its client, and its
// Listener on a loopback port serving a handler that answers with the node Authenticate names.
type tlsPeer struct {
	*Node
	addr string
	logs *logtest.Hook
	// requests counts the requests that reached the handler.
	requests atomic.Int64
}

// newTLSPeer starts node name with secret and clock; its client takes members for the members
// of the cluster (nil: none).
func newTLSPeer(t *testing.T, name string, secret []byte, clock func() time.Time, members func() []Member) *tlsPeer {
	t.Helper()
	logger, logs := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	p := &tlsPeer{logs: logs}
	p.Node = &Node{cfg: Config{NodeName: name, Secret: secret, clock: clock}, log: logrus.NewEntry(logger)}
	if members == nil {
		members = func() []Member { return nil }
	}
	if err := p.startTLS(members); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.transport.CloseIdleConnections)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		node, err := p.Authenticate(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		io.WriteString(w, node)
	})}
	go srv.Serve(p.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return p
}

// logged is the messages of the entries h saw, a line each.
func logged(h *logtest.Hook) string {
	var b strings.Builder
	for _, e := range h.AllEntries() {
		b.WriteString(e.Message + "\n")
	}
	return b.String()
}

// member is p as a member of the cluster.
func (p *tlsPeer) member() Member { return Member{Name: p.Name(), PeerAddr: p.addr, State: Alive} }

// failures is how many handshakes of direction failed for reason on p.
func (p *tlsPeer) failures(direction, reason string) int64 {
	for _, f := range p.tls.failures.stats() {
		if f.Direction == direction && f.Reason == reason {
			return f.Count
		}
	}
	return -1
}

// only checks that the handshakes failed on p are want ("in/not_tls" → count), and no others.
func (p *tlsPeer) only(t *testing.T, want map[string]int64) {
	t.Helper()
	for _, f := range p.tls.failures.stats() {
		if got := want[f.Direction+"/"+f.Reason]; f.Count != got {
			t.Errorf("%s counts %d failures %s/%s, want %d", p.Name(), f.Count, f.Direction, f.Reason, got)
		}
	}
}

// get sends GET / to p with c, setting HeaderPeer to claim unless it is empty; it returns the
// answer's status and body, or the error.
func get(t *testing.T, c *http.Client, p *tlsPeer, claim string) (int, string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+p.addr+"/", nil)
	if claim != "" {
		req.Header.Set(HeaderPeer, claim)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// rawClient is a TLS client that is no node: it presents certs, trusts any server.
func rawClient(t *testing.T, certs ...tls.Certificate) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: certs, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// Who gets through the peer listener, and what each refusal counts and logs.
func TestPeerListener(t *testing.T) {
	t.Parallel()
	b := newTLSPeer(t, "b", testSecret, time.Now, nil)
	a := newTLSPeer(t, "a", testSecret, time.Now, func() []Member { return []Member{b.member()} })
	ca, other := authority(t, testSecret), authority(t, otherSecret)
	now := time.Now()
	validA := issue(t, ca, "a", now.Add(-time.Hour), now.Add(time.Hour))

	// A node of the cluster gets through, as the name of its certificate.
	if code, body, err := get(t, a.Client(), b, ""); err != nil || code != http.StatusOK || body != "a" {
		t.Fatalf("a's request: %d %q %v; want 200 from a", code, body, err)
	}
	a.only(t, nil)
	b.only(t, nil)

	for _, tc := range []struct {
		name   string
		client *http.Client
		claim  string
		// status is the answer when the handshake succeeds (the handler ran).
		status int
		reason string
		says   string
	}{
		{name: "a's certificate claiming a", client: rawClient(t, validA), claim: "a", status: http.StatusOK},
		{name: "a's certificate claiming b", client: rawClient(t, validA), claim: "b", status: http.StatusUnauthorized,
			reason: ReasonWrongName, says: `node a's certificate on a request whose X-Lifeboat-Peer names ["b"]`},
		{name: "a's certificate claiming nobody", client: rawClient(t, validA), status: http.StatusUnauthorized, reason: ReasonWrongName},
		{name: "no certificate", client: rawClient(t), claim: "a", reason: ReasonNoCertificate, says: "no certificate"},
		{name: "another key's", client: rawClient(t, issue(t, other, "a", now.Add(-time.Hour), now.Add(time.Hour))), claim: "a",
			reason: ReasonUnknownAuthority, says: "not from this cluster's CA"},
		{name: "not valid yet", client: rawClient(t, issue(t, ca, "ahead", now.Add(time.Hour), now.Add(2*time.Hour))), claim: "ahead",
			reason: ReasonNotYetValid, says: "node ahead's certificate is not valid yet"},
		{name: "expired", client: rawClient(t, issue(t, ca, "behind", now.Add(-2*time.Hour), now.Add(-time.Hour))), claim: "behind",
			reason: ReasonExpired, says: "node behind's certificate expired"},
		{name: "the CA's", client: rawClient(t, tls.Certificate{Certificate: [][]byte{ca.Certificate().Raw}, PrivateKey: ca.key}), claim: "a",
			reason: ReasonBadCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, reqs := b.failures(DirectionIn, tc.reason), b.requests.Load()
			code, _, err := get(t, tc.client, b, tc.claim)
			if tc.status == 0 {
				if err == nil {
					t.Fatalf("answered %d; want the handshake refused", code)
				}
				if got := b.requests.Load(); got != reqs {
					t.Errorf("the handler ran %d times", got-reqs)
				}
			} else if err != nil || code != tc.status {
				t.Fatalf("%d, %v; want %d", code, err, tc.status)
			}
			if tc.reason == "" {
				return
			}
			waitCount(t, func() int64 { return b.failures(DirectionIn, tc.reason) }, before+1)
			if !strings.Contains(logged(b.logs), tc.says) {
				t.Errorf("b's log does not say %q:\n%s", tc.says, logged(b.logs))
			}
		})
	}

	t.Run("plain HTTP", func(t *testing.T) {
		before := b.failures(DirectionIn, ReasonNotTLS)
		resp, err := http.Get("http://" + b.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "speaks TLS only") {
			t.Errorf("plain HTTP: %s %q", resp.Status, body)
		}
		waitCount(t, func() int64 { return b.failures(DirectionIn, ReasonNotTLS) }, before+1)
	})

	t.Run("a failure is logged once a minute", func(t *testing.T) {
		ahead := rawClient(t, issue(t, ca, "ahead", now.Add(time.Hour), now.Add(2*time.Hour)))
		ahead.Transport.(*http.Transport).DisableKeepAlives = true
		for range 3 {
			if _, _, err := get(t, ahead, b, "ahead"); err == nil {
				t.Fatal("a certificate not valid yet got through")
			}
		}
		waitCount(t, func() int64 { return b.failures(DirectionIn, ReasonNotYetValid) }, 4)
		if n := strings.Count(logged(b.logs), "node ahead's certificate is not valid yet"); n != 1 {
			t.Errorf("b logged %d lines about it, want 1 (once a minute)", n)
		}
	})
}

// What a node's client accepts of a server, and what each refusal counts on both sides.
func TestPeerClient(t *testing.T) {
	t.Parallel()
	b := newTLSPeer(t, "b", testSecret, time.Now, nil)
	z := newTLSPeer(t, "z", otherSecret, time.Now, nil)
	ahead := newTLSPeer(t, "ahead", testSecret, func() time.Time { return time.Now().Add(2 * CertificateBackdate) }, nil)
	for _, tc := range []struct {
		name    string
		server  *tlsPeer
		members []Member
		reason  string
		says    string
	}{
		{name: "the member at the address", server: b, members: []Member{b.member()}},
		{name: "the member at the address, among others", server: b,
			members: []Member{{Name: "c", PeerAddr: b.addr}, b.member(), {Name: "b", PeerAddr: "127.0.0.9:1"}}},
		{name: "another member at the address", server: b, members: []Member{{Name: "c", PeerAddr: b.addr}},
			reason: ReasonWrongName, says: "no member called b advertises the peer address " + b.addr},
		{name: "no member at the address", server: b, members: []Member{{Name: "b", PeerAddr: "127.0.0.9:1"}}, reason: ReasonWrongName},
		{name: "another key's server", server: z, members: []Member{z.member()}, reason: ReasonUnknownAuthority, says: "not from this cluster's CA"},
		{name: "a server whose clock is ahead", server: ahead, members: []Member{ahead.member()},
			reason: ReasonNotYetValid, says: "node ahead's certificate is not valid yet"},
	} {
		// One at a time: the servers count the refusals of all.
		t.Run(tc.name, func(t *testing.T) {
			a := newTLSPeer(t, "a", testSecret, time.Now, func() []Member { return tc.members })
			refusedBefore := tc.server.failures(DirectionIn, ReasonRefused)
			code, body, err := get(t, a.Client(), tc.server, "")
			if tc.reason == "" {
				if err != nil || code != http.StatusOK || body != "a" {
					t.Fatalf("%d %q %v; want 200 from a", code, body, err)
				}
				a.only(t, nil)
				return
			}
			if err == nil {
				t.Fatalf("answered %d; want the handshake refused", code)
			}
			a.only(t, map[string]int64{DirectionOut + "/" + tc.reason: 1})
			if !strings.Contains(logged(a.logs), tc.says) {
				t.Errorf("a's log does not say %q:\n%s", tc.says, logged(a.logs))
			}
			// The server hears that its certificate was refused.
			waitCount(t, func() int64 { return tc.server.failures(DirectionIn, ReasonRefused) }, refusedBefore+1)
			if !strings.Contains(logged(tc.server.logs), "refused this node's certificate") {
				t.Errorf("%s's log does not say its certificate was refused:\n%s", tc.server.Name(), logged(tc.server.logs))
			}
		})
	}

	// A node whose own clock is ahead presents a certificate the server refuses: with TLS 1.3
	// the client's handshake ends first, and its request meets the server's alert.
	t.Run("a client whose clock is ahead", func(t *testing.T) {
		t.Parallel()
		c := newTLSPeer(t, "fast", testSecret, func() time.Time { return time.Now().Add(2 * CertificateBackdate) },
			func() []Member { return []Member{b.member()} })
		before := b.failures(DirectionIn, ReasonNotYetValid)
		if code, _, err := get(t, c.Client(), b, ""); err == nil {
			t.Fatalf("answered %d; want refused", code)
		}
		waitCount(t, func() int64 { return b.failures(DirectionIn, ReasonNotYetValid) }, before+1)
		// The client sees the alert, or the connection reset after it: only the alert names
		// the refusal.
		if n := c.failures(DirectionOut, ReasonRefused); n > 1 {
			t.Errorf("the client counts %d refusals of one request", n)
		}
	})
}

// waitCount waits until count reaches want: the other side of a handshake counts its end
// after this side's call returned.
func waitCount(t *testing.T, count func() int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for count() < want {
		if time.Now().After(deadline) {
			t.Fatalf("count %d, want %d", count(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := count(); got != want {
		t.Fatalf("count %d, want %d", got, want)
	}
}

// The listener's handshakes do not hold each other: a client that connects and sends nothing
// does not delay the next; Close ends the handshakes under way and Accept returns.
func TestListenerHandshakesApart(t *testing.T) {
	t.Parallel()
	b := newTLSPeer(t, "b", testSecret, time.Now, nil)
	a := newTLSPeer(t, "a", testSecret, time.Now, func() []Member { return []Member{b.member()} })
	for range 5 {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	ctx, cancel := context.WithTimeout(t.Context(), handshakeTimeout/2)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+b.addr+"/", nil)
	resp, err := a.Client().Do(req)
	if err != nil {
		t.Fatalf("a's request behind 5 silent connections: %v", err)
	}
	resp.Body.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := b.Listener(ln)
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	// The silent connection's handshake ended with the listener.
	c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if _, err := bufio.NewReader(c).ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("the handshake under way outlived Close: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Two nodes with real gossip, one whose clock is ahead by more than the tolerance: both see
// each other alive (gossip has no clock), and its requests are refused and counted, with the
// reason an operator reads.
func TestClockAheadIsCounted(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.8.1", "a", nil)
	ahead := startNode(t, "127.0.8.2", "ahead", []string{a.gossipAddr}, func(c *Config) {
		c.clock = func() time.Time { return time.Now().Add(CertificateBackdate + 10*time.Minute) }
	})
	eventually(t, 10*time.Second, "a and ahead alive on both", allAlive(a, ahead))
	ahead.Announce(Record{Key: key(1)})
	eventually(t, 10*time.Second, "a to count ahead's certificate not valid yet", func() bool {
		return countOf(a.Stats(), DirectionIn, ReasonNotYetValid) > 0
	})
	if _, err := a.Lookup(t.Context(), key(1)); err != nil {
		t.Logf("a's lookup: %v", err)
	}
	eventually(t, 10*time.Second, "a to refuse ahead's server certificate", func() bool {
		return countOf(a.Stats(), DirectionOut, ReasonNotYetValid) > 0 && countOf(ahead.Stats(), DirectionIn, ReasonRefused) > 0
	})
	if hs := a.index.Get(key(1), time.Now()); len(hs) != 0 {
		t.Errorf("a indexed %v from a node it refused", hs)
	}
	if !slices.ContainsFunc(a.Stats().HandshakeFailures, func(f HandshakeFailures) bool {
		return f.Direction == DirectionIn && f.Reason == ReasonNotYetValid
	}) {
		t.Error("Stats does not list in/not_yet_valid")
	}
}

func countOf(s Stats, direction, reason string) int64 {
	for _, f := range s.HandshakeFailures {
		if f.Direction == direction && f.Reason == reason {
			return f.Count
		}
	}
	return 0
}
