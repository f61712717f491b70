package peer

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// These tests run a Source as what it is for: the resolver.Peers of a real resolver.

func TestResolverFillsFromAPeer(t *testing.T) {
	t.Parallel()
	up, img, b := newHolder(t, 256<<10)
	gets := up.Count("GET blobs")

	c := newTestCluster("a", b.member())
	c.setHolders(cluster.BlobKey(img.layer), "b")
	src := NewSource(c, SourceOptions{})
	a := newClusterResolver(t, up, src)
	data, status, err := pull(t, a, img.layer)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, img.data) || status != resolver.Peer {
		t.Errorf("%d bytes with status %q, want the layer's %d from a peer", len(data), status, len(img.data))
	}
	if n := up.Count("GET blobs") - gets; n != 0 {
		t.Errorf("%d blob GETs at the registry, want none", n)
	}
	if st := src.Stats(); st.BytesIn != int64(len(img.data)) {
		t.Errorf("BytesIn = %d, want %d", st.BytesIn, len(img.data))
	}
	// Now cached here, and announced.
	registrytest.Wait(t, "the blob to be announced", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return slices.Contains(c.announced, cluster.Record{Key: cluster.BlobKey(img.layer)})
	})
	if _, status, err := pull(t, a, img.layer); err != nil || status != resolver.Hit {
		t.Errorf("second read: %q, %v; want a hit", status, err)
	}
}

// corruptPeer serves every blob GET with the length of want and one byte of it flipped.
type corruptPeer struct {
	*httptest.Server
	requests atomic.Int64
}

func newCorruptPeer(t *testing.T, want []byte) *corruptPeer {
	t.Helper()
	p := &corruptPeer{}
	bad := bytes.Clone(want)
	bad[len(bad)/2] ^= 0xff
	p.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
		w.Write(bad)
	}))
	t.Cleanup(p.Close)
	return p
}

func TestResolverRejectsAPeersBadBytes(t *testing.T) {
	t.Parallel()
	up, img, b := newHolder(t, 256<<10)
	bad := newCorruptPeer(t, img.data)
	m := cluster.Member{Name: "bad", PeerAddr: strings.TrimPrefix(bad.URL, "https://"), State: cluster.Alive}

	c := newTestCluster("a", m, b.member())
	c.setHolders(cluster.BlobKey(img.layer), "bad", "b")
	src := NewSource(c, SourceOptions{})
	a := newClusterResolver(t, up, src)
	data, _, err := pull(t, a, img.layer)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, img.data) {
		t.Fatal("the resolver served other bytes than the layer's")
	}
	if st := src.Stats(); st.Rejected != 1 || bad.requests.Load() != 1 {
		t.Errorf("Rejected = %d after %d requests to the bad peer, want 1 and 1", st.Rejected, bad.requests.Load())
	}
	if !src.isRejected("bad") {
		t.Error("the bad peer is not rejected")
	}
}

func TestConcurrentPullsFillOnceThroughTheHome(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", 1<<20)
	home := newTestNode(t, "h", up, HandlerOptions{})
	gets := up.Count("GET blobs")

	names := []string{"a", "b", "c"}
	nodes := len(names)
	var sources []*Source
	var resolvers []*resolver.Resolver
	for _, name := range names {
		c := newTestCluster(name, home.member())
		c.setHomes(cluster.BlobKey(img.layer), home.member())
		src := NewSource(c, SourceOptions{Coalesce: true})
		sources = append(sources, src)
		resolvers = append(resolvers, newClusterResolver(t, up, src))
	}
	errs := make(chan error, nodes)
	for _, r := range resolvers {
		go func() {
			data, status, err := pull(t, r, img.layer)
			if err == nil && (!bytes.Equal(data, img.data) || status != resolver.Peer) {
				err = fmt.Errorf("%d bytes with status %q, want the layer's %d from a peer", len(data), status, len(img.data))
			}
			errs <- err
		}()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := up.Count("GET blobs") - gets; n != 1 {
		t.Errorf("%d blob GETs at the registry for %d nodes, want 1 (the home's)", n, nodes)
	}
	for i, src := range sources {
		if st := src.Stats(); st.CoalescedFills != 1 {
			t.Errorf("node %d: CoalescedFills = %d, want 1", i, st.CoalescedFills)
		}
	}
	if home.fills.Load() != int64(nodes) {
		t.Errorf("the home got %d fill requests, want %d", home.fills.Load(), nodes)
	}
}
