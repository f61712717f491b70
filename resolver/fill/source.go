package fill

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Source is one place a blob's bytes can come from: a registry's endpoints, or the cluster's
// peers. The engine asks the sources of a fill in the order it was given them and knows
// nothing else of them; which sources a blob has, and in what order, is the resolver's choice.
//
// Open's errors: errdefs.ErrNotFound when the source does not have the blob; anything else
// when it failed. Either way the engine goes on to the next source.
type Source interface {
	// Open asks for the blob. Its body is read under ctx: the engine ends ctx when it stops
	// reading (a stall, the fill timeout, the resolver closing). A source bounds its own wait
	// for the answer's headers.
	Open(ctx context.Context) (Body, error)
}

// Body is a source's answer: the blob's bytes, unverified.
type Body struct {
	io.ReadCloser
	// Size is the blob's size, -1 when the source did not say.
	Size int64
	// From names the source in messages: "upstream https://registry-1.docker.io", "peer b".
	From string
	// Peer is the node that sent the bytes, "" when they did not come from a peer.
	Peer string
	// Done, when set, is told how the transfer ended once the engine is done with the body:
	// the bytes received and the error, nil when they verified, a *MismatchError when they
	// did not match the digest.
	Done func(n int64, err error)
}

// MismatchError is the error of a body whose bytes do not match the blob's digest. It is
// errdefs.ErrFailedPrecondition.
type MismatchError struct {
	From   string
	N      int64
	Actual digest.Digest
	Want   digest.Digest
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s sent %d bytes with digest %s, not the requested one", e.From, e.N, e.Actual)
}

func (e *MismatchError) Unwrap() error { return errdefs.ErrFailedPrecondition }
