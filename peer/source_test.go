package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

func TestBlobFromAHolder(t *testing.T) {
	t.Parallel()
	up, img, b := newHolder(t, 256<<10)
	upstreamGets := up.Count("GET blobs")

	c := newTestCluster("a", b.member())
	c.setHolders(cluster.BlobKey(img.layer), "b")
	src := NewSource(c, SourceOptions{})
	blob, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil)
	if err != nil {
		t.Fatal(err)
	}
	if blob.Peer != "b" || blob.ViaHome || blob.Size != int64(len(img.data)) {
		t.Errorf("blob from %q (via home %v) of %d bytes, want from b, not via home, of %d", blob.Peer, blob.ViaHome, blob.Size, len(img.data))
	}
	if got := readBlob(t, blob); !bytes.Equal(got, img.data) {
		t.Fatalf("got %d bytes that differ from the layer's %d", len(got), len(img.data))
	}
	if n := up.Count("GET blobs") - upstreamGets; n != 0 {
		t.Errorf("b served the blob with %d upstream GETs, want none (from its cache)", n)
	}
	st := src.Stats()
	if st.BytesIn != int64(len(img.data)) || st.PeerAnswers != 1 || st.CoalescedFills != 0 {
		t.Errorf("requester's stats %+v, want BytesIn %d, one peer answer, no coalesced fill", st, len(img.data))
	}
	registrytest.Wait(t, "b to count the bytes it sent", func() bool { return b.source.Stats().BytesOut == int64(len(img.data)) })
}

func TestManifestFromAHolder(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", 1024)
	b := newTestNode(t, "b", up, HandlerOptions{})
	if _, err := b.resolver.Manifest(t.Context(), testRegistry, testRepo, "v1"); err != nil {
		t.Fatal(err)
	}

	c := newTestCluster("a", b.member())
	c.setHolders(cluster.BlobKey(img.manifest), "b")
	src := NewSource(c, SourceOptions{})
	mediaType, body, peer, err := src.Manifest(t.Context(), testRegistry, testRepo, img.manifest)
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	if peer != "b" || mediaType != string(mt) || !bytes.Equal(body, img.raw) {
		t.Errorf("manifest from %q, %q, %d bytes; want from b, %q, the pushed %d bytes", peer, mediaType, len(body), mt, len(img.raw))
	}

	// A manifest nobody holds: not found, and nobody asked.
	c.setHolders(cluster.BlobKey(img.manifest))
	requests := b.requests.Load()
	if _, _, _, err := src.Manifest(t.Context(), testRegistry, testRepo, img.manifest); !errdefs.IsNotFound(err) {
		t.Errorf("manifest without holders: %v, want not found", err)
	}
	if b.requests.Load() != requests {
		t.Error("a manifest without holders was asked of a peer")
	}
}

func TestStuckHolderIsSkipped(t *testing.T) {
	t.Parallel()
	_, img, b := newHolder(t, 64<<10)

	// Each case leaves one mechanism alone to skip the stuck holder: the other waits a minute.
	tests := []struct {
		name string
		opts SourceOptions
	}{
		{name: "hedged", opts: SourceOptions{Budget: Budget{HedgeDelay: 100 * time.Millisecond, HeaderTimeout: time.Minute}}},
		{name: "header timeout", opts: SourceOptions{Budget: Budget{HedgeDelay: time.Minute, HeaderTimeout: 200 * time.Millisecond}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stuck := newStuckPeer(t, nil, false)
			c := newTestCluster("a", stuck.member("s"), b.member())
			c.setHolders(cluster.BlobKey(img.layer), "s", "b")
			src := NewSource(c, tt.opts)
			// The deadline only ends the test cleanly should the stuck holder hang it.
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			blob, err := src.OpenBlob(ctx, testRegistry, testRepo, img.layer, nil)
			if err != nil {
				t.Fatal(err)
			}
			if blob.Peer != "b" {
				t.Errorf("blob from %q, want b after the stuck holder", blob.Peer)
			}
			if got := readBlob(t, blob); !bytes.Equal(got, img.data) {
				t.Fatal("wrong bytes from b")
			}
			if stuck.requests.Load() != 1 {
				t.Errorf("the stuck holder got %d requests, want 1 (it is first)", stuck.requests.Load())
			}
			registrytest.Wait(t, "the request to the stuck holder to end", func() bool { return stuck.ended.Load() == 1 })
		})
	}

	// Alone, a stuck holder fails the blob within the header timeout.
	stuck := newStuckPeer(t, nil, false)
	c := newTestCluster("a", stuck.member("s"))
	c.setHolders(cluster.BlobKey(img.layer), "s")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := NewSource(c, SourceOptions{Budget: Budget{HeaderTimeout: 200 * time.Millisecond}}).OpenBlob(ctx, testRegistry, testRepo, img.layer, nil)
	if !errdefs.IsUnavailable(err) || ctx.Err() != nil {
		t.Errorf("a stuck holder alone: %v, want unavailable before the test's deadline", err)
	}
}

func TestBodyThatStopsFailsTheRead(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("x"), 1<<10)
	stuck := newStuckPeer(t, data, true)
	c := newTestCluster("a", stuck.member("s"))
	const dgst = "sha256:0000000000000000000000000000000000000000000000000000000000000001"
	c.setHolders(cluster.BlobKey(dgst), "s")
	src := NewSource(c, SourceOptions{Budget: Budget{IdleTimeout: 200 * time.Millisecond}})
	// The deadline only ends the test cleanly should the stopped body hang it.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	blob, err := src.OpenBlob(ctx, testRegistry, testRepo, dgst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Body.Close()
	buf := make([]byte, len(data))
	n := 0
	for err == nil {
		var m int
		m, err = blob.Body.Read(buf[n:])
		n += m
	}
	if n != len(data)/2 || !errdefs.IsUnavailable(err) {
		t.Errorf("read %d bytes, then %v; want the %d sent, then unavailable (no byte in time)", n, err, len(data)/2)
	}
}

func TestHolderWithout404IsSkipped(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", 64<<10)
	// e's registry does not have the image: it answers 404.
	e := newTestNode(t, "c", registrytest.NewUpstream(t), HandlerOptions{})
	b := newTestNode(t, "b", up, HandlerOptions{})
	b.warm(t, img.layer)

	c := newTestCluster("a", e.member(), b.member())
	c.setHolders(cluster.BlobKey(img.layer), "c", "b")
	src := NewSource(c, SourceOptions{})
	blob, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.backend.blobs.Load() != 1 {
		t.Errorf("the holder without the blob was asked %d times, want 1", e.backend.blobs.Load())
	}
	if blob.Peer != "b" {
		t.Errorf("blob from %q, want b", blob.Peer)
	}
	if got := readBlob(t, blob); !bytes.Equal(got, img.data) {
		t.Fatal("wrong bytes from b")
	}

	// Only holders that answer 404: not found, which sends the resolver to the registry.
	c.setHolders(cluster.BlobKey(img.layer), "c")
	if _, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil); !errdefs.IsNotFound(err) {
		t.Errorf("only a 404 holder: %v, want not found", err)
	}
}

func TestRejectedAndSkippedPeersAreNotAsked(t *testing.T) {
	t.Parallel()
	up, img, b := newHolder(t, 64<<10)
	d := newTestNode(t, "c", up, HandlerOptions{})
	d.warm(t, img.layer)

	c := newTestCluster("a", b.member(), d.member())
	c.setHolders(cluster.BlobKey(img.layer), "b", "c")
	c.setHomes(cluster.BlobKey(img.layer), b.member())
	src := NewSource(c, SourceOptions{Coalesce: true})

	// skip: b sent bad bytes of this blob in this pull.
	blob, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, []string{"b"})
	if err != nil {
		t.Fatal(err)
	}
	readBlob(t, blob)
	if blob.Peer != "c" || b.requests.Load() != 0 {
		t.Fatalf("blob from %q, b asked %d times; want from c, b never", blob.Peer, b.requests.Load())
	}

	// Reject: b is not asked again for any blob, nor as the home that would fill it.
	src.Reject("b", img.layer)
	for range 2 {
		blob, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil)
		if err != nil {
			t.Fatal(err)
		}
		readBlob(t, blob)
		if blob.Peer != "c" {
			t.Errorf("blob from %q, want c", blob.Peer)
		}
	}
	c.setHolders(cluster.BlobKey(img.layer), "b")
	if _, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil); !errdefs.IsNotFound(err) {
		t.Errorf("only a rejected holder: %v, want not found", err)
	}
	if b.requests.Load() != 0 {
		t.Errorf("the rejected peer was asked %d times", b.requests.Load())
	}
	if st := src.Stats(); st.Rejected != 1 {
		t.Errorf("Rejected = %d, want 1", st.Rejected)
	}

	// The penalty ends.
	short := NewSource(c, SourceOptions{RejectFor: time.Millisecond})
	short.Reject("b", img.layer)
	registrytest.Wait(t, "the penalty to end", func() bool { return !short.isRejected("b") })
	blob, err = short.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil)
	if err != nil {
		t.Fatal(err)
	}
	readBlob(t, blob)
	if blob.Peer != "b" {
		t.Errorf("after the penalty, blob from %q, want b", blob.Peer)
	}
}

func TestRejectedPeersAreBounded(t *testing.T) {
	t.Parallel()
	src := NewSource(newTestCluster("a"), SourceOptions{})
	for i := range maxRejectedPeers + 10 {
		src.Reject(fmt.Sprint("peer-", i), "sha256:x")
	}
	src.mu.Lock()
	n := len(src.bad)
	src.mu.Unlock()
	if n != maxRejectedPeers {
		t.Errorf("%d rejected peers remembered, want the bound %d", n, maxRejectedPeers)
	}
}

func TestCoalescedFillThroughTheHome(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", 256<<10)
	home := newTestNode(t, "h", up, HandlerOptions{})
	key := cluster.BlobKey(img.layer)

	tests := []struct {
		name     string
		coalesce bool
		homes    []cluster.Member
		skip     []string
		viaHome  bool
	}{
		{name: "coalesce", coalesce: true, homes: []cluster.Member{home.member()}, viaHome: true},
		{name: "coalesce off", homes: []cluster.Member{home.member()}},
		{name: "this node is the home", coalesce: true, homes: []cluster.Member{{Name: "a", PeerAddr: "127.0.0.1:1", State: cluster.Alive, Self: true}, home.member()}},
		{name: "home in skip", coalesce: true, homes: []cluster.Member{home.member()}, skip: []string{"h"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCluster("a", home.member())
			c.setHomes(key, tt.homes...)
			src := NewSource(c, SourceOptions{Coalesce: tt.coalesce})
			requests, fills, blobs := home.requests.Load(), home.fills.Load(), home.backend.blobs.Load()
			blob, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, tt.skip)
			if !tt.viaHome {
				if !errdefs.IsNotFound(err) {
					t.Errorf("OpenBlob: %v, want not found", err)
				}
				if home.requests.Load() != requests {
					t.Error("the home was asked")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !blob.ViaHome || blob.Peer != "h" {
				t.Errorf("blob from %q, via home %v; want from h via its fill", blob.Peer, blob.ViaHome)
			}
			if got := readBlob(t, blob); !bytes.Equal(got, img.data) {
				t.Fatal("wrong bytes through the home")
			}
			if home.fills.Load() != fills+1 || home.backend.blobs.Load() != blobs+1 {
				t.Errorf("the home got %d fill requests and %d blob calls, want 1 and 1", home.fills.Load()-fills, home.backend.blobs.Load()-blobs)
			}
			if st := src.Stats(); st.CoalescedFills != 1 {
				t.Errorf("CoalescedFills = %d, want 1", st.CoalescedFills)
			}
		})
	}
}

func TestLookupFailure(t *testing.T) {
	t.Parallel()
	c := newTestCluster("a")
	c.lookupErr = errors.New("no home answered")
	src := NewSource(c, SourceOptions{Coalesce: true})
	const dgst = "sha256:0000000000000000000000000000000000000000000000000000000000000001"
	if _, err := src.OpenBlob(t.Context(), testRegistry, testRepo, dgst, nil); err == nil || errdefs.IsNotFound(err) {
		t.Errorf("OpenBlob: %v, want the lookup's failure", err)
	}
	if _, err := src.Holders(t.Context(), dgst); err == nil {
		t.Error("Holders: no error, want the lookup's failure")
	}
}

func TestHoldersAndAnnouncements(t *testing.T) {
	t.Parallel()
	c := newTestCluster("a")
	src := NewSource(c, SourceOptions{})
	const dgst = "sha256:0000000000000000000000000000000000000000000000000000000000000001"
	names, err := src.Holders(t.Context(), dgst)
	if err != nil || len(names) != 0 {
		t.Errorf("Holders = %v, %v; want none", names, err)
	}
	c.setHolders(cluster.BlobKey(dgst), "b", "c")
	names, err = src.Holders(t.Context(), dgst)
	if err != nil || !slices.Equal(names, []string{"b", "c"}) {
		t.Errorf("Holders = %v, %v; want [b c]", names, err)
	}

	date := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	src.Cached(testRegistry, testRepo, dgst)
	src.Revalidated(testRegistry, testRepo, "v1", dgst, date)
	want := []cluster.Record{
		{Key: cluster.BlobKey(dgst)},
		{Key: cluster.TagKey(testRegistry, testRepo, "v1"), Digest: dgst, Date: date},
	}
	if !slices.Equal(c.announced, want) {
		t.Errorf("announced %+v, want %+v", c.announced, want)
	}
}

func TestHolderAttemptsAreBounded(t *testing.T) {
	t.Parallel()
	var asked atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	const dgst = "sha256:0000000000000000000000000000000000000000000000000000000000000001"
	c := newTestCluster("a")
	var names []string
	for i := range maxAttempts + 3 {
		m := cluster.Member{Name: fmt.Sprint("n", i), PeerAddr: strings.TrimPrefix(srv.URL, "https://"), State: cluster.Alive}
		c.members[m.Name] = m
		names = append(names, m.Name)
	}
	c.setHolders(cluster.BlobKey(dgst), names...)
	src := NewSource(c, SourceOptions{})
	if _, err := src.OpenBlob(t.Context(), testRegistry, testRepo, dgst, nil); !errdefs.IsNotFound(err) {
		t.Errorf("OpenBlob: %v, want not found", err)
	}
	if _, _, _, err := src.Manifest(t.Context(), testRegistry, testRepo, dgst); !errdefs.IsNotFound(err) {
		t.Errorf("Manifest: %v, want not found", err)
	}
	if asked.Load() != 2*maxAttempts {
		t.Errorf("%d requests for a blob and a manifest, want %d each", asked.Load(), maxAttempts)
	}
}

func TestTagFromRecords(t *testing.T) {
	t.Parallel()
	const (
		d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
		d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	)
	older := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	newer := older.Add(time.Minute)
	key := cluster.TagKey(testRegistry, testRepo, "v1")
	c := newTestCluster("a")
	src := NewSource(c, SourceOptions{})
	if _, _, err := src.Tag(t.Context(), testRegistry, testRepo, "v1"); !errdefs.IsNotFound(err) {
		t.Errorf("a tag without records: %v, want not found", err)
	}
	c.mu.Lock()
	c.holders[key] = []cluster.Holder{{Node: "b", Digest: d1, Date: older}, {Node: "c", Digest: d2, Date: newer}}
	c.mu.Unlock()
	if got, date, err := src.Tag(t.Context(), testRegistry, testRepo, "v1"); err != nil || got != d2 || !date.Equal(newer) {
		t.Errorf("Tag = %s, %s, %v; want the newest record's %s, %s", got, date, err, d2, newer)
	}
	// A rejected peer's record does not count.
	src.Reject("c", d2)
	if got, date, err := src.Tag(t.Context(), testRegistry, testRepo, "v1"); err != nil || got != d1 || !date.Equal(older) {
		t.Errorf("Tag = %s, %s, %v; want %s, %s, c being rejected", got, date, err, d1, older)
	}
	if st := src.Stats(); st.PeerAnswers != 2 {
		t.Errorf("PeerAnswers = %d, want 2", st.PeerAnswers)
	}
}

// TestWithTheClusterTLS runs a transfer between two cluster.Nodes (real gossip on loopback) over
// their TLS: the handler on b's Listener, authenticating with b; a's Source through a's client.
// A node with another cluster key reaches nothing.
func TestWithTheClusterTLS(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := push(t, up, "v1", 64<<10)
	r := newTestResolver(t, up)
	warm(t, r, img.layer)
	backend := newCountingBackend(r)
	secret := bytes.Repeat([]byte{7}, 32)
	_, bGossip := startClusterNode(t, "127.0.60.2", "b", secret, nil, func(n *cluster.Node) http.Handler {
		return newHandler(t, n, n.Handler(), backend, HandlerOptions{})
	})
	a, _ := startClusterNode(t, "127.0.60.1", "a", secret, []string{bGossip}, nil)
	registrytest.Wait(t, "a to see b alive", func() bool { _, ok := a.Member("b"); return ok })
	bm, _ := a.Member("b")

	c := newTestCluster("a", bm)
	c.client = a.Client()
	c.setHolders(cluster.BlobKey(img.layer), "b")
	blob, err := NewSource(c, SourceOptions{}).OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := readBlob(t, blob); !bytes.Equal(got, img.data) {
		t.Fatal("wrong bytes")
	}
	calls := backend.calls.Load()

	x, _ := startClusterNode(t, "127.0.60.3", "a", bytes.Repeat([]byte{8}, 32), nil, nil)
	other := newTestCluster("a", bm)
	other.client = x.Client()
	other.setHolders(cluster.BlobKey(img.layer), "b")
	_, err = NewSource(other, SourceOptions{}).OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil)
	if err == nil || errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "not from this cluster's CA") {
		t.Errorf("OpenBlob with another cluster key: %v, want the handshake refused", err)
	}
	if backend.calls.Load() != calls {
		t.Error("a request with another cluster key reached the backend")
	}
}

// startClusterNode starts cluster node name on ip with secret, joining join; with serve, its
// peer listener serves serve(node) on the node's Listener. It returns the node and its gossip
// address.
func startClusterNode(t *testing.T, ip, name string, secret []byte, join []string, serve func(*cluster.Node) http.Handler) (*cluster.Node, string) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	gossip := freeGossip(t, ip)
	n, err := cluster.Start(t.Context(), cluster.Config{
		NodeName:      name,
		GossipAddress: gossip,
		PeerPort:      ln.Addr().(*net.TCPAddr).Port,
		Join:          join,
		Secret:        secret,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if serve != nil {
		srv := &http.Server{Handler: serve(n), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(n.Listener(ln))
		t.Cleanup(func() { srv.Close() })
	}
	return n, gossip
}

// freeGossip is a port of ip free for both TCP and UDP a moment ago, as "ip:port".
func freeGossip(t *testing.T, ip string) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if u, err := net.ListenPacket("udp", addr); err == nil {
			u.Close()
			return addr
		}
	}
	t.Fatalf("no free TCP and UDP port on %s", ip)
	return ""
}
