package cluster

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"syscall"

	"github.com/containerd/errdefs"
)

// Header names of the peer protocol.
const (
	// HeaderPeer marks a request from a peer, with the sender's node name, which must be the
	// name in the sender's certificate (Node.Authenticate): a node that receives it answers
	// from its own cache (or, with HeaderFill, from the registry) and never asks its own peers,
	// so requests cannot loop.
	HeaderPeer = "X-Lifeboat-Peer"
	// HeaderFill asks a digest's home to fill the blob from the registry when it does not hold
	// it, and to stream it while it fills ("1"): the coalesced fill.
	HeaderFill = "X-Lifeboat-Fill"
)

// SecretSize is the size of the cluster key.
const SecretSize = 32

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

// gossipKey is memberlist's encryption key (AES-256), derived from the cluster key. It is v2
// since peers speak TLS: a node of an earlier version, whose peer listener speaks plain HTTP,
// cannot join a cluster of this one (it would be a member no one can reach), and the other way
// round.
func gossipKey(secret []byte) []byte { return derive(secret, "lifeboat gossip v2") }

// derive is HKDF-SHA256 of the cluster key for purpose (the info string), 32 bytes: a key of its
// own for each use of the cluster key.
func derive(secret []byte, purpose string) []byte {
	k, err := hkdf.Key(sha256.New, secret, nil, purpose, 32)
	if err != nil {
		panic("cluster: HKDF-SHA256 of 32 bytes cannot fail: " + err.Error())
	}
	return k
}

// CheckNodeName says whether name can be a node name: 1 to 128 bytes of printable ASCII
// without spaces (a host name is one). Certificates of other names are refused.
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
