package resolver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// peerNode is another lifeboat of the cluster, in process: a real resolver over its own cache.
type peerNode struct {
	name    string
	r       *Resolver
	store   *cache.Store
	corrupt bool // sends every blob with one byte flipped
}

// testPeers is Peers over peer nodes, asked as package peer asks them: with requests to their PeerView,
// so that the bytes really come from another cache.
type testPeers struct {
	t     *testing.T
	nodes []*peerNode
	// forbid makes asking the peers (OpenBlob, Manifest, Tag, Holders) fail the test;
	// forbidAll makes any call fail it, telling the cluster included.
	forbid, forbidAll atomic.Bool
	// gate, when not nil, holds blob bodies before their first byte until it is closed; half
	// holds them after their first half.
	gate, half chan struct{}

	mu          sync.Mutex
	opens, tags int
	rejected    []string // "peer digest"
	cached      []string // "registry/repository@digest"
	revalidated []string // "registry/repository:tag@digest date"
}

func (p *testPeers) asked(what string) {
	if p.forbid.Load() || p.forbidAll.Load() {
		p.t.Errorf("the resolver asked its peers (%s) when it must not", what)
	}
}

func (p *testPeers) OpenBlob(ctx context.Context, registry, repository string, dgst digest.Digest, skip []string) (PeerBlob, error) {
	p.asked("OpenBlob")
	p.mu.Lock()
	p.opens++
	p.mu.Unlock()
	for _, n := range p.nodes {
		if slices.Contains(skip, n.name) {
			continue
		}
		b, err := n.r.ForPeers().Blob(ctx, registry, repository, dgst)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return PeerBlob{}, err
		}
		rc, err := b.Reader(0, b.Descriptor.Size)
		if err != nil {
			b.Close()
			return PeerBlob{}, err
		}
		var body io.Reader = rc
		if n.corrupt {
			data, err := io.ReadAll(rc)
			if err != nil {
				return PeerBlob{}, err
			}
			data[len(data)/2] ^= 0xff
			body = bytes.NewReader(data)
		}
		if p.gate != nil {
			body = &gatedReader{gate: p.gate, r: body}
		}
		if p.half != nil {
			first := b.Descriptor.Size / 2
			body = io.MultiReader(io.LimitReader(body, first), &gatedReader{gate: p.half, r: body})
		}
		return PeerBlob{Body: &peerBody{Reader: body, closers: []io.Closer{rc, b}}, Size: b.Descriptor.Size, Peer: n.name}, nil
	}
	return PeerBlob{}, fmt.Errorf("no peer holds blob %s: %w", dgst, errdefs.ErrNotFound)
}

func (p *testPeers) Reject(peer string, dgst digest.Digest) {
	p.asked("Reject")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rejected = append(p.rejected, peer+" "+dgst.String())
}

func (p *testPeers) Manifest(ctx context.Context, registry, repository string, dgst digest.Digest) (string, []byte, string, error) {
	p.asked("Manifest")
	for _, n := range p.nodes {
		m, err := n.r.ForPeers().Manifest(ctx, registry, repository, dgst.String())
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
	p.mu.Lock()
	p.tags++
	p.mu.Unlock()
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

func (p *testPeers) Cached(registry, repository string, dgst digest.Digest) {
	if p.forbidAll.Load() {
		p.t.Errorf("the resolver told its peers it cached %s of %s/%s, a registry not shared", dgst, registry, repository)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cached = append(p.cached, registry+"/"+repository+"@"+dgst.String())
}

func (p *testPeers) Revalidated(registry, repository, tag string, dgst digest.Digest, date time.Time) {
	if p.forbidAll.Load() {
		p.t.Errorf("the resolver told its peers about tag %s of %s/%s, a registry not shared", tag, registry, repository)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.revalidated = append(p.revalidated, fmt.Sprintf("%s/%s:%s@%s %s", registry, repository, tag, dgst, date.UTC().Format(time.RFC3339)))
}

// calls returns copies of what the peers were told and asked.
func (p *testPeers) calls() (opens, tags int, rejected, cached, revalidated []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opens, p.tags, slices.Clone(p.rejected), slices.Clone(p.cached), slices.Clone(p.revalidated)
}

// peerBody is a peer's blob body: closing it closes the peer's reader and blob.
type peerBody struct {
	io.Reader
	closers []io.Closer
}

func (b *peerBody) Close() error {
	for _, c := range b.closers {
		c.Close()
	}
	return nil
}

// gatedReader sends nothing until gate is closed.
type gatedReader struct {
	gate chan struct{}
	r    io.Reader
}

func (g *gatedReader) Read(p []byte) (int, error) {
	<-g.gate
	return g.r.Read(p)
}

// newNode is a resolver of the cluster over a fresh cache, registry.test at up, with peers.
func newNode(t *testing.T, up *registrytest.Upstream, peers Peers, set func(*Options)) (*Resolver, *cache.Store) {
	t.Helper()
	return newManifestResolver(t, up.URL, func(o *Options) {
		o.UpstreamTimeout = 3 * time.Second
		o.Health = testHealth
		if peers != nil {
			o.Peers = peers
		}
		if set != nil {
			set(o)
		}
	})
}

// newHolder is a node named name that pulled img, app:v1, from up.
func newHolder(t *testing.T, up *registrytest.Upstream, name string, img v1.Image) *peerNode {
	t.Helper()
	r, store := newNode(t, up, nil, nil)
	pullImage(t, r, "app", "v1", img)
	return &peerNode{name: name, r: r, store: store}
}

// imageBlobDigests returns the config's and the first layer's digests and bytes.
func imageBlobDigests(t *testing.T, img v1.Image) (cfg digest.Digest, cfgBody []byte, layer digest.Digest, layerBody []byte) {
	t.Helper()
	name, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layer, layerBody = registrytest.Layer(t, img, 0)
	return digest.Digest(name.String()), raw, layer, layerBody
}

// cachedBytes reads a blob from store, or nil when it is not there.
func cachedBytes(t *testing.T, store *cache.Store, dgst digest.Digest) []byte {
	t.Helper()
	ra, err := store.ReaderAt(t.Context(), ocispec.Descriptor{Digest: dgst})
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	b, err := io.ReadAll(content.NewReader(ra))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBlobsAndManifestsFromAPeer: what only a peer holds is served from it (status Peer),
// verified, cached here linked to the repository, and the cluster is told; the registry is
// not asked for it. The small config is held whole until verified, the large layer too (the
// default VerifyBeforeSend).
func TestBlobsAndManifestsFromAPeer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 2<<20)
	peers := &testPeers{t: t, nodes: []*peerNode{newHolder(t, up, "b", img)}}
	a, aStore := newNode(t, up, peers, nil)
	before := up.Total()
	cfg, cfgBody, layer, layerBody := imageBlobDigests(t, img)
	for _, c := range []struct {
		dgst digest.Digest
		want []byte
	}{{cfg, cfgBody}, {layer, layerBody}} {
		got, status, err := readBlob(ctx, a, "app", c.dgst)
		if err != nil || status != Peer || !bytes.Equal(got, c.want) {
			t.Fatalf("blob %s: status %q, %v, right bytes %v; want the peer's bytes", c.dgst, status, err, bytes.Equal(got, c.want))
		}
		registrytest.Wait(t, "the blob to be committed", func() bool { ok, _ := a.Local().HasBlob(ctx, testRegistry+"/app", c.dgst); return ok })
		if !bytes.Equal(cachedBytes(t, aStore, c.dgst), c.want) {
			t.Fatalf("blob %s cached with other bytes", c.dgst)
		}
	}
	m, err := a.Manifest(ctx, testRegistry, "app", registrytest.Digest(t, img).String())
	if err != nil || m.Status != Peer || !bytes.Equal(m.Body, registrytest.RawManifest(t, img)) {
		t.Fatalf("manifest by digest: %s %v, want the peer's", m.Status, err)
	}
	if m, err := a.Manifest(ctx, testRegistry, "app", registrytest.Digest(t, img).String()); err != nil || m.Status != Hit {
		t.Fatalf("manifest from a peer, asked again: %s %v, want a hit", m.Status, err)
	}
	if n := up.Total() - before; n != 0 {
		t.Errorf("the registry got %d requests for what a peer holds, want 0", n)
	}
	_, _, rejected, cached, _ := peers.calls()
	if len(rejected) != 0 {
		t.Errorf("good bytes rejected: %v", rejected)
	}
	for _, d := range []digest.Digest{cfg, layer, registrytest.Digest(t, img)} {
		if !slices.Contains(cached, testRegistry+"/app@"+d.String()) {
			t.Errorf("the cluster was not told this node cached %s (told %v)", d, cached)
		}
	}
	if b, err := a.Blob(ctx, testRegistry, "app", layer); err != nil || b.Status != Hit {
		t.Fatalf("blob from a peer, asked again: %v, want a hit", err)
	} else {
		b.Close()
	}
	// Another repository of the registry: the link is per repository, as from the registry.
	if _, err := a.ForPeers().Blob(ctx, testRegistry, "other", layer); !errdefs.IsNotFound(err) {
		t.Errorf("blob of another repository asked by a peer: %v, want not found", err)
	}
}

// TestBadPeerBytes: a peer whose bytes fail verification is rejected; while no byte reached a
// client the fill tries the next peer, then the registry; nothing it sent is cached. A blob
// that already streamed to a client fails, as an upstream's that does not verify.
func TestBadPeerBytes(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 2<<20)
	bad, good := newHolder(t, up, "bad", img), newHolder(t, up, "good", img)
	bad.corrupt = true
	cfg, cfgBody, layer, layerBody := imageBlobDigests(t, img)

	// The status of a blob large enough to be returned before it arrived (the layer) is its
	// first source's: the fill starts over from the next one afterwards.
	for _, tc := range []struct {
		name                      string
		good                      bool // a good peer after the bad one
		wantStatus, wantLayerStat CacheStatus
		wantGETs                  int64
	}{
		{"then the registry", false, Miss, Peer, 2},
		{"then another peer", true, Peer, Peer, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			nodes := []*peerNode{bad}
			if tc.good {
				nodes = append(nodes, good)
			}
			peers := &testPeers{t: t, nodes: nodes}
			a, aStore := newNode(t, up, peers, nil)
			before := up.Count("GET blobs")
			for _, bl := range []struct {
				dgst       digest.Digest
				want       []byte
				wantStatus CacheStatus
			}{{cfg, cfgBody, tc.wantStatus}, {layer, layerBody, tc.wantLayerStat}} {
				got, status, err := readBlob(ctx, a, "app", bl.dgst)
				if err != nil || status != bl.wantStatus || !bytes.Equal(got, bl.want) {
					t.Fatalf("blob %s: %q %v, right bytes %v; want %q and the right bytes", bl.dgst, status, err, bytes.Equal(got, bl.want), bl.wantStatus)
				}
				registrytest.Wait(t, "the blob to be committed", func() bool { ok, _ := a.Local().HasBlob(ctx, testRegistry+"/app", bl.dgst); return ok })
				if !bytes.Equal(cachedBytes(t, aStore, bl.dgst), bl.want) {
					t.Fatalf("blob %s cached with other bytes", bl.dgst)
				}
			}
			if n := up.Count("GET blobs") - before; n != tc.wantGETs {
				t.Errorf("registry blob GETs: %d, want %d", n, tc.wantGETs)
			}
			_, _, rejected, _, _ := peers.calls()
			if want := []string{"bad " + cfg.String(), "bad " + layer.String()}; !slices.Equal(rejected, want) {
				t.Errorf("rejected %v, want %v", rejected, want)
			}
			if a.DigestMismatches() != 0 {
				t.Errorf("a peer's bad bytes counted as the upstream's: %d", a.DigestMismatches())
			}
		})
	}

	t.Run("after bytes reached a client", func(t *testing.T) {
		ctx := t.Context()
		half := make(chan struct{})
		peers := &testPeers{t: t, nodes: []*peerNode{bad}, half: half}
		a, aStore := newNode(t, up, peers, func(o *Options) { o.VerifyBeforeSend = -1 })
		before := up.Count("GET blobs")
		blob, err := a.Blob(ctx, testRegistry, "app", layer)
		if err != nil || blob.Status != Peer {
			t.Fatalf("blob from a peer: %v", err)
		}
		defer blob.Close()
		rc, _ := blob.Reader(0, blob.Descriptor.Size)
		first := make([]byte, 1024)
		if _, err := io.ReadFull(rc, first); err != nil {
			t.Fatalf("no byte streamed: %v", err)
		}
		close(half)
		rest, err := io.ReadAll(rc)
		if err == nil || !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("streamed blob from a bad peer: %v, want a failed verification", err)
		}
		if got := len(first) + len(rest); got >= len(layerBody) {
			t.Errorf("the client got all %d bytes of a blob that did not verify", got)
		}
		if cachedBytes(t, aStore, layer) != nil {
			t.Error("a blob that did not verify is cached")
		}
		if _, _, rejected, _, _ := peers.calls(); !slices.Equal(rejected, []string{"bad " + layer.String()}) {
			t.Errorf("rejected %v", rejected)
		}
		if n := up.Count("GET blobs") - before; n != 0 {
			t.Errorf("the fill went on from the registry after bytes reached a client (%d GETs)", n)
		}
	})
}

// TestConcurrentClientsShareOnePeerFetch: clients of a blob that a peer provides share the one
// fill, and so one peer transfer.
func TestConcurrentClientsShareOnePeerFetch(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 2<<20)
	gate := make(chan struct{})
	peers := &testPeers{t: t, nodes: []*peerNode{newHolder(t, up, "b", img)}, gate: gate}
	a, _ := newNode(t, up, peers, nil)
	layer, want := registrytest.Layer(t, img, 0)

	const clients = 5
	var opened sync.WaitGroup
	opened.Add(clients)
	errs := make(chan error, clients)
	for range clients {
		go func() {
			blob, err := a.Blob(ctx, testRegistry, "app", layer)
			opened.Done()
			if err != nil {
				errs <- err
				return
			}
			defer blob.Close()
			rc, _ := blob.Reader(0, blob.Descriptor.Size)
			got, err := io.ReadAll(rc)
			if err == nil && (!bytes.Equal(got, want) || blob.Status != Peer) {
				err = fmt.Errorf("status %q, right bytes %v", blob.Status, bytes.Equal(got, want))
			}
			errs <- err
		}()
	}
	opened.Wait() // every client joined the fill, which waits on the gate
	close(gate)
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if opens, _, _, _, _ := peers.calls(); opens != 1 {
		t.Errorf("%d peer fetches for %d clients at once, want 1", opens, clients)
	}
}

// TestPeerRequests: a peer's request never asks this node's peers, and is answered from the
// cache; only a blob it asks to fill reaches the registry, and it streams as it arrives.
func TestPeerRequests(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 2<<20)
	peers := &testPeers{t: t}
	h, _ := newNode(t, up, peers, nil)
	peers.forbid.Store(true)
	pv := h.ForPeers()
	layer, want := registrytest.Layer(t, img, 0)
	manifest := registrytest.Digest(t, img).String()

	before := up.Total()
	if _, err := pv.Blob(ctx, testRegistry, "app", layer); !errdefs.IsNotFound(err) {
		t.Errorf("uncached blob for a peer: %v, want not found", err)
	}
	if _, _, err := pv.StatBlob(ctx, testRegistry, "app", layer); !errdefs.IsNotFound(err) {
		t.Errorf("uncached blob stat for a peer: %v, want not found", err)
	}
	for _, ref := range []string{manifest, "v1"} {
		if _, err := pv.Manifest(ctx, testRegistry, "app", ref); !errdefs.IsNotFound(err) {
			t.Errorf("uncached manifest %s for a peer: %v, want not found", ref, err)
		}
	}
	if _, _, err := pv.Tags(ctx, testRegistry, "app"); !errdefs.IsNotFound(err) {
		t.Errorf("tags for a peer: %v, want not found", err)
	}
	if n := up.Total() - before; n != 0 {
		t.Fatalf("a peer's requests without fill reached the registry %d times", n)
	}

	// A fill for a peer: from the registry, streamed before it verified (the default holds
	// blobs of this size whole for this node's own clients).
	gate := up.HoldBodies()
	// Bounded: a reader held until the blob verified would wait for the gate for ever.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	blob, err := h.ForPeers().Coalescing().Blob(fctx, testRegistry, "app", layer)
	if err != nil || blob.Status != Miss {
		t.Fatalf("fill for a peer: %v", err)
	}
	defer blob.Close()
	rc, _ := blob.Reader(0, blob.Descriptor.Size)
	first := make([]byte, 1024)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatalf("a peer's reader got nothing before the blob verified: %v", err)
	}
	close(gate)
	rest, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(append(first, rest...), want) {
		t.Fatalf("fill for a peer: %v, right bytes %v", err, bytes.Equal(append(first, rest...), want))
	}
	if n := up.Count("GET blobs"); n != 1 {
		t.Errorf("registry blob GETs: %d, want 1", n)
	}
	registrytest.Wait(t, "the blob to be committed", func() bool { ok, _ := h.Local().HasBlob(ctx, testRegistry+"/app", layer); return ok })
	if b, err := pv.Blob(ctx, testRegistry, "app", layer); err != nil || b.Status != Hit {
		t.Fatalf("cached blob for a peer: %v", err)
	} else {
		b.Close()
	}
	if _, _, _, cached, _ := peers.calls(); !slices.Contains(cached, testRegistry+"/app@"+layer.String()) {
		t.Errorf("a blob filled for a peer is not announced: %v", cached)
	}
}

// TestNotSharedRegistry: the content of a registry not shared never crosses nodes: its misses
// go to the registry alone, nothing of it is announced, and peers' requests are refused.
func TestNotSharedRegistry(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 64<<10)
	peers := &testPeers{t: t}
	peers.forbidAll.Store(true)
	a, _ := newNode(t, up, peers, func(o *Options) { o.NotShared = []string{testRegistry} })
	pullImage(t, a, "app", "v1", img)
	up.SetFault(registrytest.Status503)
	if m, err := a.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Stale {
		t.Fatalf("tag in an outage: %s %v, want stale without asking peers", m.Status, err)
	}
	if _, err := a.Manifest(ctx, testRegistry, "app", "never-pushed"); !errdefs.IsNotFound(err) {
		t.Fatalf("uncached tag in an outage: %v", err)
	}
	layer, _ := registrytest.Layer(t, img, 0)
	pv := a.ForPeers().Coalescing()
	_, berr := pv.Blob(ctx, testRegistry, "app", layer)
	_, merr := pv.Manifest(ctx, testRegistry, "app", "v1")
	_, _, terr := pv.Tags(ctx, testRegistry, "app")
	for _, err := range []error{berr, merr, terr} {
		if !errors.Is(err, endpoints.ErrNotMirrored) || !errdefs.IsNotFound(err) {
			t.Errorf("a peer's request for a registry not shared: %v, want not mirrored", err)
		}
	}
}

// TestTagFromPeersInAnOutage: when the registry cannot answer, a tag is resolved from the
// peers' newest record if this node has none, or if the peers' names another digest that the
// registry confirmed later than this node's own record (by the registry's Date header, which
// the resolver records). A 404 is the registry's answer: the peers are not asked.
func TestTagFromPeersInAnOutage(t *testing.T) {
	t.Parallel()
	day := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name            string
		ownDate, bDate  time.Time
		wantNew, wantOK bool
	}{
		{"peers confirmed later", day, day.Add(time.Hour), true, true},
		{"own record is newer", day.Add(2 * time.Hour), day.Add(time.Hour), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			up := registrytest.NewUpstream(t)
			old := up.Push(t, "app", "v1", 1024)
			b, bStore := newNode(t, up, nil, nil)
			peers := &testPeers{t: t, nodes: []*peerNode{{name: "b", r: b, store: bStore}}}
			a, aStore := newNode(t, up, peers, nil)

			up.SetDate(tc.ownDate)
			if m, err := a.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Miss {
				t.Fatalf("first resolution: %s %v", m.Status, err)
			}
			ref, err := aStore.GetRef(ctx, testRegistry+"/app:v1")
			if err != nil || !ref.UpstreamDate.Equal(tc.ownDate) {
				t.Fatalf("recorded date %v %v, want the registry's %v", ref.UpstreamDate, err, tc.ownDate)
			}
			_, _, _, _, revalidated := peers.calls()
			if want := fmt.Sprintf("%s/app:v1@%s %s", testRegistry, registrytest.Digest(t, old), tc.ownDate.Format(time.RFC3339)); !slices.Contains(revalidated, want) {
				t.Errorf("the cluster was told %v, want %s", revalidated, want)
			}
			newer := up.Push(t, "app", "v1", 1024)
			up.SetDate(tc.bDate)
			if _, err := b.Manifest(ctx, testRegistry, "app", "v1"); err != nil {
				t.Fatal(err)
			}

			up.SetFault(registrytest.Status503)
			want, wantStatus := old, Stale
			if tc.wantNew {
				want, wantStatus = newer, Peer
			}
			m, err := a.Manifest(ctx, testRegistry, "app", "v1")
			if err != nil || m.Status != wantStatus || m.Descriptor.Digest != registrytest.Digest(t, want) || !bytes.Equal(m.Body, registrytest.RawManifest(t, want)) {
				t.Fatalf("tag in an outage: %s %s %v, want %s %s", m.Descriptor.Digest, m.Status, err, registrytest.Digest(t, want), wantStatus)
			}

			// A fresh node has no record: the peers' answers.
			f, _ := newNode(t, up, peers, nil)
			m, err = f.Manifest(ctx, testRegistry, "app", "v1")
			if err != nil || m.Status != Peer || m.Descriptor.Digest != registrytest.Digest(t, newer) {
				t.Fatalf("fresh node in an outage: %s %s %v, want %s from the peers", m.Descriptor.Digest, m.Status, err, registrytest.Digest(t, newer))
			}
			if m, err := f.Manifest(ctx, testRegistry, "app", registrytest.Digest(t, newer).String()); err != nil || m.Status != Hit {
				t.Fatalf("the manifest the peers resolved, by digest: %s %v, want a hit", m.Status, err)
			}
			// The tag is marked as the peers' (PeerTags lists it, with the peers' date).
			if tags, err := f.PeerTags(ctx); err != nil || len(tags) != 1 || tags[0].Name != testRegistry+"/app:v1" ||
				tags[0].Target.Digest != registrytest.Digest(t, newer) || !tags[0].UpstreamDate.Equal(tc.bDate) {
				t.Fatalf("tags from peers: %+v %v, want app:v1 at %s", tags, err, tc.bDate)
			}

			// The registry answers 404: its word, the peers are not asked.
			up.SetFault(registrytest.Healthy)
			registrytest.Wait(t, "the endpoint to be up again", func() bool {
				for _, e := range f.Endpoints() {
					if !e.Up {
						return false
					}
				}
				return true
			})
			_, tagsBefore, _, _, _ := peers.calls()
			if _, err := f.Manifest(ctx, testRegistry, "app", "never-pushed"); !errdefs.IsNotFound(err) {
				t.Fatalf("tag the registry does not have: %v", err)
			}
			if _, tags, _, _, _ := peers.calls(); tags != tagsBefore {
				t.Error("the peers were asked for a tag the registry says does not exist")
			}
			// Once the registry confirms the tag, it is this node's own again.
			if m, err := f.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Revalidated {
				t.Fatalf("the tag once the registry answers: %s %v, want revalidated", m.Status, err)
			}
			if tags, err := f.PeerTags(ctx); err != nil || len(tags) != 0 {
				t.Errorf("tags from peers once the registry confirmed them: %+v %v, want none", tags, err)
			}
		})
	}
}

// TestDateWithoutHeader: a registry that sends no Date has the local time of its answer
// recorded instead.
func TestDateWithoutHeader(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "v1", 1024)
	up.SetDate(time.Time{})
	a, store := newNode(t, up, nil, nil)
	start := time.Now()
	if _, err := a.Manifest(t.Context(), testRegistry, "app", "v1"); err != nil {
		t.Fatal(err)
	}
	ref, err := store.GetRef(t.Context(), testRegistry+"/app:v1")
	if err != nil || ref.UpstreamDate.Before(start.Truncate(time.Second)) || ref.UpstreamDate.After(time.Now()) {
		t.Fatalf("recorded date %v %v, want the time of the answer (after %v)", ref.UpstreamDate, err, start)
	}
}
