package cluster

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
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

// SecretSize is the size of the cluster key.
const SecretSize = 32

// tokenScheme is the authentication scheme of peer tokens.
const tokenScheme = "Lifeboat-HMAC"

// TokenSkew is how far a token's time may be from the verifier's clock, either way.
const TokenSkew = 5 * time.Minute

// maxNodeName bounds a node name, in bytes.
const maxNodeName = 128

// LoadSecret reads a cluster key file: 32 random bytes, base64 (as `openssl rand -base64 32`
// prints), surrounding white space ignored. A file that is not that, that others can read
// (mode & 0o077), or that is owned by a user other than the one this process runs as or root,
// is refused with a clear error.
func LoadSecret(path string) ([]byte, error) {
	howToMake := fmt.Sprintf("(umask 077; openssl rand -base64 32 > %s)", path)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cluster key %s does not exist; make one with %s and give the same file to every node: %w",
			path, howToMake, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("cluster key %s is not a regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	if err := checkOwner(path, fi); err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("cluster key %s can be read by other users (mode %04o); run: chmod 600 %s: %w",
			path, perm, path, errdefs.ErrFailedPrecondition)
	}
	// A key file is 44 characters and a newline; anything much longer is not one.
	b, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	secret, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	if err != nil || len(secret) != SecretSize {
		return nil, fmt.Errorf("cluster key %s is not %d random bytes in base64; make one with %s: %w",
			path, SecretSize, howToMake, errdefs.ErrInvalidArgument)
	}
	return secret, nil
}

// checkOwner refuses a key file owned by a user other than the one this process runs as, or
// root: that user can read the key, which makes it a member, and replace it.
func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	uid := os.Geteuid()
	if int(st.Uid) == uid || st.Uid == 0 {
		return nil
	}
	return fmt.Errorf("cluster key %s is owned by %s, not by the user lifeboat runs as (%s) or root, and that user can read and replace it; run: chown %d %s: %w",
		path, userName(int(st.Uid)), userName(uid), uid, path, errdefs.ErrFailedPrecondition)
}

// userName is "uid 1000 (alice)", or "uid 1000" for a user without a name.
func userName(uid int) string {
	s := "uid " + strconv.Itoa(uid)
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		s += " (" + u.Username + ")"
	}
	return s
}

// gossipKey is memberlist's encryption key (AES-256), derived from the cluster key.
func gossipKey(secret []byte) []byte { return derive(secret, "lifeboat gossip v1") }

// tokenKey is the HMAC key of peer tokens, derived from the cluster key.
func tokenKey(secret []byte) []byte { return derive(secret, "lifeboat peer token v1") }

func derive(secret []byte, purpose string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

// CheckNodeName says whether name can be a node name: 1 to 128 bytes of printable ASCII
// without spaces (a host name is one). Tokens of other names are refused.
func CheckNodeName(name string) error {
	if name == "" || len(name) > maxNodeName {
		return fmt.Errorf("node name must be 1 to %d bytes: %w", maxNodeName, errdefs.ErrInvalidArgument)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("node name %q: only printable ASCII without spaces: %w", name, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Signer makes and checks peer tokens: an HMAC-SHA256, under a key derived from the cluster
// key, of the node name, a Unix time, the method and the request URI. A token is accepted
// within ±5 minutes of its time.
//
// A token authenticates the sender and its request line, not the body or the connection: over
// plain HTTP, someone on the path can replay a request within the skew or change its body.
// Peers verify the bytes they fetch by digest, so the worst such an attacker does with index
// requests is to make lookups name wrong holders, which then answer 404.
type Signer struct {
	node string
	key  []byte
	now  func() time.Time // time.Now; tests move it
}

// NewSigner returns the signer of node with the cluster key secret. node should pass
// CheckNodeName; other nodes refuse the tokens of names that do not.
func NewSigner(node string, secret []byte) *Signer {
	return &Signer{node: node, key: tokenKey(secret), now: time.Now}
}

// Sign adds this node's token and HeaderPeer to req.
func (s *Signer) Sign(req *http.Request) {
	ts := strconv.FormatInt(s.now().Unix(), 10)
	sig := s.sign(s.node, ts, req.Method, req.URL.RequestURI())
	req.Header.Set(HeaderAuthorization, tokenScheme+" node="+s.node+",ts="+ts+",sig="+hex.EncodeToString(sig))
	req.Header.Set(HeaderPeer, s.node)
}

func (s *Signer) sign(node, ts, method, uri string) []byte {
	m := hmac.New(sha256.New, s.key)
	// Each field is length-prefixed, so no two requests share a message.
	for _, f := range []string{node, ts, method, uri} {
		m.Write(strconv.AppendInt(nil, int64(len(f)), 10))
		m.Write([]byte{':'})
		m.Write([]byte(f))
	}
	return m.Sum(nil)
}

// Verify checks req's token and returns the sending node's name; an error
// (errdefs.ErrUnauthenticated) says why it was refused.
func (s *Signer) Verify(req *http.Request) (node string, err error) {
	refuse := func(why string) (string, error) {
		return "", fmt.Errorf("peer token %s: %w", why, errdefs.ErrUnauthenticated)
	}
	auths := req.Header.Values(HeaderAuthorization)
	if len(auths) == 0 {
		return refuse("missing")
	}
	if len(auths) > 1 {
		return refuse("given twice")
	}
	node, ts, sig, ok := parseToken(auths[0])
	if !ok {
		return refuse("malformed")
	}
	if CheckNodeName(node) != nil {
		return refuse("names an invalid node")
	}
	if peers := req.Header.Values(HeaderPeer); len(peers) != 1 || peers[0] != node {
		return refuse("of node " + node + " on a request whose " + HeaderPeer + " does not name it")
	}
	// The request line as the client sent it; the parsed URL when a test or a handler built
	// the request.
	uri := req.RequestURI
	if uri == "" {
		uri = req.URL.RequestURI()
	}
	if !hmac.Equal(sig, s.sign(node, ts, req.Method, uri)) {
		return refuse("of node " + node + " has a wrong signature (another cluster key?)")
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return refuse("malformed")
	}
	if d := s.now().Sub(time.Unix(unix, 0)); d > TokenSkew || d < -TokenSkew {
		return refuse(fmt.Sprintf("of node %s is %s off this node's clock (more than %s)", node, d.Round(time.Second), TokenSkew))
	}
	return node, nil
}

// parseToken splits "Lifeboat-HMAC node=<name>,ts=<digits>,sig=<64 hex>". The node name may
// hold any printable character, commas too: the fields after it are found from the end.
func parseToken(h string) (node, ts string, sig []byte, ok bool) {
	rest, ok := strings.CutPrefix(h, tokenScheme+" node=")
	if !ok || len(rest) > maxNodeName+len(",ts=")+18+len(",sig=")+2*sha256.Size {
		return "", "", nil, false
	}
	i := strings.LastIndex(rest, ",sig=")
	if i < 0 {
		return "", "", nil, false
	}
	rest, hexSig := rest[:i], rest[i+len(",sig="):]
	i = strings.LastIndex(rest, ",ts=")
	if i < 0 {
		return "", "", nil, false
	}
	node, ts = rest[:i], rest[i+len(",ts="):]
	if len(ts) == 0 || len(ts) > 18 || strings.Trim(ts, "0123456789") != "" {
		return "", "", nil, false
	}
	if len(hexSig) != 2*sha256.Size {
		return "", "", nil, false
	}
	sig, err := hex.DecodeString(hexSig)
	if err != nil {
		return "", "", nil, false
	}
	return node, ts, sig, true
}
