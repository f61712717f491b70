// Package cluster is lifeboat's cluster tier below the transfers: membership and failure
// detection (hashicorp/memberlist), rendezvous hashing of keys to their home nodes, the homes'
// in-memory index of which node holds what, the batched announcements that feed it, and hedged
// lookups that ask it. Blob and manifest bytes never pass through this package: peers fetch
// them from each other with the OCI pull API (package peer), over the same peer listener (mutual
// TLS, Node.Listener) that carries this package's index requests.
//
// It imports nothing of lifeboat's but internal/hedge and internal/oci.
package cluster

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/hashicorp/memberlist"
	"github.com/opencontainers/go-digest"
)

// Keys of the index. A blob's key is its digest; a tag's is "registry/repository:tag".

// BlobKey is the index key of a blob.
func BlobKey(dgst digest.Digest) string { return dgst.String() }

// TagKey is the index key of a tag of a repository of a registry ("docker.io").
func TagKey(registry, repository, tag string) string {
	return registry + "/" + repository + ":" + tag
}

// Record is what a node announces about one key it holds: a blob (Key only), or a tag with the
// digest it resolved to and the registry's Date header of that revalidation.
type Record struct {
	Key    string        `json:"k"`
	Digest digest.Digest `json:"d,omitempty"` // tags only
	Date   time.Time     `json:"t,omitzero"`  // tags only: the registry's Date header
}

// Holder is one node's record of a key, as a home knows it.
type Holder struct {
	Node   string        `json:"n"`
	Digest digest.Digest `json:"d,omitempty"` // tags only
	Date   time.Time     `json:"t,omitzero"`  // tags only
}

// MemberState is a member's state as memberlist sees it.
type MemberState string

// Member states.
const (
	Alive   MemberState = "alive"
	Suspect MemberState = "suspect"
	Dead    MemberState = "dead"
	Left    MemberState = "left"
)

// Member is one node of the cluster.
type Member struct {
	Name string
	// PeerAddr is the host:port of its peer listener (from its memberlist metadata).
	PeerAddr string
	State    MemberState
	// Self is true for this node.
	Self bool
}

// Config configures a Node. Durations left zero get the defaults named beside them.
type Config struct {
	// NodeName is this node's unique member name (the daemon defaults it to the host name).
	NodeName string
	// GossipAddress is the host:port memberlist binds, TCP and UDP.
	GossipAddress string
	// AdvertiseAddress is the IP other nodes reach this one at, for gossip and the peer
	// listener (the daemon defaults it to the first non-loopback address).
	AdvertiseAddress string
	// PeerPort is the port of this node's peer listener; members learn AdvertiseAddress:PeerPort
	// from its metadata.
	PeerPort int
	// Join lists host:port or DNS-name:port of nodes to join; names are resolved again every
	// RejoinInterval (30 s), and the addresses that are not an alive member's are joined again,
	// so the first node of a cluster finds the others, and so does a seed that restarted or
	// the other side of a healed partition.
	Join           []string
	RejoinInterval time.Duration
	// Secret is the cluster key (32 bytes): gossip is encrypted with a key derived from it, and
	// peers speak mutual TLS with certificates of a CA derived from it (see Authority).
	Secret []byte
	// Label is memberlist's cluster label: packets with another label are dropped.
	// Default "lifeboat".
	Label string
	// Replicas is how many home nodes each key has (default 3).
	Replicas int
	// AnnounceInterval (250 ms) is how often queued records go to their homes, in one batch per
	// home; RefreshInterval (5 min) how often this node announces everything it holds (Local),
	// and HolderTTL (3×RefreshInterval) how long a home keeps a record nobody refreshed.
	AnnounceInterval, RefreshInterval, HolderTTL time.Duration
	// HedgeDelay (5 ms) is how long a lookup waits for a home before it asks the next one too;
	// LookupTimeout (500 ms) bounds a whole lookup.
	HedgeDelay, LookupTimeout time.Duration
	// MaxIndexBytes bounds the memory of the index this node keeps as a home, as Index.Size
	// estimates it (default DefaultMaxIndexBytes), and each other node's records to a quarter
	// of it; past them new records are refused and counted, refreshes still land.
	MaxIndexBytes int64
	// MaxClockSkew (DefaultMaxClockSkew) is how far past this node's clock the registry Date of
	// a tag record another node announces may be; a record dated later is refused, so that a
	// forged date wins an outage's resolution of the tag by that much at most.
	MaxClockSkew time.Duration
	// Local calls yield for every record this node holds and may share, for the full refresh.
	Local func(ctx context.Context, yield func(Record) bool) error
	// WrapTransport, when set, wraps the transport of this node's requests to peers (the
	// daemon passes the outage simulator's peer wrapper); the transport it wraps dials peers
	// with mutual TLS.
	WrapTransport func(http.RoundTripper) http.RoundTripper
	// ObserveLookup, when set, is called after every lookup (for metrics).
	ObserveLookup func(d time.Duration, found bool, err error)

	// rehomeDelay (1 s) is how long after a membership change this node announces to its
	// records' new homes, so that a burst of changes makes one pass.
	rehomeDelay time.Duration
	// homeGrace (defaultHomeGrace) is how long a member that joined does not count against
	// this node being a key's home, when it decides whether to keep another node's record
	// (see homeCheck).
	homeGrace time.Duration
	// tuneMemberlist, when set, adjusts memberlist's configuration last (tests shorten its
	// timings with it).
	tuneMemberlist func(*memberlist.Config)
	// clock is the time of this node's certificates and of its checks of its peers' (time.Now;
	// tests set a clock that is off).
	clock func() time.Time
}

// Stats is what a node counts, for status and metrics.
type Stats struct {
	Members map[MemberState]int
	// HomedKeys is how many keys this node's index holds records of, IndexEntries how many
	// records, IndexBytes about how much memory they take.
	HomedKeys, IndexEntries int
	IndexBytes              int64
	// IndexRefused counts the records announced to the index (by other nodes, or this one:
	// full and quota only) that it did not keep, by reason.
	IndexRefused Refused
	// Lookups by outcome: found, not found, failed (no home answered).
	LookupsFound, LookupsNotFound, LookupsFailed int64
	// AnnouncedRecords went out to homes; ReceivedRecords came in from other nodes.
	AnnouncedRecords, ReceivedRecords int64
	// AnnounceDropped counts records Announce could not queue (the next full refresh sends
	// them).
	AnnounceDropped int64
	// HandshakeFailures counts the failed TLS handshakes with peers, and the requests refused
	// for the node they claim, by direction and reason: every direction and reason, zeros
	// included.
	HandshakeFailures []HandshakeFailures
}

// Node is this lifeboat's membership of the cluster. Its methods are safe for concurrent use.
type Node struct {
	cfg Config
	log *log.Entry
	// tls is the node's side of the peer transport: its certificate, its CA, the failures.
	tls *peerTLS
	// client is the peer client (Client) over transport, which Close closes.
	client    *http.Client
	transport *http.Transport

	// The parts the node wires together: membership runs memberlist, which tells view its
	// events; home is this node as a home of keys; announcer sends this node's records to
	// theirs. They all read the members from view.
	membership *membership
	view       *view
	home       *home
	announcer  *announcer

	stats counters // of the lookups this node makes

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}
