package harness

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

// PeerURL is the URL of path ("/v2/", "/lifeboat/v1/lookup?key=…") at the member's peer
// listener, which speaks TLS only.
func (lb *Lifeboat) PeerURL(path string) string { return "https://" + lb.Peer + path }

// PeerCertificate is a certificate for the node name from the cluster CA of the key in keyFile,
// valid from notBefore to notAfter: what a member with that key and name presents, or, with
// times that are off, one whose clock is.
func PeerCertificate(t testing.TB, keyFile, name string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	cert, err := authority(t, keyFile).Issue(name, notBefore, notAfter)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return cert
}

// authority is the cluster CA of the key in keyFile.
func authority(t testing.TB, keyFile string) *cluster.Authority {
	t.Helper()
	secret, err := cluster.LoadSecret(keyFile)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	ca, err := cluster.NewAuthority(secret)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return ca
}

// PeerClient is a client of the members' peer listeners as the node name of the cluster whose
// key is in keyFile: it presents a certificate of the cluster's CA for name, checks that the
// server's is from that CA, and sets X-Lifeboat-Peer to name.
func PeerClient(t testing.TB, keyFile, name string) *http.Client {
	t.Helper()
	now := time.Now()
	c := TLSClient(t, PeerCertificate(t, keyFile, name, now.Add(-time.Hour), now.Add(time.Hour)))
	roots := x509.NewCertPool()
	roots.AddCert(authority(t, keyFile).Certificate())
	tr := c.Transport.(*http.Transport)
	tr.TLSClientConfig.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("harness: the peer presented no certificate")
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	c.Transport = claiming{name: name, base: tr}
	return c
}

// claiming sets X-Lifeboat-Peer on every request that does not set it.
type claiming struct {
	name string
	base http.RoundTripper
}

func (c claiming) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get(cluster.HeaderPeer) == "" {
		req = req.Clone(req.Context())
		req.Header.Set(cluster.HeaderPeer, c.name)
	}
	return c.base.RoundTrip(req)
}

// TLSClient is a TLS 1.3 client that presents certs (none: no certificate) and trusts any
// server: a stranger to the cluster, or one with a certificate a test made.
func TLSClient(t testing.TB, certs ...tls.Certificate) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       certs,
		InsecureSkipVerify: true, // PeerClient checks the server against the cluster's CA
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
