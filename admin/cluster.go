package admin

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/peer"
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
	// Tag resolves a tag from the peers' records, with the winning record's registry Date.
	// errdefs.ErrNotFound when no peer knows it.
	Tag(ctx context.Context, registry, repository, tag string) (digest.Digest, time.Time, error)
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
	// IndexDropped counts records refused because the index was full.
	IndexDropped int64 `json:"indexDropped"`
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

// ClusterMember is one member of the cluster.
type ClusterMember struct {
	Name  string              `json:"name"`
	Peer  string              `json:"peer"`
	Self  bool                `json:"self,omitempty"`
	State cluster.MemberState `json:"state"`
}

// clusterStatus reports the cluster tier, or nil when it is off.
func (s *Service) clusterStatus() *ClusterStatus {
	if s.Cluster == nil {
		return nil
	}
	st := s.Cluster.Stats()
	cs := &ClusterStatus{
		Node:           s.Cluster.Name(),
		Members:        []ClusterMember{},
		MembersByState: map[cluster.MemberState]int{},
		HomedKeys:      st.HomedKeys, IndexEntries: st.IndexEntries, IndexBytes: st.IndexBytes, IndexDropped: st.IndexDropped,
		LookupsFound: st.LookupsFound, LookupsNotFound: st.LookupsNotFound, LookupsFailed: st.LookupsFailed,
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

// What can serve an image during an outage, in DrillResult.ServedBy.
const (
	ServedByThisNode = "this node"
	ServedByPeer     = "peer"
	ServedByNothing  = "nothing"
)

// servedBy fills in what could serve each image of rep during an outage: this node when it is
// ready; else, with the cluster tier on, a peer that holds the image's manifest (the tag
// resolved from this node's cache, or from the peers' records); else nothing.
func (s *Service) servedBy(ctx context.Context, rep *DrillReport) {
	rep.Cluster = s.Peers != nil
	var ask []digest.Digest
	roots := make([]digest.Digest, len(rep.Results))
	for i, r := range rep.Results {
		switch {
		case r.Ready:
			rep.Results[i].ServedBy = ServedByThisNode
			continue
		case s.Peers == nil || r.Error != "":
			rep.Results[i].ServedBy = ServedByNothing
			continue
		}
		if roots[i] = s.rootDigest(ctx, r.Ref); roots[i] != "" {
			ask = append(ask, roots[i])
		}
	}
	var held map[digest.Digest][]string
	if len(ask) > 0 {
		held = s.holders(ctx, ask)
	}
	for i, r := range rep.Results {
		if r.ServedBy != "" {
			continue
		}
		rep.Results[i].ServedBy = ServedByNothing
		if peers := held[roots[i]]; len(peers) > 0 {
			rep.Results[i].Peers = peers
			rep.Results[i].ServedBy = ServedByPeer + " " + peers[0]
		}
	}
}

// rootDigest is the digest the normalized ref names: its own, the one this node cached for
// its tag, or the one the peers' records give the tag; "" when none is known.
func (s *Service) rootDigest(ctx context.Context, ref string) digest.Digest {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ""
	}
	if c, ok := named.(reference.Canonical); ok {
		return c.Digest()
	}
	if cached, err := s.Store.GetRef(ctx, ref); err == nil {
		return cached.Target.Digest
	}
	tagged, ok := named.(reference.Tagged)
	if !ok {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, maxHoldersWait)
	defer cancel()
	dgst, _, err := s.Peers.Tag(ctx, reference.Domain(named), reference.Path(named), tagged.Tag())
	if err != nil {
		return ""
	}
	return dgst
}
