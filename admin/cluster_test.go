package admin

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/peer"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// fakeNode is a cluster membership of fixed members and figures.
type fakeNode struct{}

func (fakeNode) Name() string { return "node-a" }
func (fakeNode) Members() []cluster.Member {
	return []cluster.Member{
		{Name: "node-c", PeerAddr: "10.0.0.3:5102", State: cluster.Dead},
		{Name: "node-a", PeerAddr: "10.0.0.1:5102", State: cluster.Alive, Self: true},
		{Name: "node-b", PeerAddr: "10.0.0.2:5102", State: cluster.Suspect},
	}
}
func (fakeNode) Stats() cluster.Stats {
	return cluster.Stats{HomedKeys: 12, IndexEntries: 30, IndexBytes: 4096, IndexRefused: cluster.Refused{Quota: 2},
		LookupsFound: 5, LookupsNotFound: 2, LookupsFailed: 1}
}

// fakePeers holds digests at named peers, knows tags and serves manifests, and records what it
// was asked. It is the resolver's Peers too, for drills.
type fakePeers struct {
	held      map[digest.Digest][]string
	tags      map[string]digest.Digest // "registry/repository:tag"
	manifests map[digest.Digest][]byte

	mu    sync.Mutex
	asked []digest.Digest
}

func (p *fakePeers) Stats() peer.Stats {
	return peer.Stats{BytesIn: 100, BytesOut: 200, CoalescedFills: 3, Rejected: 1, PeerAnswers: 7}
}

func (p *fakePeers) Holders(_ context.Context, dgst digest.Digest) ([]string, error) {
	p.mu.Lock()
	p.asked = append(p.asked, dgst)
	p.mu.Unlock()
	return p.held[dgst], nil
}

func (p *fakePeers) Tag(_ context.Context, registry, repository, tag string) (digest.Digest, time.Time, error) {
	if d, ok := p.tags[registry+"/"+repository+":"+tag]; ok {
		return d, time.Time{}, nil
	}
	return "", time.Time{}, errdefs.ErrNotFound
}

func (p *fakePeers) OpenBlob(context.Context, string, string, digest.Digest, []string) (resolver.PeerBlob, error) {
	return resolver.PeerBlob{}, errdefs.ErrNotFound
}
func (p *fakePeers) Reject(string, digest.Digest) {}
func (p *fakePeers) Manifest(_ context.Context, _, _ string, dgst digest.Digest) (string, []byte, string, error) {
	if b, ok := p.manifests[dgst]; ok {
		return "", b, "node-b", nil
	}
	return "", nil, "", errdefs.ErrNotFound
}
func (p *fakePeers) Cached(string, string, digest.Digest)                         {}
func (p *fakePeers) Revalidated(string, string, string, digest.Digest, time.Time) {}

var _ resolver.Peers = (*fakePeers)(nil)

func TestStatusCluster(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	peerDate := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	fromPeers := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("peers' manifest"), Size: 15}
	c := newDrillService(t, up, func(s *Service) {
		s.Cluster, s.Peers = fakeNode{}, &fakePeers{}
		// Two tags: one the peers' records resolved, one the registry confirmed.
		if err := s.Store.SetRefAt(t.Context(), "r.io/app:peers", fromPeers, resolver.PeersEndpoint, peerDate); err != nil {
			t.Fatal(err)
		}
		if err := s.Store.SetRefAt(t.Context(), "r.io/app:registry", fromPeers, "https://r.io", peerDate); err != nil {
			t.Fatal(err)
		}
	})
	st, err := c.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cs := st.Cluster
	if cs == nil {
		t.Fatal("status has no cluster section with the tier on")
	}
	names := []string{}
	for _, m := range cs.Members {
		names = append(names, m.Name+"="+string(m.State))
	}
	if cs.Node != "node-a" || !slices.Equal(names, []string{"node-a=alive", "node-b=suspect", "node-c=dead"}) || !cs.Members[0].Self || cs.Members[1].Peer != "10.0.0.2:5102" {
		t.Errorf("members: node %q, %v (%+v)", cs.Node, names, cs.Members)
	}
	if cs.MembersByState[cluster.Alive] != 1 || cs.MembersByState[cluster.Dead] != 1 || cs.HomedKeys != 12 || cs.IndexEntries != 30 ||
		cs.LookupsFound != 5 || cs.LookupsFailed != 1 || cs.PeerBytesIn != 100 || cs.PeerBytesOut != 200 || cs.CoalescedFills != 3 || cs.Rejected != 1 {
		t.Errorf("cluster status %+v", cs)
	}
	samePeerTag := func(a, b PeerTag) bool { return a.Ref == b.Ref && a.Digest == b.Digest && a.Date.Equal(b.Date) }
	if want := []PeerTag{{Ref: "r.io/app:peers", Digest: fromPeers.Digest, Date: peerDate}}; !slices.EqualFunc(cs.PeerTags, want, samePeerTag) {
		t.Errorf("peer tags %+v, want %+v", cs.PeerTags, want)
	}
	if cs.IndexRefused["quota"] != 2 || cs.IndexRefused["full"] != 0 || len(cs.IndexRefused) != 5 {
		t.Errorf("index refusals %v, want 2 past the quota, and every reason", cs.IndexRefused)
	}

	// With the tier off, no section.
	c = newDrillService(t, up)
	if st, err := c.Status(t.Context()); err != nil || st.Cluster != nil {
		t.Errorf("single node: cluster %+v, err %v; want none", st.Cluster, err)
	}
}

func TestImagesAndDrillNamePeers(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "v1", 16<<10)
	up.Push(t, "app", "v2", 16<<10)
	v3img := up.Push(t, "app", "v3", 16<<10)
	peers := &fakePeers{held: map[digest.Digest][]string{}, tags: map[string]digest.Digest{}, manifests: map[digest.Digest][]byte{}}
	c := newDrillServiceWithPeers(t, up, peers, func(s *Service) { s.Cluster, s.Peers = fakeNode{}, peers })
	ctx := t.Context()
	v1, v3 := drillRegistry+"/app:v1", drillRegistry+"/app:v3"

	// v1 cached here; its digest is held by two peers too.
	if rep, err := c.Drill(ctx, DrillRequest{Refs: []string{v1}, Fix: true}); err != nil || rep.Ready != 1 {
		t.Fatalf("warm v1: %+v, %v", rep, err)
	}
	imgs, err := c.Images(ctx, ImagesRequest{})
	if err != nil || len(imgs.Images) != 1 {
		t.Fatalf("images: %+v, %v", imgs, err)
	}
	d1 := imgs.Images[0].Digest
	peers.held[d1] = []string{"node-c", "node-b"}
	// v3 is not cached here: only the peers' records know its tag, and node-b holds all of it.
	d3, body := registrytest.Digest(t, v3img), registrytest.RawManifest(t, v3img)
	peers.tags[drillRegistry+"/app:v3"] = d3
	peers.manifests[d3] = body
	for _, d := range registrytest.Blobs(t, v3img) {
		peers.held[d] = []string{"node-b"}
	}

	imgs, err = c.Images(ctx, ImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !imgs.Cluster || !slices.Equal(imgs.Images[0].Peers, []string{"node-b", "node-c"}) {
		t.Errorf("images with the cluster on: cluster %v, peers %v; want node-b, node-c", imgs.Cluster, imgs.Images[0].Peers)
	}

	rep, err := c.Drill(ctx, DrillRequest{Refs: []string{v1, drillRegistry + "/app:v2", v3, "Not A Ref"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rep.Results {
		got = append(got, r.ServedBy)
	}
	if want := []string{"this node", "nothing", "peer node-b", "nothing"}; !rep.Cluster || !slices.Equal(got, want) {
		t.Errorf("served by %q, want %q (cluster %v)", got, want, rep.Cluster)
	}
	if !slices.Contains(peers.asked, registrytest.Blobs(t, v3img)[0]) {
		t.Errorf("the peers were not asked who holds v3's blobs: %v", peers.asked)
	}
}

// TestHoldersBounded: a listing asks the cluster about at most maxHoldersImages digests.
func TestHoldersBounded(t *testing.T) {
	t.Parallel()
	peers := &fakePeers{}
	s := &Service{Peers: peers}
	var dgsts []digest.Digest
	for i := range maxHoldersImages + 50 {
		dgsts = append(dgsts, digest.FromString(strings.Repeat("x", i)))
	}
	got := s.holders(t.Context(), dgsts)
	if len(peers.asked) != maxHoldersImages || len(got) != maxHoldersImages {
		t.Errorf("asked about %d digests, answered %d; want %d", len(peers.asked), len(got), maxHoldersImages)
	}
}
