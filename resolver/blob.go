package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

// StatBlob reports a blob's descriptor without transferring it: from the cache, or with an
// upstream HEAD.
func (r *Resolver) StatBlob(ctx context.Context, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, CacheStatus, error) {
	eps, err := blobArgs(r.upstreams, registry, repository, dgst)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if desc, err := r.local.StatBlob(ctx, registry+"/"+repository, dgst); err == nil {
		return desc, Hit, nil
	}
	return r.headBlob(ctx, eps, registry, repository, dgst)
}

// headBlob asks the registry for a blob's size.
func (r *Resolver) headBlob(ctx context.Context, eps []*endpoints.Endpoint, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, CacheStatus, error) {
	hctx, cancel := context.WithTimeout(ctx, r.opts.UpstreamTimeout)
	defer cancel()
	size, _, err := endpoints.Try(hctx, eps, "head-blob", func(ctx context.Context, c endpoints.Client) (int64, error) {
		return c.HeadBlob(ctx, repository, dgst)
	})
	if err != nil {
		return ocispec.Descriptor{}, "", notFoundIfDown(err, "blob "+registry+"/"+repository+"@"+dgst.String())
	}
	return ocispec.Descriptor{Digest: dgst, Size: size}, Miss, nil
}

// blobArgs checks a blob request's names and returns the registry's endpoints in t.
func blobArgs(t *endpoints.Table, registry, repository string, dgst digest.Digest) ([]*endpoints.Endpoint, error) {
	if err := checkRepository(repository); err != nil {
		return nil, err
	}
	if err := checkDigest(dgst); err != nil {
		return nil, err
	}
	return t.Get(registry)
}

// Blob opens a blob for reading: from the cache, or by starting (or joining) the one fill of
// that blob, from the peers (Status Peer) or the upstream. It returns once the size is known,
// before the bytes have arrived, except for blobs of up to fill.SmallBlob bytes, which it
// returns once they are cached.
//
// The status of a blob returned before it arrived is its fill's source then: Peer stays when
// that peer's bytes fail verification and the fill starts over from the registry.
func (r *Resolver) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*Blob, error) {
	eps, err := blobArgs(r.upstreams, registry, repository, dgst)
	if err != nil {
		return nil, err
	}
	if b, err := r.local.Blob(ctx, registry+"/"+repository, dgst); err == nil {
		return b, nil
	}
	key := fill.Key{Registry: registry, Repository: repository, Digest: dgst}
	return r.fillBlob(ctx, key, r.blobSources(key, eps, r.PeersFor(registry)), false)
}

// maxPeerAttempts is how many times a fill asks the peers, one after the other as long as no
// byte of the last one reached a reader, before it goes to the registry.
const maxPeerAttempts = 3

// blobSources are where a fill of key gets its bytes: the peers, when there are (each attempt
// leaving out the peers that failed the ones before), then the registry's endpoints.
func (r *Resolver) blobSources(key fill.Key, eps []*endpoints.Endpoint, peers Peers) []fill.Source {
	up := registrySource{eps: eps, key: key, wait: r.opts.UpstreamTimeout, mismatches: &r.digestMismatches}
	if peers == nil {
		return []fill.Source{up}
	}
	a := &peerAttempts{peers: peers, key: key, wait: r.opts.PeerWait}
	srcs := make([]fill.Source, 0, maxPeerAttempts+1)
	for range maxPeerAttempts {
		srcs = append(srcs, a)
	}
	return append(srcs, up)
}

// fillBlob joins key's fill, starting it over sources, and opens the blob from it (see Blob).
// A peer's reader (forPeer) streams a blob of any size as it arrives: the peer verifies it.
func (r *Resolver) fillBlob(ctx context.Context, key fill.Key, sources []fill.Source, forPeer bool) (*Blob, error) {
	what := "blob " + key.String()
	f, err := r.fills.Join(ctx, key, sources)
	if err != nil {
		return nil, err
	}
	if err := f.Started(ctx); err != nil {
		f.Release()
		return nil, err
	}
	st := f.State()
	size := st.Size
	if st.FromStore || (size < 0 && st.Done && st.Err == nil) {
		f.Release()
		return r.local.open(ctx, key.Digest, statusOf(st))
	}
	if st.Err != nil && size < 0 {
		f.Release()
		return nil, notFoundIfDown(st.Err, what)
	}
	if size < 0 || (size <= fill.SmallBlob && !forPeer) {
		// No Content-Length upstream, or a small blob: wait for the whole blob, verified and
		// committed, then serve it from the cache. A client that gives up stops waiting (the
		// fill goes on for the next one).
		ended, ferr := f.Wait(ctx)
		st = f.State()
		f.Release()
		if !ended {
			return nil, ctx.Err()
		}
		if ferr != nil {
			return nil, notFoundIfDown(ferr, what)
		}
		return r.local.open(ctx, key.Digest, statusOf(st))
	}
	var once sync.Once
	return &Blob{
		Descriptor: ocispec.Descriptor{Digest: key.Digest, Size: size},
		Status:     statusOf(st),
		open: func(off, length int64) (io.ReadCloser, error) {
			if err := checkRange(off, length, size); err != nil {
				return nil, err
			}
			return f.Reader(ctx, off, length, forPeer), nil
		},
		close: func() error { once.Do(f.Release); return nil },
	}, nil
}

// statusOf is the cache status of what a fill serves: Peer when its bytes came from a peer.
func statusOf(st fill.State) CacheStatus {
	if st.Peer != "" {
		return Peer
	}
	return Miss
}

// Fills reports what the blob fills are doing.
func (r *Resolver) Fills() fill.Stats { return r.fills.Stats() }

// Filling reports how many bytes of dgst's fill for repoKey ("docker.io/library/alpine") have
// arrived, if one runs.
func (r *Resolver) Filling(repoKey string, dgst digest.Digest) (written int64, ok bool) {
	return r.fills.Progress(keyOf(repoKey, dgst))
}

// keyOf is the fill key of dgst for repoKey ("docker.io/library/alpine").
func keyOf(repoKey string, dgst digest.Digest) fill.Key {
	registry, repository, _ := strings.Cut(repoKey, "/")
	return fill.Key{Registry: registry, Repository: repository, Digest: dgst}
}

// registrySource is a blob from a registry: the first of its endpoints that answers, within
// the upstream timeout. It resumes (fill.Resumer) with a Range request to an endpoint whose
// client can send one (endpoints.RangeClient).
type registrySource struct {
	eps        []*endpoints.Endpoint
	key        fill.Key
	wait       time.Duration
	mismatches *atomic.Int64
}

var _ fill.Resumer = registrySource{}

func (s registrySource) Open(ctx context.Context) (fill.Body, error) {
	return s.open(ctx, func(ctx context.Context, c endpoints.Client) (io.ReadCloser, int64, error) {
		return c.GetBlob(ctx, s.key.Repository, s.key.Digest)
	})
}

// OpenAt asks for the bytes from off of the blob of size bytes with a Range request; an
// endpoint that cannot send one is errdefs.ErrNotImplemented, which Try does not count against
// it.
func (s registrySource) OpenAt(ctx context.Context, off, size int64) (fill.Body, error) {
	return s.open(ctx, func(ctx context.Context, c endpoints.Client) (io.ReadCloser, int64, error) {
		rc, ok := c.(endpoints.RangeClient)
		if !ok {
			return nil, 0, fmt.Errorf("upstream %s cannot send part of a blob: %w", c.Endpoint(), errdefs.ErrNotImplemented)
		}
		return rc.GetBlobRange(ctx, s.key.Repository, s.key.Digest, off, size-off)
	})
}

// open gets the blob's body with get, from the first endpoint that answers within the upstream
// timeout.
func (s registrySource) open(ctx context.Context, get func(context.Context, endpoints.Client) (io.ReadCloser, int64, error)) (fill.Body, error) {
	hctx, stop := context.WithCancelCause(ctx)
	headers := time.AfterFunc(s.wait, func() { stop(context.DeadlineExceeded) })
	defer headers.Stop()
	type got struct {
		body io.ReadCloser
		size int64
	}
	g, ep, err := endpoints.Try(hctx, s.eps, "get-blob", func(ctx context.Context, c endpoints.Client) (got, error) {
		body, size, err := get(ctx, c)
		return got{body, size}, err
	})
	if err != nil {
		stop(nil)
		return fill.Body{}, err
	}
	start := time.Now()
	return fill.Body{
		ReadCloser: g.body, Size: g.size, From: "upstream " + ep.Name(),
		Done: func(n int64, err error) {
			ep.Report(endpoints.Request{Op: "blob-body", Duration: time.Since(start), Bytes: n})
			// The bytes of a resumed fill came from more than one source: which sent the
			// wrong ones is not known.
			if mm := (*fill.MismatchError)(nil); errors.As(err, &mm) && !mm.Resumed {
				s.mismatches.Add(1)
			}
		},
	}, nil
}

// RangePeers is Peers that can also send part of a blob (package peer's Source can): a fill
// that broke after bytes reached clients resumes from another holder with it. OpenBlobAt
// returns the bytes from off (positive) to the end of the blob of size bytes, from a peer that
// holds it, never through a home's fill; the PeerBlob's Size is the whole blob's. Errors are
// OpenBlob's.
type RangePeers interface {
	OpenBlobAt(ctx context.Context, registry, repository string, dgst digest.Digest, off, size int64, skip []string) (PeerBlob, error)
}

// peerAttempts is a blob from the cluster (Peers.OpenBlob), asked again after a peer's bytes
// failed, without that peer, and not again once the peers had nothing. A fill opens its
// sources one at a time, so it needs no lock. It resumes (fill.Resumer) from a holder when
// the peers are RangePeers.
type peerAttempts struct {
	peers  Peers
	key    fill.Key
	wait   time.Duration
	skip   []string // the peers whose bytes failed this fill
	gaveUp bool     // the peers had nothing to give
}

var _ fill.Resumer = (*peerAttempts)(nil)

func (a *peerAttempts) Open(ctx context.Context) (fill.Body, error) {
	return a.open(ctx, func(ctx context.Context) (PeerBlob, error) {
		return a.peers.OpenBlob(ctx, a.key.Registry, a.key.Repository, a.key.Digest, a.skip)
	})
}

func (a *peerAttempts) OpenAt(ctx context.Context, off, size int64) (fill.Body, error) {
	rp, ok := a.peers.(RangePeers)
	if !ok {
		return fill.Body{}, fmt.Errorf("the peers cannot send part of blob %s: %w", a.key.Digest, errdefs.ErrNotFound)
	}
	return a.open(ctx, func(ctx context.Context) (PeerBlob, error) {
		return rp.OpenBlobAt(ctx, a.key.Registry, a.key.Repository, a.key.Digest, off, size, a.skip)
	})
}

// open gets a body from the peers with get, whose response headers must come within the
// peers' wait.
func (a *peerAttempts) open(ctx context.Context, get func(context.Context) (PeerBlob, error)) (fill.Body, error) {
	if a.gaveUp {
		return fill.Body{}, fmt.Errorf("no other peer can provide blob %s: %w", a.key.Digest, errdefs.ErrNotFound)
	}
	// The timer stops this attempt's context, in which the body is read.
	pctx, stop := context.WithCancelCause(ctx)
	headers := time.AfterFunc(a.wait, func() { stop(context.DeadlineExceeded) })
	pb, err := get(pctx)
	headers.Stop()
	if err == nil && pb.Body == nil {
		err = fmt.Errorf("peer %s answered without a body", pb.Peer)
	} else if err == nil && context.Cause(pctx) != nil {
		pb.Body.Close()
		err = context.Cause(pctx)
	}
	if err != nil {
		stop(nil)
		a.gaveUp = true
		return fill.Body{}, fmt.Errorf("the peers: %w", err)
	}
	return fill.Body{
		ReadCloser: pb.Body, Size: pb.Size, From: "peer " + pb.Peer, Peer: pb.Peer,
		Done: func(_ int64, err error) {
			if err == nil {
				return
			}
			a.skip = append(a.skip, pb.Peer)
			// The bytes of a resumed fill came from more than one source: which sent the
			// wrong ones is not known, and no peer is blamed.
			if mm := (*fill.MismatchError)(nil); errors.As(err, &mm) && !mm.Resumed {
				a.peers.Reject(pb.Peer, a.key.Digest)
			}
		},
	}, nil
}
