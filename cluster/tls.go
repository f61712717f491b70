package cluster

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Peer traffic goes over mutual TLS 1.3. The cluster's certificate authority is derived from
// the cluster key, so every node has the same one and no certificate file is needed; every node
// issues itself a certificate for its node name with a key of its own, kept in memory. A peer's
// certificate must come from the authority, be valid by this node's clock, and name the member
// the connection is meant for: the one advertising the address dialled (client side), the one
// HeaderPeer claims (server side, Node.Authenticate).

const (
	// CertificateLifetime is how long a node's certificate is valid after it is issued; a node
	// issues a new one for its handshakes once the one it has is CertificateLifetime/3 old.
	CertificateLifetime = 24 * time.Hour
	// CertificateBackdate is how long before its issue a node's certificate is valid from: the
	// clock skew tolerated between two nodes. A node whose clock is further ahead than that
	// presents certificates the others find not valid yet, and finds theirs not valid yet when
	// its clock is that far behind; both sides count and log it.
	CertificateBackdate = time.Hour

	// renewAge is the age past which a node issues itself a new certificate.
	renewAge = CertificateLifetime / 3
	// handshakeTimeout bounds a TLS handshake, either side.
	handshakeTimeout = 5 * time.Second
	// caPurpose is the HKDF info string of the authority's key.
	caPurpose = "lifeboat peer CA v1"
	// caName is the authority's subject.
	caName = "lifeboat cluster CA"
)

// Authority is the cluster's certificate authority: an Ed25519 key derived from the cluster key
// with HKDF-SHA256, and a certificate built from it alone (Ed25519 signatures are
// deterministic), so that every node that holds the key has the same authority.
type Authority struct {
	cert *x509.Certificate
	key  ed25519.PrivateKey
}

// NewAuthority returns the authority of the cluster key secret.
func NewAuthority(secret []byte) (*Authority, error) {
	if len(secret) == 0 {
		return nil, fmt.Errorf("cluster CA: no cluster key: %w", errdefs.ErrInvalidArgument)
	}
	seed := derive(secret, caPurpose)
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	id := sha256.Sum256(pub)
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(id[:16]),
		Subject:               pkix.Name{CommonName: caName},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), // RFC 5280: no expiry
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          id[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	return &Authority{cert: cert, key: key}, nil
}

// Certificate is the authority's certificate, the same on every node of the cluster.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// Issue returns a certificate for node, with a new Ed25519 key, valid from notBefore to
// notAfter, for TLS servers and clients alike. node must pass CheckNodeName.
func (a *Authority) Issue(node string, notBefore, notAfter time.Time) (tls.Certificate, error) {
	if err := CheckNodeName(node); err != nil {
		return tls.Certificate{}, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate of %s: %w", node, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate of %s: %w", node, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: node},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate of %s: %w", node, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate of %s: %w", node, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, nil
}

// check returns the node name of the certificate a peer presented (the first of certs), or a
// *certError saying why it is refused: it must be signed by this authority, name a valid node,
// and be valid at now.
func (a *Authority) check(certs []*x509.Certificate, now time.Time) (string, error) {
	if len(certs) == 0 {
		return "", &certError{reason: ReasonNoCertificate}
	}
	leaf := certs[0]
	if err := leaf.CheckSignatureFrom(a.cert); err != nil {
		return "", &certError{reason: ReasonUnknownAuthority, err: err}
	}
	node := leaf.Subject.CommonName
	if err := CheckNodeName(node); err != nil || leaf.IsCA {
		return "", &certError{reason: ReasonBadCertificate, err: fmt.Errorf("not a node's certificate (%q)", node)}
	}
	if now.Before(leaf.NotBefore) {
		return "", &certError{reason: ReasonNotYetValid, node: node, notBefore: leaf.NotBefore, now: now}
	}
	if now.After(leaf.NotAfter) {
		return "", &certError{reason: ReasonExpired, node: node, notAfter: leaf.NotAfter, now: now}
	}
	return node, nil
}

// certError is a peer's certificate refused, with the reason counted and what the log says.
type certError struct {
	reason string
	// node is the name in the certificate, once the authority's signature proved it.
	node string
	// notBefore, notAfter and now are the times of a certificate not valid at now.
	notBefore, notAfter, now time.Time
	err                      error
}

func (e *certError) Error() string {
	who := "a peer's certificate"
	if e.node != "" {
		who = "node " + e.node + "'s certificate"
	}
	switch e.reason {
	case ReasonNoCertificate:
		return "the peer presented no certificate"
	case ReasonNotYetValid:
		return fmt.Sprintf("%s is not valid yet: it is valid from %s and this node's clock reads %s, so its clock is more than %s ahead of this node's",
			who, e.notBefore.UTC().Format(time.RFC3339), e.now.UTC().Format(time.RFC3339), CertificateBackdate)
	case ReasonExpired:
		return fmt.Sprintf("%s expired at %s and this node's clock reads %s: its clock is far behind this node's, or it could not renew its certificate",
			who, e.notAfter.UTC().Format(time.RFC3339), e.now.UTC().Format(time.RFC3339))
	case ReasonUnknownAuthority:
		return who + " is not from this cluster's CA (another cluster key?): " + e.err.Error()
	}
	if e.err != nil {
		return who + " is refused: " + e.err.Error()
	}
	return who + " is refused"
}

// identity is this node's certificate, issued at start-up and again once it is renewAge old (or
// the clock went back before its issue), when a handshake asks for it.
type identity struct {
	ca   *Authority
	name string
	now  func() time.Time

	mu     sync.Mutex
	cert   *tls.Certificate
	issued time.Time
}

func newIdentity(ca *Authority, name string, now func() time.Time) (*identity, error) {
	id := &identity{ca: ca, name: name, now: now}
	if _, err := id.certificate(); err != nil {
		return nil, err
	}
	return id, nil
}

// certificate is this node's current certificate.
func (id *identity) certificate() (*tls.Certificate, error) {
	now := id.now()
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.cert != nil && !now.Before(id.issued) && now.Sub(id.issued) < renewAge {
		return id.cert, nil
	}
	c, err := id.ca.Issue(id.name, now.Add(-CertificateBackdate), now.Add(CertificateLifetime))
	if err != nil {
		return nil, err
	}
	id.cert, id.issued = &c, now
	return id.cert, nil
}

// peerTLS is a node's side of the peer transport: its identity, the authority it checks peers
// against, and the count of failed handshakes.
type peerTLS struct {
	ca       *Authority
	id       *identity
	now      func() time.Time
	failures *handshakeFailures
	// members lists the members, for the name a server at an address must have.
	members func() []Member
	dialer  *net.Dialer
}

func newPeerTLS(cfg Config, l *log.Entry, members func() []Member) (*peerTLS, error) {
	now := cfg.clock
	if now == nil {
		now = time.Now
	}
	ca, err := NewAuthority(cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	id, err := newIdentity(ca, cfg.NodeName, now)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return &peerTLS{ca: ca, id: id, now: now, failures: newHandshakeFailures(l, now), members: members,
		dialer: &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}}, nil
}

// transport is http.DefaultTransport's settings with dialTLS: a short dial timeout (a peer on
// the same network answers a dial within a second or is as good as down), the TLS of peers,
// HTTP/1.1 (a blob a connection), and up to 16 idle connections a peer.
func (p *peerTLS) transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = nil
	t.DialTLSContext = p.dialTLS
	t.ForceAttemptHTTP2 = false
	t.MaxIdleConnsPerHost = 16
	return t
}

// serverConfig is the peer listener's TLS: a client certificate is asked for and checked
// here, rather than by crypto/tls, so that every refusal has its reason.
func (p *peerTLS) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return p.id.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := p.ca.check(cs.PeerCertificates, p.now())
			return err
		},
	}
}

// clientConfig is the TLS of a connection to the peer at addr: the server's certificate must be
// the authority's, valid, and name a member advertising addr.
func (p *peerTLS) clientConfig(addr string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
		// crypto/tls's verification wants a host name in the certificate; VerifyConnection
		// checks the chain against the cluster's authority and the name against the member.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.id.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			node, err := p.ca.check(cs.PeerCertificates, p.now())
			if err != nil {
				return err
			}
			for _, m := range p.members() {
				if m.Name == node && sameAddr(m.PeerAddr, addr) {
					return nil
				}
			}
			return &certError{reason: ReasonWrongName, node: node,
				err: fmt.Errorf("no member called %s advertises the peer address %s", node, addr)}
		},
	}
}

// dialTLS connects to the peer at addr and makes the TLS handshake, under handshakeTimeout; a
// failed handshake is counted, unless ctx ended.
func (p *peerTLS) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	raw, err := p.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, p.clientConfig(addr))
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := conn.HandshakeContext(hctx); err != nil {
		raw.Close()
		if ctx.Err() == nil {
			p.failures.add(DirectionOut, addr, err)
		}
		return nil, &handshakeError{addr: addr, err: err}
	}
	return conn, nil
}

// handshakeError is a failed handshake with the peer at addr, already counted.
type handshakeError struct {
	addr string
	err  error
}

func (e *handshakeError) Error() string {
	return fmt.Sprintf("TLS handshake with the peer at %s: %v", e.addr, e.err)
}

func (e *handshakeError) Unwrap() error { return e.err }

// sameAddr says whether the host:port a and b are the same address ("127.0.0.1:5102" and
// "127.0.0.1:5102", "[::1]:5102" and "[0:0::1]:5102").
func sameAddr(a, b string) bool {
	if a == b {
		return true
	}
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	return ia != nil && ia.Equal(ib)
}
