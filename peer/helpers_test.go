package peer

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

const (
	testRegistry = "registry.test"
	testRepo     = "team/app"
	// authScheme is the test authenticator's token: "Test <node>", in headerAuthorization.
	authScheme          = "Test "
	headerAuthorization = "Authorization"
)

// testImage is an image pushed to a test upstream.
type testImage struct {
	img      v1.Image
	layer    digest.Digest
	data     []byte // the layer's bytes
	manifest digest.Digest
	raw      []byte // the manifest's bytes
}

// push writes a random image of one layer of size bytes to testRepo:tag of up.
func push(t *testing.T, up *registrytest.Upstream, tag string, size int64) testImage {
	t.Helper()
	img := registrytest.RandomImage(t, size, 1)
	registrytest.Write(t, up.URL, testRepo, tag, img)
	layer, data := registrytest.Layer(t, img, 0)
	return testImage{img: img, layer: layer, data: data, manifest: registrytest.Digest(t, img), raw: registrytest.RawManifest(t, img)}
}

// newTestResolver returns a resolver over a real cache in a temporary directory whose
// testRegistry upstream is up.
func newTestResolver(t *testing.T, up *registrytest.Upstream) *resolver.Resolver {
	t.Helper()
	return newClusterResolver(t, up, nil)
}

// newClusterResolver is newTestResolver in a cluster: peers (when not nil) is its resolver.Peers;
// notShared are its registries not shared with peers.
func newClusterResolver(t *testing.T, up *registrytest.Upstream, peers resolver.Peers, notShared ...string) *resolver.Resolver {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	r, err := resolver.New(t.Context(), store, resolver.Options{
		UpstreamTimeout:  3 * time.Second, // generous: tests run in parallel under -race on 2 cores
		IdleTimeout:      5 * time.Second,
		FillTimeout:      time.Minute,
		VerifyBeforeSend: -1,
		Endpoints:        map[string][]string{testRegistry: {up.URL}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
		Peers:     peers,
		NotShared: notShared,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		store.Close()
	})
	return r
}

// testAuth accepts the token "Test <node>" of the nodes it knows (in place of the TLS client
// certificate cluster.Node checks, which TestWithTheClusterTLS uses).
type testAuth struct{ nodes []string }

func (a testAuth) Authenticate(req *http.Request) (string, error) {
	node, ok := strings.CutPrefix(req.Header.Get(headerAuthorization), authScheme)
	for _, n := range a.nodes {
		if ok && node == n {
			return node, nil
		}
	}
	return "", fmt.Errorf("no valid token: %w", errdefs.ErrUnauthenticated)
}

// countingBackend counts the calls that reach the backends of a peer handler: a resolver's
// PeerView, and its coalescing view.
type countingBackend struct {
	view         resolver.PeerView
	calls, blobs atomic.Int64
}

func newCountingBackend(r *resolver.Resolver) *countingBackend {
	return &countingBackend{view: r.ForPeers()}
}

// local is the view of this node's cache, counted.
func (c *countingBackend) local() mirror.Backend { return &counted{Backend: c.view, c: c} }

// coalescing is the view that fills, counted.
func (c *countingBackend) coalescing() mirror.Backend {
	return &counted{Backend: c.view.Coalescing(), c: c}
}

// counted is a mirror.Backend that counts the calls that reach it in c.
type counted struct {
	mirror.Backend
	c *countingBackend
}

func (b *counted) Manifest(ctx context.Context, registry, repository, reference string) (resolver.Manifest, error) {
	b.c.calls.Add(1)
	return b.Backend.Manifest(ctx, registry, repository, reference)
}

func (b *counted) StatBlob(ctx context.Context, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, resolver.CacheStatus, error) {
	b.c.calls.Add(1)
	return b.Backend.StatBlob(ctx, registry, repository, dgst)
}

func (b *counted) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*resolver.Blob, error) {
	b.c.calls.Add(1)
	b.c.blobs.Add(1)
	return b.Backend.Blob(ctx, registry, repository, dgst)
}

func (b *counted) Tags(ctx context.Context, registry, repository string) ([]string, resolver.CacheStatus, error) {
	b.c.calls.Add(1)
	return b.Backend.Tags(ctx, registry, repository)
}

func (b *counted) Referrers(ctx context.Context, registry, repository string, dgst digest.Digest, artifactType string) (ocispec.Index, error) {
	b.c.calls.Add(1)
	return b.Backend.Referrers(ctx, registry, repository, dgst, artifactType)
}

// newHandler returns NewHandler over backend's views, failing t if it refuses them.
func newHandler(t *testing.T, auth Authenticator, index http.Handler, backend *countingBackend, opts HandlerOptions) http.Handler {
	t.Helper()
	h, err := NewHandler(auth, index, backend.local(), backend.coalescing(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// testNode is another lifeboat as its peers see it: the real peer handler over a real resolver
// and cache, on a loopback listener.
type testNode struct {
	name     string
	srv      *httptest.Server
	resolver *resolver.Resolver
	backend  *countingBackend
	// source counts what the handler sends (HandlerOptions.Source).
	source *Source
	// requests counts the /v2/ requests that reached the listener; fills those with
	// cluster.HeaderFill "1".
	requests, fills atomic.Int64
}

// newTestNode starts a node whose registry upstream is up, with opts (Source is set here).
func newTestNode(t *testing.T, nodeName string, up *registrytest.Upstream, opts HandlerOptions, notShared ...string) *testNode {
	t.Helper()
	n := &testNode{name: nodeName, resolver: newClusterResolver(t, up, nil, notShared...)}
	n.backend = newCountingBackend(n.resolver)
	n.source = NewSource(&testCluster{name: nodeName}, SourceOptions{})
	opts.Source = n.source
	index := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no index here", http.StatusNotFound)
	})
	h := newHandler(t, testAuth{nodes: []string{"a", "b", "c", "h"}}, index, n.backend, opts)
	n.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/") {
			n.requests.Add(1)
			if r.Header.Get(cluster.HeaderFill) == "1" {
				n.fills.Add(1)
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(n.srv.Close)
	return n
}

func (n *testNode) member() cluster.Member {
	return cluster.Member{Name: n.name, PeerAddr: strings.TrimPrefix(n.srv.URL, "https://"), State: cluster.Alive}
}

// warm caches the blob dgst in the node, through its own resolver.
func (n *testNode) warm(t *testing.T, dgst digest.Digest) {
	t.Helper()
	warm(t, n.resolver, dgst)
}

// warm caches the blob dgst in r.
func warm(t *testing.T, r *resolver.Resolver, dgst digest.Digest) {
	t.Helper()
	if _, _, err := pull(t, r, dgst); err != nil {
		t.Fatal(err)
	}
}

// pull reads the blob dgst through r.
func pull(t *testing.T, r *resolver.Resolver, dgst digest.Digest) ([]byte, resolver.CacheStatus, error) {
	t.Helper()
	b, err := r.Blob(t.Context(), testRegistry, testRepo, dgst)
	if err != nil {
		return nil, "", err
	}
	defer b.Close()
	rc, err := b.Reader(0, b.Descriptor.Size)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	return data, b.Status, err
}

// newHolder returns an upstream with an image of one layer of size bytes, and node b, which
// holds the layer.
func newHolder(t *testing.T, size int64) (*registrytest.Upstream, testImage, *testNode) {
	t.Helper()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", size)
	b := newTestNode(t, "b", up, HandlerOptions{})
	b.warm(t, img.layer)
	return up, img, b
}

// testCluster is a Cluster whose index and homes the test sets, and whose client sends the
// test authenticator's token over TLS (trusting httptest's certificate).
type testCluster struct {
	name string

	mu        sync.Mutex
	members   map[string]cluster.Member
	holders   map[string][]cluster.Holder
	homes     map[string][]cluster.Member
	announced []cluster.Record
	lookupErr error
	lookups   atomic.Int64
	// client, when set, is Client (a cluster.Node's) instead of the test authenticator's.
	client *http.Client
}

var _ Cluster = (*testCluster)(nil)

func newTestCluster(self string, members ...cluster.Member) *testCluster {
	c := &testCluster{name: self, members: map[string]cluster.Member{}, holders: map[string][]cluster.Holder{}, homes: map[string][]cluster.Member{}}
	for _, m := range members {
		c.members[m.Name] = m
	}
	return c
}

func (c *testCluster) setHolders(key string, nodes ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holders[key] = nil
	for _, n := range nodes {
		c.holders[key] = append(c.holders[key], cluster.Holder{Node: n})
	}
}

func (c *testCluster) setHomes(key string, homes ...cluster.Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.homes[key] = homes
}

func (c *testCluster) Name() string { return c.name }

func (c *testCluster) Lookup(ctx context.Context, key string, _ ...cluster.LookupOption) ([]cluster.Holder, error) {
	c.lookups.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lookupErr != nil {
		return nil, c.lookupErr
	}
	return append([]cluster.Holder(nil), c.holders[key]...), nil
}

func (c *testCluster) Homes(key string) []cluster.Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.homes[key]
}

func (c *testCluster) Member(name string) (cluster.Member, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[name]
	return m, ok
}

func (c *testCluster) Announce(recs ...cluster.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.announced = append(c.announced, recs...)
}

func (c *testCluster) Client() *http.Client {
	if c.client != nil {
		return c.client
	}
	return &http.Client{Transport: signing{name: c.name, base: testTLS}}
}

// testTLS is a transport to the test peers, httptest TLS servers.
var testTLS = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}

// signing adds the test authenticator's token to every request.
type signing struct {
	name string
	base http.RoundTripper
}

func (s signing) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set(headerAuthorization, authScheme+s.name)
	req.Header.Set(cluster.HeaderPeer, s.name)
	return s.base.RoundTrip(req)
}

// stuckPeer is a peer listener that sends nothing until the request ends (a SIGSTOPped node);
// with half set, it sends the headers and the first half of body, then stops.
type stuckPeer struct {
	*httptest.Server
	// requests counts the requests; ended those whose client went away.
	requests, ended atomic.Int64
}

func newStuckPeer(t *testing.T, body []byte, half bool) *stuckPeer {
	t.Helper()
	release := make(chan struct{})
	p := &stuckPeer{}
	p.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		if half {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.WriteHeader(http.StatusOK)
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
			p.ended.Add(1)
		case <-release:
		}
	}))
	t.Cleanup(func() {
		close(release)
		p.Close()
	})
	return p
}

func (p *stuckPeer) member(name string) cluster.Member {
	return cluster.Member{Name: name, PeerAddr: strings.TrimPrefix(p.URL, "https://"), State: cluster.Alive}
}

// readBlob reads a peer blob whole and closes it.
func readBlob(t *testing.T, b resolver.PeerBlob) []byte {
	t.Helper()
	defer b.Body.Close()
	data, err := io.ReadAll(b.Body)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
