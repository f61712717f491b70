// Package peer is the cluster tier's transfers: the peer listener's handler (the OCI pull API
// for other lifeboats, over mutual TLS, over this node's resolver, plus package cluster's index
// requests) and Source, which fetches blobs, manifests and tags from other nodes for this
// node's resolver (resolver.Peers).
package peer

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// HandlerOptions configure the peer listener's handler.
type HandlerOptions struct {
	// Observe, when set, is called once for every /v2/ request answered (as the mirror's).
	Observe func(mirror.Answer)
	// Budget's HeaderDelay is how long a blob answer waits for its first byte (a coalesced
	// fill waiting on the registry) before its headers go without it; zero fields are those of
	// NewBudget's default.
	Budget Budget
	// Source, when set, counts the blob and manifest bytes the handler sends to peers in its
	// Stats.BytesOut: the daemon passes this node's Source, so one Stats has both directions.
	Source *Source
}

// Authenticator names the node a peer request comes from, from the TLS client certificate of
// its connection, and refuses it (an error) when cluster.HeaderPeer names another node
// (cluster.Node is one, with the handler served on its Listener).
type Authenticator interface {
	Authenticate(req *http.Request) (node string, err error)
}

// Cluster is what a Source needs of the cluster (cluster.Node is one).
type Cluster interface {
	Name() string
	Lookup(ctx context.Context, key string, opts ...cluster.LookupOption) ([]cluster.Holder, error)
	Homes(key string) []cluster.Member
	Member(name string) (cluster.Member, bool)
	Announce(recs ...cluster.Record)
	// Client makes requests to peers, at https://<peer address>/, with this node's
	// certificate.
	Client() *http.Client
}

var _ Cluster = (*cluster.Node)(nil)

// SourceOptions configure a Source.
type SourceOptions struct {
	// Coalesce sends a blob that no peer holds through its first home's fill (default on in
	// the daemon: [cluster] coalesce).
	Coalesce bool
	// Budget times the requests to peers: HeaderTimeout bounds the wait for a peer's response
	// headers (a holder that does not answer in time is skipped for the next), HedgeDelay is
	// how long a request to one holder goes unanswered before the next holder is asked too
	// (the first to answer sends the blob or manifest, the others are ended), IdleTimeout ends
	// a peer's body that brings no byte for that long. Zero fields: NewBudget's at the default
	// upstream timeout (the daemon passes NewBudget of [resolve] upstream_timeout).
	Budget Budget
	// RejectFor is how long a peer that sent bad bytes is not asked again for any blob
	// (default 10 min).
	RejectFor time.Duration
	// Breaker tunes the circuit breaker kept per peer (see BreakerOptions).
	Breaker BreakerOptions
}

// DefaultRejectFor is SourceOptions.RejectFor's default.
const DefaultRejectFor = 10 * time.Minute

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
	// PeersDown is how many peers the breaker holds down now; BreakerTrips counts the times
	// one was marked down, BreakerSkips the requests (lookups of a home, transfers) not sent
	// to a peer because it was down, Probes the probes of down peers.
	PeersDown                          int
	BreakerTrips, BreakerSkips, Probes int64
}

// Source is resolver.Peers over a cluster node, with a circuit breaker per peer. Safe for
// concurrent use; Close it to stop the probes of the peers that are down.
type Source struct {
	node    Cluster
	opts    SourceOptions
	breaker *breaker

	bytesIn, bytesOut, coalescedFills, rejected, peerAnswers atomic.Int64

	mu sync.Mutex
	// bad holds the peers that sent bad bytes, until when they are not asked (at most
	// maxRejectedPeers).
	bad map[string]time.Time
}

var (
	_ resolver.Peers      = (*Source)(nil)
	_ resolver.RangePeers = (*Source)(nil)
)

// NewSource returns the resolver's view of the cluster through node.
func NewSource(node Cluster, opts SourceOptions) *Source {
	opts.Budget = opts.Budget.withDefaults()
	if opts.RejectFor <= 0 {
		opts.RejectFor = DefaultRejectFor
	}
	s := &Source{node: node, opts: opts, bad: make(map[string]time.Time)}
	s.breaker = newBreaker(opts.Breaker, s.ping, node.Member)
	return s
}

// Close stops the probes of the peers that are down.
func (s *Source) Close() { s.breaker.close() }
