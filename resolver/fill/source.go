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

// Resumer is a Source that can also send the blob from an offset: a fill whose source broke
// after bytes reached readers, which can no longer start over, resumes with the next source
// that is one, from the offset already written. The bytes are the same blob's only if the
// source serves it by its digest: the engine verifies the whole blob, the first source's bytes
// and the next one's together, before any reader completes.
//
// OpenAt asks for the bytes from off (positive) to the end of the blob of size bytes (the size
// the fill's readers were given). The body's first byte is the blob's byte off; its Size is the
// whole blob's size (not what is left), which the engine requires to be size. Errors are
// Open's.
type Resumer interface {
	Source
	OpenAt(ctx context.Context, off, size int64) (Body, error)
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
	// Resumed is true when the bytes came from more than one source (a resumed fill): which
	// one sent the wrong ones is not known.
	Resumed bool
}

func (e *MismatchError) Error() string {
	if e.Resumed {
		return fmt.Sprintf("the %d bytes of a resumed download, the last from %s, have digest %s, not the requested one", e.N, e.From, e.Actual)
	}
	return fmt.Sprintf("%s sent %d bytes with digest %s, not the requested one", e.From, e.N, e.Actual)
}

func (e *MismatchError) Unwrap() error { return errdefs.ErrFailedPrecondition }
