package resolver

import (
	"context"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
)

// Peer: served from another lifeboat of the cluster (a blob, a manifest, or a tag resolved from
// the peers' records during an outage).
const Peer CacheStatus = "peer"

// Peers is the cluster tier as the resolver uses it (package peer implements it over package
// cluster). The resolver never calls it for a registry whose content is not shared
// (Options.NotShared), nor while it answers a request that came from a peer (see FromPeer).
//
// Errors: errdefs.ErrNotFound when no peer can provide the thing (the resolver then goes to the
// registry itself); anything else is a failure of the peers, which the resolver treats the same
// way, after logging it.
type Peers interface {
	// OpenBlob returns the blob's body from the cluster: from a peer that holds it, or, when
	// none does and the digest's first home is another node, through that home's coalesced
	// fill from the registry. Peers in skip (which sent bad bytes for this blob) are not asked.
	// The body is unverified: the resolver verifies it while it caches it.
	OpenBlob(ctx context.Context, registry, repository string, dgst digest.Digest, skip []string) (PeerBlob, error)
	// Reject tells that peer sent bytes of dgst that failed verification (for metrics and to
	// penalise it).
	Reject(peer string, dgst digest.Digest)
	// Manifest fetches a manifest by digest from a peer that holds it. Unverified: the resolver
	// checks it against dgst.
	Manifest(ctx context.Context, registry, repository string, dgst digest.Digest) (mediaType string, body []byte, peer string, err error)
	// Tag resolves a tag from the peers' records, for when the registry cannot answer: the
	// digest with the newest registry Date, ties broken by the number of holders, then the
	// lowest digest.
	Tag(ctx context.Context, registry, repository, tag string) (digest.Digest, error)
	// Holders names the peers that hold a blob or manifest (for drill and images); empty when
	// none does.
	Holders(ctx context.Context, dgst digest.Digest) ([]string, error)
	// Cached tells the cluster this node now holds dgst (a blob or manifest it cached).
	Cached(registry, repository string, dgst digest.Digest)
	// Revalidated tells the cluster the registry resolved the tag to dgst, with its Date
	// header (the time of the answer when it sent none).
	Revalidated(registry, repository, tag string, dgst digest.Digest, date time.Time)
}

// PeerBlob is a blob body from a peer.
type PeerBlob struct {
	Body io.ReadCloser
	// Size is the blob's size (the peer's Content-Length).
	Size int64
	// Peer is the node that sent it.
	Peer string
	// ViaHome is true when it came through the digest's home filling it from the registry.
	ViaHome bool
}

// FromPeer marks ctx as a request from a peer of the cluster: the resolver answers it from this
// node's cache only (never asking its own peers, so requests cannot loop), refuses registries
// that are not shared, and, for a blob it does not hold, fills it from the registry only when
// fill is true (the digest's home coalescing a fill for the cluster); such a fill streams to the
// peer as it arrives, with only its last byte held back until it verified, since the peer
// verifies the bytes itself.
func FromPeer(ctx context.Context, fill bool) context.Context {
	return context.WithValue(ctx, fromPeerKey{}, peerRequest{fill: fill})
}

type fromPeerKey struct{}

type peerRequest struct{ fill bool }

// fromPeer reports whether ctx is a peer's request, and whether it may fill.
func fromPeer(ctx context.Context) (req peerRequest, ok bool) {
	req, ok = ctx.Value(fromPeerKey{}).(peerRequest)
	return req, ok
}
