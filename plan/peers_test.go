package plan

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// peerNode is another lifeboat of the cluster, in process: a real resolver over its own cache.
type peerNode struct {
	name  string
	p     *Planner
	store *cache.Store
}

// testPeers is resolver.Peers over peer nodes, asked as package peer asks them: with
// requests to their resolver.PeerView, so that the bytes really come from another cache.
type testPeers struct {
	t     *testing.T
	nodes []*peerNode
	// forbid makes asking the peers (OpenBlob, Manifest, Tag, Holders) fail the test.
	forbid atomic.Bool
}

func (p *testPeers) asked(what string) {
	if p.forbid.Load() {
		p.t.Errorf("the resolver asked its peers (%s) when it must not", what)
	}
}

func (p *testPeers) OpenBlob(ctx context.Context, registry, repository string, dgst digest.Digest, skip []string) (resolver.PeerBlob, error) {
	p.asked("OpenBlob")
	for _, n := range p.nodes {
		if slices.Contains(skip, n.name) {
			continue
		}
		b, err := n.p.r.ForPeers().Blob(ctx, registry, repository, dgst)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return resolver.PeerBlob{}, err
		}
		rc, err := b.Reader(0, b.Descriptor.Size)
		if err != nil {
			b.Close()
			return resolver.PeerBlob{}, err
		}
		return resolver.PeerBlob{Body: &peerBody{ReadCloser: rc, blob: b}, Size: b.Descriptor.Size, Peer: n.name}, nil
	}
	return resolver.PeerBlob{}, fmt.Errorf("no peer holds blob %s: %w", dgst, errdefs.ErrNotFound)
}

func (p *testPeers) Reject(string, digest.Digest) { p.asked("Reject") }

func (p *testPeers) Manifest(ctx context.Context, registry, repository string, dgst digest.Digest) (string, []byte, string, error) {
	p.asked("Manifest")
	for _, n := range p.nodes {
		m, err := n.p.r.ForPeers().Manifest(ctx, registry, repository, dgst.String())
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", nil, "", err
		}
		return m.Descriptor.MediaType, m.Body, n.name, nil
	}
	return "", nil, "", fmt.Errorf("no peer holds manifest %s: %w", dgst, errdefs.ErrNotFound)
}

// Tag answers with the newest record of the nodes, by the registry's Date.
func (p *testPeers) Tag(ctx context.Context, registry, repository, tag string) (digest.Digest, time.Time, error) {
	p.asked("Tag")
	var best cache.Ref
	for _, n := range p.nodes {
		ref, err := n.store.GetRef(ctx, registry+"/"+repository+":"+tag)
		if err == nil && ref.UpstreamDate.After(best.UpstreamDate) {
			best = ref
		}
	}
	if best.Name == "" {
		return "", time.Time{}, fmt.Errorf("no peer has a record of %s: %w", tag, errdefs.ErrNotFound)
	}
	return best.Target.Digest, best.UpstreamDate, nil
}

func (p *testPeers) Holders(ctx context.Context, dgst digest.Digest) ([]string, error) {
	p.asked("Holders")
	var out []string
	for _, n := range p.nodes {
		if _, err := n.store.Info(ctx, dgst); err == nil {
			out = append(out, n.name)
		}
	}
	return out, nil
}

func (p *testPeers) Cached(string, string, digest.Digest) {}

func (p *testPeers) Revalidated(string, string, string, digest.Digest, time.Time) {}

// peerBody is a peer's blob body: closing it closes the peer's reader and blob.
type peerBody struct {
	io.ReadCloser
	blob *resolver.Blob
}

func (b *peerBody) Close() error {
	b.ReadCloser.Close()
	b.blob.Close()
	return nil
}

// newNode is a planner of a node of the cluster over a fresh cache, registry.test at up, with
// peers.
func newNode(t *testing.T, up *registrytest.Upstream, peers resolver.Peers) (*Planner, *cache.Store) {
	t.Helper()
	return newPlanner(t, up.URL, func(o *resolver.Options) {
		o.UpstreamTimeout = 3 * time.Second
		o.Health = testHealth
		if peers != nil {
			o.Peers = peers
		}
	})
}

// newHolder is a node named name that pulled img, app:v1, from up.
func newHolder(t *testing.T, up *registrytest.Upstream, name string, img v1.Image) *peerNode {
	t.Helper()
	p, store := newNode(t, up, nil)
	pullImage(t, p.r, "app", "v1", img)
	return &peerNode{name: name, p: p, store: store}
}

// TestCheckServedByPeers: drill's verdict names this node, the peers that hold what it lacks,
// or nothing; it asks the peers nothing when this node is ready, and the registry nothing.
func TestCheckServedByPeers(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 64<<10)
	partial := up.Push(t, "app", "v2", 64<<10)
	b := newHolder(t, up, "b", img)
	layer := registrytest.Layers(t, partial)[0].Digest
	pullImage(t, b.p.r, "app", "v2", partial, layer)
	peers := &testPeers{t: t, nodes: []*peerNode{b}}
	a, _ := newNode(t, up, peers)
	alone, _ := newNode(t, up, nil)

	before := up.Total()
	for _, tc := range []struct {
		p        *Planner
		ref      string
		servedBy string
		peers    []string
	}{
		{a, testRegistry + "/app:v1", "peer b", []string{"b"}},
		{a, testRegistry + "/app@" + registrytest.Digest(t, img).String(), "peer b", []string{"b"}},
		{a, testRegistry + "/app:v2", ServedByNothing, nil},
		{a, testRegistry + "/app:never-pushed", ServedByNothing, nil},
		{alone, testRegistry + "/app:v1", ServedByNothing, nil},
		{b.p, testRegistry + "/app:v1", ServedByThisNode, nil},
	} {
		rd, err := tc.p.Check(ctx, tc.ref, amd64)
		if err != nil || rd.ServedBy != tc.servedBy || !slices.Equal(rd.Peers, tc.peers) || rd.Ready != (tc.servedBy == ServedByThisNode) {
			t.Errorf("Check(%s) = %+v %v, want served by %q %v", tc.ref, rd, err, tc.servedBy, tc.peers)
		}
	}
	if n := up.Total() - before; n != 0 {
		t.Errorf("Check sent %d requests upstream, want none", n)
	}
	if rd, _ := a.Check(ctx, testRegistry+"/app:v1", amd64); len(rd.Missing) == 0 {
		t.Error("Check cached what it read from the peers")
	}
	pullImage(t, a.r, "app", "v1", img)
	peers.forbid.Store(true)
	if rd, err := a.Check(ctx, testRegistry+"/app:v1", amd64); err != nil || rd.ServedBy != ServedByThisNode {
		t.Errorf("Check of a ready image = %+v %v", rd, err)
	}
}
