package cluster

import (
	"net/http"
)

// Header names of the peer protocol.
const (
	// HeaderAuthorization carries a peer token: "Lifeboat-HMAC node=<name>,ts=<unix>,sig=<hex>".
	HeaderAuthorization = "Authorization"
	// HeaderPeer marks a request from a peer, with the sender's node name: a node that receives
	// it answers from its own cache (or, with HeaderFill, from the registry) and never asks its
	// own peers, so requests cannot loop.
	HeaderPeer = "X-Lifeboat-Peer"
	// HeaderFill asks a digest's home to fill the blob from the registry when it does not hold
	// it, and to stream it while it fills ("1"): the coalesced fill.
	HeaderFill = "X-Lifeboat-Fill"
)

// LoadSecret reads a cluster key file: 32 random bytes, base64 (as `openssl rand -base64 32`
// prints), surrounding white space ignored. A file that is not that, or that others can read
// (mode & 0o077), is refused with a clear error.
func LoadSecret(path string) ([]byte, error) { panic("not implemented yet") }

// Signer makes and checks peer tokens: an HMAC-SHA256, under a key derived from the cluster
// key, of the node name, a Unix time, the method and the request URI. A token is accepted
// within ±5 minutes of its time.
type Signer struct{}

// NewSigner returns the signer of node with the cluster key secret.
func NewSigner(node string, secret []byte) *Signer { panic("not implemented yet") }

// Sign adds this node's token and HeaderPeer to req.
func (s *Signer) Sign(req *http.Request) { panic("not implemented yet") }

// Verify checks req's token and returns the sending node's name; an error
// (errdefs.ErrUnauthenticated) says why it was refused.
func (s *Signer) Verify(req *http.Request) (node string, err error) { panic("not implemented yet") }
