package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Directions of a failed handshake (lifeboat_cluster_handshake_failures_total's direction).
const (
	// DirectionIn is a peer connecting to this node's peer listener.
	DirectionIn = "in"
	// DirectionOut is this node connecting to a peer.
	DirectionOut = "out"
)

// Reasons of a failed handshake, or of a request refused for the node it claims to come from
// (lifeboat_cluster_handshake_failures_total's reason).
const (
	// ReasonNotTLS: the other side does not speak TLS (plain HTTP: a lifeboat of an earlier
	// version, or a client that is no peer).
	ReasonNotTLS = "not_tls"
	// ReasonNoCertificate: a client presented no certificate.
	ReasonNoCertificate = "no_certificate"
	// ReasonUnknownAuthority: a certificate not signed by this cluster's CA (another key).
	ReasonUnknownAuthority = "unknown_authority"
	// ReasonNotYetValid: a certificate valid only later by this node's clock: the other
	// node's clock is ahead of this one's by more than CertificateBackdate.
	ReasonNotYetValid = "not_yet_valid"
	// ReasonExpired: a certificate no longer valid by this node's clock.
	ReasonExpired = "expired"
	// ReasonBadCertificate: the CA's certificate, but not one of a node.
	ReasonBadCertificate = "bad_certificate"
	// ReasonWrongName: a certificate of a node other than the one the request claims
	// (HeaderPeer), or than the member advertising the address dialled.
	ReasonWrongName = "wrong_name"
	// ReasonRefused: the other side refused this node's certificate (its log says why).
	ReasonRefused = "refused"
	// ReasonOther: the handshake failed otherwise (timed out, cut, not a TLS 1.3 client).
	ReasonOther = "other"
)

// handshakeReasons are the reasons counted, in the order Stats lists them.
var handshakeReasons = []string{ReasonNotTLS, ReasonNoCertificate, ReasonUnknownAuthority, ReasonNotYetValid,
	ReasonExpired, ReasonBadCertificate, ReasonWrongName, ReasonRefused, ReasonOther}

// HandshakeFailures is how many handshakes in one direction failed for one reason.
type HandshakeFailures struct {
	Direction, Reason string
	Count             int64
}

// handshakeLogEvery is how often a failure of one direction and reason is logged at most.
const handshakeLogEvery = time.Minute

type failureKind struct{ direction, reason string }

// handshakeFailures counts the failed handshakes by direction and reason, and logs them: at
// Warn, at most once a minute for each direction and reason, with the number left unlogged
// since the last line (ReasonOther, which a port scanner or a cancelled dial causes, at Debug).
type handshakeFailures struct {
	log    *log.Entry
	now    func() time.Time
	counts map[failureKind]*atomic.Int64 // every kind, made once

	mu       sync.Mutex
	logged   map[failureKind]time.Time
	unlogged map[failureKind]int
}

func newHandshakeFailures(l *log.Entry, now func() time.Time) *handshakeFailures {
	f := &handshakeFailures{log: l, now: now, counts: map[failureKind]*atomic.Int64{},
		logged: map[failureKind]time.Time{}, unlogged: map[failureKind]int{}}
	for _, d := range []string{DirectionIn, DirectionOut} {
		for _, r := range handshakeReasons {
			f.counts[failureKind{d, r}] = new(atomic.Int64)
		}
	}
	return f
}

// add counts and logs a handshake with the peer at remote that failed with err.
func (f *handshakeFailures) add(direction, remote string, err error) {
	f.record(failureKind{direction, failureReason(err)}, remote, err)
}

// failureReason is the reason err is counted under.
func failureReason(err error) string {
	if ce, ok := errors.AsType[*certError](err); ok {
		return ce.reason
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return ReasonNotTLS
	}
	// An alert the other side sent: it refused this node's certificate, or the handshake.
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Op == "remote error" {
		return ReasonRefused
	}
	return ReasonOther
}

func (f *handshakeFailures) record(k failureKind, remote string, err error) {
	// Counted once logged: whoever sees the count finds the line.
	defer f.counts[k].Add(1)
	entry := f.log.WithFields(log.Fields{"direction": k.direction, "reason": k.reason, "remote": remote})
	if k.reason == ReasonOther {
		entry.WithError(err).Debug("cluster: TLS handshake with a peer failed")
		return
	}
	now := f.now()
	f.mu.Lock()
	if last, ok := f.logged[k]; ok && now.Sub(last) < handshakeLogEvery && now.After(last) {
		f.unlogged[k]++
		f.mu.Unlock()
		return
	}
	unlogged := f.unlogged[k]
	f.logged[k], f.unlogged[k] = now, 0
	f.mu.Unlock()
	entry.WithField("unlogged_since_last", unlogged).Warn("cluster: " + failureMessage(k, remote, err))
}

// failureMessage is the sentence an operator reads about a failure of kind k.
func failureMessage(k failureKind, remote string, err error) string {
	in := k.direction == DirectionIn
	switch {
	case k.reason == ReasonNotTLS && in:
		return "a client at " + remote + " spoke plain HTTP (or not TLS) to the peer listener: peers speak TLS, so every node of the cluster must run a lifeboat version with TLS peers"
	case k.reason == ReasonNotTLS:
		return "the peer at " + remote + " does not speak TLS: every node of the cluster must run a lifeboat version with TLS peers"
	case k.reason == ReasonRefused && in:
		return "a peer at " + remote + " refused this node's certificate (its log says why: is a clock off? another cluster key?)"
	case k.reason == ReasonRefused:
		return "the peer at " + remote + " refused this node's certificate (its log says why: is a clock off? another cluster key?)"
	case in:
		return "refused a peer at " + remote + ": " + err.Error()
	default:
		return "refused the peer at " + remote + ": " + err.Error()
	}
}

// stats lists the counts of every direction and reason, zeros included.
func (f *handshakeFailures) stats() []HandshakeFailures {
	out := make([]HandshakeFailures, 0, 2*len(handshakeReasons))
	for _, d := range []string{DirectionIn, DirectionOut} {
		for _, r := range handshakeReasons {
			out = append(out, HandshakeFailures{Direction: d, Reason: r, Count: f.counts[failureKind{d, r}].Load()})
		}
	}
	return out
}

// Listener returns ln as the peer listener: it hands out only the connections whose mutual TLS
// handshake succeeded, with a client certificate from the cluster's CA that is valid by this
// node's clock. Each handshake runs in a goroutine of its own, under a deadline (5 s), so a
// slow client holds nothing but its own connection; each failure is counted and logged
// (Stats.HandshakeFailures). A client that speaks plain HTTP gets a 400 saying the listener
// speaks TLS only, and nothing else. Serve the peer listener's handler on it: Authenticate
// trusts the handshake it made.
func (n *Node) Listener(ln net.Listener) net.Listener {
	ctx, cancel := context.WithCancel(context.Background())
	return &tlsListener{Listener: ln, config: n.tls.serverConfig(), failures: n.tls.failures,
		ctx: ctx, cancel: cancel, accepted: make(chan accepted)}
}

// Authenticate returns the node a request to Listener comes from: the name in the client
// certificate of its connection, which HeaderPeer must name too. An error
// (errdefs.ErrUnauthenticated) says why the request is refused; a request whose HeaderPeer names
// another node is counted as a failure of reason wrong_name.
func (n *Node) Authenticate(req *http.Request) (node string, err error) {
	if req.TLS == nil || len(req.TLS.PeerCertificates) == 0 {
		return "", fmt.Errorf("peer request without the cluster's TLS: %w", errdefs.ErrUnauthenticated)
	}
	node = req.TLS.PeerCertificates[0].Subject.CommonName
	if claimed := req.Header.Values(HeaderPeer); len(claimed) != 1 || claimed[0] != node {
		err := fmt.Errorf("node %s's certificate on a request whose %s names %q: %w", node, HeaderPeer, claimed, errdefs.ErrUnauthenticated)
		n.tls.failures.record(failureKind{DirectionIn, ReasonWrongName}, req.RemoteAddr, err)
		return "", err
	}
	return node, nil
}

// tlsListener is Node.Listener.
type tlsListener struct {
	net.Listener
	config   *tls.Config
	failures *handshakeFailures
	// ctx ends with Close, and so do the handshakes under way.
	ctx      context.Context
	cancel   context.CancelFunc
	start    sync.Once
	accepted chan accepted
}

type accepted struct {
	conn net.Conn
	err  error
}

func (l *tlsListener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case a := <-l.accepted:
		return a.conn, a.err
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

func (l *tlsListener) Close() error {
	l.cancel()
	return l.Listener.Close()
}

// acceptLoop accepts connections and makes their handshakes. An error of the listener goes to
// Accept's caller, which decides (an HTTP server waits and accepts again after a temporary
// one); the loop does not accept again before the error was taken.
func (l *tlsListener) acceptLoop() {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.accepted <- accepted{err: err}:
			case <-l.ctx.Done():
				return
			}
			if errors.Is(err, net.ErrClosed) {
				l.cancel()
				return
			}
			continue
		}
		go l.handshake(raw)
	}
}

// notTLSAnswer is what a client that speaks plain HTTP to the peer listener gets.
const notTLSAnswer = "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" +
	"This is a lifeboat cluster peer listener: it speaks TLS only, to members of the cluster.\n"

func (l *tlsListener) handshake(raw net.Conn) {
	conn := tls.Server(raw, l.config)
	ctx, cancel := context.WithTimeout(l.ctx, handshakeTimeout)
	err := conn.HandshakeContext(ctx)
	cancel()
	if err != nil {
		if l.ctx.Err() == nil {
			l.failures.add(DirectionIn, raw.RemoteAddr().String(), err)
		}
		if rh, ok := errors.AsType[tls.RecordHeaderError](err); ok && rh.Conn != nil && looksLikeHTTP(rh.RecordHeader) {
			_ = rh.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = rh.Conn.Write([]byte(notTLSAnswer))
		}
		raw.Close()
		return
	}
	select {
	case l.accepted <- accepted{conn: conn}:
	case <-l.ctx.Done():
		conn.Close()
	}
}

// looksLikeHTTP says whether the first five bytes of a connection are those of an HTTP request.
func looksLikeHTTP(hdr [5]byte) bool {
	for _, m := range []string{"GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH", "CONNE"} {
		if bytes.Equal(hdr[:], []byte(m)) {
			return true
		}
	}
	return false
}

// peerTransport names this node in HeaderPeer of every request (the peer listener refuses a
// request whose HeaderPeer is not the node of its certificate), and counts the requests a peer
// cut with an alert: with TLS 1.3 a server refuses a client's certificate after the client's
// side of the handshake ended, on its first request.
type peerTransport struct {
	name     string
	base     http.RoundTripper
	failures *handshakeFailures
}

func (t *peerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set(HeaderPeer, t.name)
	resp, err := t.base.RoundTrip(req)
	if _, counted := errors.AsType[*handshakeError](err); err != nil && !counted && req.Context().Err() == nil && failureReason(err) == ReasonRefused {
		t.failures.record(failureKind{DirectionOut, ReasonRefused}, req.URL.Host, err)
	}
	return resp, err
}
