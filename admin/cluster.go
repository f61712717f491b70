package admin

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/peer"
	"github.com/lifeboat-dev/lifeboat/plan"
)

// ClusterNode is what the admin service reports of this node's membership; *cluster.Node is
// one.
type ClusterNode interface {
	Name() string
	// Members lists the members, this node included, sorted by name.
	Members() []cluster.Member
	Stats() cluster.Stats
}

// ClusterPeers is what the admin service asks of the peers; *peer.Source is one.
type ClusterPeers interface {
	Stats() peer.Stats
	// Holders names the peers that hold a blob or manifest; empty when none does. An error
	// means the cluster could not tell.
	Holders(ctx context.Context, dgst digest.Digest) ([]string, error)
}

var (
	_ ClusterNode  = (*cluster.Node)(nil)
	_ ClusterPeers = (*peer.Source)(nil)
)

// ClusterStatus is the cluster tier as this node sees it.
type ClusterStatus struct {
	// Node is this node's member name.
	Node string `json:"node"`
	// Members are every member this node knows, itself included, sorted by name.
	Members []ClusterMember `json:"members"`
	// MembersByState counts them: alive, suspect, dead, left.
	MembersByState map[cluster.MemberState]int `json:"membersByState"`
	// HomedKeys is how many keys this node's index holds records of, as one of their homes;
	// IndexEntries how many records, IndexBytes about how much memory they take.
	HomedKeys    int   `json:"homedKeys"`
	IndexEntries int   `json:"indexEntries"`
	IndexBytes   int64 `json:"indexBytes"`
	// IndexRefused counts the records announced to the index that it did not keep, by reason: full (the index held its bound), quota (the sender's records held their share of
	// it), shape (neither a digest nor a tag), not_home (a key this node is not a home of),
	// future (a tag record dated past this node's clock by more than the allowed skew).
	IndexRefused map[string]int64 `json:"indexRefused"`
	// PeerTags are the cached tags answered from the peers' records, resolved from them while
	// the registry could not answer, and not confirmed by it since; this node does not
	// announce them as its own.
	PeerTags []PeerTag `json:"peerTags"`
	// Lookups of who holds a key, by result.
	LookupsFound    int64 `json:"lookupsFound"`
	LookupsNotFound int64 `json:"lookupsNotFound"`
	LookupsFailed   int64 `json:"lookupsFailed"`
	// PeerBytesIn came from peers; PeerBytesOut went to peers.
	PeerBytesIn  int64 `json:"peerBytesIn"`
	PeerBytesOut int64 `json:"peerBytesOut"`
	// CoalescedFills are blobs fetched through their home's fill from the registry.
	CoalescedFills int64 `json:"coalescedFills"`
	// Rejected counts blobs a peer sent with bytes that failed verification.
	Rejected int64 `json:"rejected"`
	// PeerAnswers counts blobs, manifests and tags served from peers to this node.
	PeerAnswers int64 `json:"peerAnswers"`
}

// PeerTag is a cached tag resolved from the peers' records.
type PeerTag struct {
	Ref    string        `json:"ref"`
	Digest digest.Digest `json:"digest"`
	// Date is the registry Date of the peers' record it was resolved from.
	Date time.Time `json:"date"`
}

// ClusterMember is one member of the cluster.
type ClusterMember struct {
	Name  string              `json:"name"`
	Peer  string              `json:"peer"`
	Self  bool                `json:"self,omitempty"`
	State cluster.MemberState `json:"state"`
}

// clusterStatus reports the cluster tier, or nil when it is off.
func (s *Service) clusterStatus(ctx context.Context) *ClusterStatus {
	if s.Cluster == nil {
		return nil
	}
	st := s.Cluster.Stats()
	cs := &ClusterStatus{
		Node:           s.Cluster.Name(),
		Members:        []ClusterMember{},
		MembersByState: map[cluster.MemberState]int{},
		HomedKeys:      st.HomedKeys, IndexEntries: st.IndexEntries, IndexBytes: st.IndexBytes, IndexRefused: st.IndexRefused.Reasons(),
		LookupsFound: st.LookupsFound, LookupsNotFound: st.LookupsNotFound, LookupsFailed: st.LookupsFailed,
		PeerTags: s.peerTags(ctx),
	}
	for _, m := range s.Cluster.Members() {
		cs.Members = append(cs.Members, ClusterMember{Name: m.Name, Peer: m.PeerAddr, Self: m.Self, State: m.State})
		cs.MembersByState[m.State]++
	}
	slices.SortFunc(cs.Members, func(a, b ClusterMember) int { return strings.Compare(a.Name, b.Name) })
	if s.Peers != nil {
		ps := s.Peers.Stats()
		cs.PeerBytesIn, cs.PeerBytesOut, cs.CoalescedFills, cs.Rejected, cs.PeerAnswers = ps.BytesIn, ps.BytesOut, ps.CoalescedFills, ps.Rejected, ps.PeerAnswers
	}
	return cs
}

// peerTags lists the cached tags resolved from the peers' records (empty when the cache
// cannot tell: status reports what it can).
func (s *Service) peerTags(ctx context.Context) []PeerTag {
	out := []PeerTag{}
	refs, err := s.Resolver.PeerTags(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot list the tags resolved from the peers' records")
		return out
	}
	for _, ref := range refs {
		out = append(out, PeerTag{Ref: ref.Name, Digest: ref.Target.Digest, Date: ref.UpstreamDate})
	}
	return out
}

// Bounds on asking the cluster who holds the listed images: a listing asks about this many
// images at most, this many at a time, and gives up on the rest after maxHoldersWait.
const (
	maxHoldersImages   = 256
	holdersConcurrency = 8
	maxHoldersWait     = 3 * time.Second
)

// holders asks the cluster which peers hold each digest (at most maxHoldersImages of them,
// within maxHoldersWait): the answer has an entry, possibly empty, for each digest the
// cluster answered about.
func (s *Service) holders(ctx context.Context, dgsts []digest.Digest) map[digest.Digest][]string {
	ctx, cancel := context.WithTimeout(ctx, maxHoldersWait)
	defer cancel()
	dgsts = dgsts[:min(len(dgsts), maxHoldersImages)]
	var (
		mu  sync.Mutex
		out = map[digest.Digest][]string{}
		wg  sync.WaitGroup
		sem = make(chan struct{}, holdersConcurrency)
	)
	for _, d := range dgsts {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			names, err := s.Peers.Holders(ctx, d)
			if err != nil {
				return
			}
			names = slices.Clone(names)
			slices.Sort(names)
			if names == nil {
				names = []string{}
			}
			mu.Lock()
			out[d] = names
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// servedBy completes what the planner's Check said could serve each image of rep during an
// outage (Readiness.ServedBy: this node, the peers that hold all it lacks, or nothing): an image
// that could not be checked at all is served by nothing.
func (s *Service) servedBy(rep *DrillReport) {
	rep.Cluster = s.Peers != nil
	for i, r := range rep.Results {
		if r.Error != "" || r.ServedBy == "" {
			rep.Results[i].ServedBy = plan.ServedByNothing
		}
	}
}
