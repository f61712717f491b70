// Package peer is the cluster tier's transfers: the peer listener's handler (the OCI pull API
// for other lifeboats, authenticated, over this node's resolver, plus package cluster's index
// requests) and Source, which fetches blobs, manifests and tags from other nodes for this
// node's resolver (resolver.Peers).
package peer

import (
	"context"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// HandlerOptions configure the peer listener's handler.
type HandlerOptions struct {
	// Observe, when set, is called once for every /v2/ request answered (as the mirror's).
	Observe func(mirror.Answer)
	// Shared reports whether a registry's content may be served to peers.
	Shared func(registry string) bool
}

// Authenticator checks a peer request's token (cluster.Signer is one).
type Authenticator interface {
	Verify(req *http.Request) (node string, err error)
}

// Cluster is what a Source needs of the cluster (cluster.Node is one).
type Cluster interface {
	Name() string
	Lookup(ctx context.Context, key string) ([]cluster.Holder, error)
	Homes(key string) []cluster.Member
	Member(name string) (cluster.Member, bool)
	Announce(recs ...cluster.Record)
	// Client signs its requests to peers.
	Client() *http.Client
}

var _ Cluster = (*cluster.Node)(nil)

// NewHandler returns the peer listener's handler. Every request must carry a valid token
// (auth), else it gets 401 and nothing else happens. /lifeboat/v1/ goes to index (the
// cluster node's handler); /v2/ is the OCI pull API over backend, with the request marked as a peer's
// (resolver.FromPeer; cluster.HeaderFill asks for a coalesced fill), so it is answered from this
// node's cache (or its fill) and never forwarded to other peers.
func NewHandler(auth Authenticator, index http.Handler, backend mirror.Backend, opts HandlerOptions) http.Handler {
	panic("not implemented yet")
}

// SourceOptions configure a Source.
type SourceOptions struct {
	// Coalesce sends a blob that no peer holds through its first home's fill (default on in
	// the daemon: [cluster] coalesce).
	Coalesce bool
	// HeaderTimeout bounds the wait for a peer's response headers (default 2 s); a holder that
	// does not answer in time is skipped for the next.
	HeaderTimeout time.Duration
	// RejectFor is how long a peer that sent bad bytes is not asked again for any blob
	// (default 10 min).
	RejectFor time.Duration
}

// Stats is what a Source counts, for status and metrics.
type Stats struct {
	// BytesIn came from peers; BytesOut went to peers (counted by the handler).
	BytesIn, BytesOut int64
	// CoalescedFills are blobs fetched through their home's fill.
	CoalescedFills int64
	// Rejected counts blobs a peer sent with bytes that failed verification.
	Rejected int64
	// PeerAnswers counts blobs, manifests and tags served from peers to this node.
	PeerAnswers int64
}

// Source is resolver.Peers over a cluster node.
type Source struct {
	node Cluster
	opts SourceOptions
}

var _ resolver.Peers = (*Source)(nil)

// NewSource returns the resolver's view of the cluster through node.
func NewSource(node Cluster, opts SourceOptions) *Source {
	return &Source{node: node, opts: opts}
}

// Stats reports what the source counts.
func (s *Source) Stats() Stats { panic("not implemented yet") }

func (s *Source) OpenBlob(ctx context.Context, registry, repository string, dgst digest.Digest, skip []string) (resolver.PeerBlob, error) {
	panic("not implemented yet")
}

func (s *Source) Reject(peer string, dgst digest.Digest) { panic("not implemented yet") }

func (s *Source) Manifest(ctx context.Context, registry, repository string, dgst digest.Digest) (string, []byte, string, error) {
	panic("not implemented yet")
}

func (s *Source) Tag(ctx context.Context, registry, repository, tag string) (digest.Digest, time.Time, error) {
	panic("not implemented yet")
}

func (s *Source) Holders(ctx context.Context, dgst digest.Digest) ([]string, error) {
	panic("not implemented yet")
}

func (s *Source) Cached(registry, repository string, dgst digest.Digest) {
	panic("not implemented yet")
}

func (s *Source) Revalidated(registry, repository, tag string, dgst digest.Digest, date time.Time) {
	panic("not implemented yet")
}
