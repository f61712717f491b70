package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// The cluster tier's end-to-end tests: several `lifeboat serve` processes on distinct loopback
// addresses form a cluster (harness.StartCluster), with the distribution registry as their
// upstream, whose access log counts the downloads it served.

// clusterGetTimeout bounds one GET through a member's mirror: far above what any answer takes,
// so that a hang fails the test instead of stalling it.
const clusterGetTimeout = 60 * time.Second

// upstreamOf is the options of members whose only upstream is reg.
func upstreamOf(reg *harness.Registry) harness.LifeboatOptions {
	return harness.LifeboatOptions{Upstreams: map[string][]string{reg.Host(): {reg.URL()}}}
}

// uncoalesced is upstreamOf with [cluster] coalesce = false: a blob's home does not fill it
// for the others, so only the nodes that pulled a blob hold it.
func uncoalesced(reg *harness.Registry) harness.LifeboatOptions {
	opts := upstreamOf(reg)
	opts.Cluster = &harness.ClusterOptions{Config: "coalesce = false\n"}
	return opts
}

// TestClusterColdNodeDuringOutage: nodes A and B pull an image; the registry is stopped; a
// fresh node F with an empty root joins, and containerd pulls the image by tag through F alone
// (hosts.toml without fallback) and runs it. Every answer came from the peers.
func TestClusterColdNodeDuringOutage(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/cold"
	img := reg.PushBusybox(t, repo, "1")
	c := harness.StartCluster(t, 2, upstreamOf(reg))
	for _, lb := range c.Nodes {
		pullVia(t, lb, reg.Host(), repo, "1", img)
	}
	blobs := blobDigests(t, img)
	waitHomed(t, c.Nodes, len(blobs)+2) // the blobs, the manifest and the tag

	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	f := c.AddFresh(t)
	c.WaitMembers(t)

	ctd := harness.StartContainerd(t)
	hostsDir := f.MirrorHostsDir(t, reg.Host())
	ref := reg.Ref(repo, "1")
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hostsDir, ref)
	if got, want := ctd.ImageDigest(t, ref), harness.Digest(t, img); got != want {
		t.Fatalf("F pulled %s as %s, pushed %s", ref, got, want)
	}
	token := strings.ToLower(rand.Text())[:12]
	if out := ctd.MustCtr(t, "run", "--rm", ref, "cold-"+token, "/bin/echo", token); !strings.Contains(out, token) {
		t.Fatalf("ctr run printed %q, want %q", out, token)
	}

	// containerd verified every byte; F's answers say where they came from.
	peerBlobs := f.MetricOrZero(t, "lifeboat_mirror_requests_total", map[string]string{"route": "blob", "result": "peer"})
	peerAnswers := f.MetricOrZero(t, "lifeboat_mirror_requests_total", map[string]string{"result": "peer"})
	in := f.MetricOrZero(t, "lifeboat_peer_bytes_total", map[string]string{"direction": "in"})
	t.Logf("F answered %v requests from peers (%v of them blobs), %v bytes in from peers", peerAnswers, peerBlobs, in)
	if peerBlobs < float64(len(blobs)) {
		t.Errorf("F answered %v blob requests with X-Lifeboat-Cache: peer, want %d (every blob of the image)", peerBlobs, len(blobs))
	}
	if peerAnswers <= peerBlobs {
		t.Errorf("F answered the tag and manifest from nowhere marked peer (%v peer answers, %v of them blobs)", peerAnswers, peerBlobs)
	}
	if in == 0 {
		t.Error("lifeboat_peer_bytes_total{direction=\"in\"} did not move on F")
	}
	var out float64
	for _, lb := range c.Nodes {
		out += lb.MetricOrZero(t, "lifeboat_peer_bytes_total", map[string]string{"direction": "out"})
	}
	if out < in {
		t.Errorf("A and B counted %v bytes out to peers, less than the %v bytes F counted in", out, in)
	}
}

// TestClusterCoalescing: five nodes GET the same cold blobs at the same moment; the registry
// serves each blob once. The short form's image is 2 × 16 MiB (the is 64 MiB): a
// fill of 16 MiB on loopback still overlaps every request, which is what is proven.
func TestClusterCoalescing(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/coalesce"
	img := reg.PushRandom(t, repo, "1", 2, 16<<20)
	c := harness.StartCluster(t, 5, upstreamOf(reg))
	blobs := blobDigests(t, img)

	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(c.Nodes)*len(blobs))
	for _, lb := range c.Nodes {
		for _, b := range blobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, err := getVerified(t.Context(), blobURL(lb, reg.Host(), repo, b), b)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", lb.Name, err)
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var coalesced float64
	for _, lb := range c.Nodes {
		coalesced += lb.MetricOrZero(t, "lifeboat_peer_coalesced_fills_total", nil)
	}
	t.Logf("%d nodes × %d blobs: %v coalesced fills", len(c.Nodes), len(blobs), coalesced)
	for _, b := range blobs {
		if n := reg.BlobGetsAtLeast(repo, b, 1); n != 1 {
			t.Errorf("the registry served %s %d times to %d nodes pulling at once, want 1", b, n, len(c.Nodes))
		}
	}
}

// TestClusterTagConflict: A revalidated a tag to d1; the tag is pushed again and, a second of
// the registry's clock later, B revalidates it to d2. During an outage a fresh node F resolves
// the tag to d2, the record with the newest registry Date, though A's record names d1.
func TestClusterTagConflict(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/conflict"
	img1 := reg.PushRandom(t, repo, "v", 1, 4096)
	c := harness.StartCluster(t, 2, upstreamOf(reg))
	a, b := c.Nodes[0], c.Nodes[1]

	pullVia(t, a, reg.Host(), repo, "v", img1)
	revalidatedA := time.Now()
	img2 := reg.PushRandom(t, repo, "v", 1, 4096)
	// The registry's Date has whole seconds: B's must be later than A's, not equal.
	harness.WaitFor(t, "the clock to pass the second of A's revalidation", 5*time.Second, nil, func() error {
		if !time.Now().Truncate(time.Second).After(revalidatedA) {
			return errors.New("still the same second")
		}
		return nil
	})
	pullVia(t, b, reg.Host(), repo, "v", img2)
	d1, d2 := harness.Digest(t, img1), harness.Digest(t, img2)
	waitHomed(t, c.Nodes, 1+2*(len(blobDigests(t, img1))+1))

	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	resolveDuringOutage(t, c, reg.Host(), repo, "v", 1+2*(len(blobDigests(t, img1))+1), d2, d1)
}

// resolveDuringOutage starts a fresh node F, waits until it homes keys keys (with at most three
// members, every node is a home of every key: F got the others' records), and checks that F
// resolves repo:tag to want, from the peers.
func resolveDuringOutage(t *testing.T, c *harness.Cluster, registry, repo, tag string, keys int, want, other string) {
	t.Helper()
	f := c.AddFresh(t)
	c.WaitMembers(t)
	waitHomed(t, []*harness.Lifeboat{f}, keys)

	dgst, cacheStatus := headManifest(t, f, "/v2/"+repo+"/manifests/"+tag+"?ns="+registry)
	t.Logf("during the outage F resolved the tag to %s (%s); want %s, not %s", dgst, cacheStatus, want, other)
	if dgst != want {
		t.Errorf("F resolved the tag to %s, want %s (not %s)", dgst, want, other)
	}
	if cacheStatus != "peer" {
		t.Errorf("F's answer has X-Lifeboat-Cache %q, want peer", cacheStatus)
	}
	if _, err := getVerified(t.Context(), f.URL()+"/v2/"+repo+"/manifests/"+want+"?ns="+registry, want); err != nil {
		t.Errorf("F could not serve the manifest %s it resolved the tag to: %v", want, err)
	}
}

// TestClusterTagTie: the registry's Date is the same for every answer (a forwarder sets it), so
// the tag records tie on time. A revalidated the tag to d1, B and C later to d2, where d1 is the
// lower digest: F resolves it to d2, named by more holders.
func TestClusterTagTie(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	date := time.Now().UTC().Format(http.TimeFormat)
	target, _ := url.Parse(reg.URL())
	fwd := httputil.NewSingleHostReverseProxy(target)
	fwd.ModifyResponse = func(resp *http.Response) error {
		resp.Header.Set("Date", date)
		return nil
	}
	upstream := httptest.NewServer(fwd)
	t.Cleanup(upstream.Close)

	const repo = "cluster/tie"
	img1 := reg.PushRandom(t, repo, "v", 1, 4096)
	d1 := harness.Digest(t, img1)
	img2 := harness.RandomImage(t, harness.HostPlatform(), 1, 4096)
	for harness.Digest(t, img2) < d1 { // d1 must be the lower: the lowest-digest rule alone would pick it
		img2 = harness.RandomImage(t, harness.HostPlatform(), 1, 4096)
	}
	d2 := harness.Digest(t, img2)

	c := harness.StartCluster(t, 2, harness.LifeboatOptions{Upstreams: map[string][]string{reg.Host(): {upstream.URL}}})
	pullVia(t, c.Nodes[0], reg.Host(), repo, "v", img1)
	reg.PushImage(t, repo, "v", img2)
	pullVia(t, c.Nodes[1], reg.Host(), repo, "v", img2)
	// F, the third member, also revalidates to d2 before the outage: two holders name d2.
	f := c.AddFresh(t)
	c.WaitMembers(t)
	pullVia(t, f, reg.Host(), repo, "v", img2)
	waitHolders(t, c, c.Nodes, cluster.TagKey(reg.Host(), repo, "v"), 3)

	upstream.Close()
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The fourth member is not a home of every key: it asks the homes.
	resolveDuringOutage(t, c, reg.Host(), repo, "v", 0, d2, d1)
}

// TestClusterPeerServesWrongBytes: A holds a layer whose file was damaged on disk, so it serves
// wrong bytes to peers. F, asking A first (the only holder: coalescing is off, so no home filled
// a copy), rejects them, counts the rejection, and gets the right bytes from elsewhere (the
// registry); no wrong byte is cached on F.
func TestClusterPeerServesWrongBytes(t *testing.T) {
	t.Parallel()

	const repo = "cluster/wrong"
	reg, c, img := pulledByFirst(t, 2, repo, 2, 1<<20)
	a, f := c.Nodes[0], c.Nodes[1]

	layer := harness.LayerDigests(t, img)[0]
	corruptBlob(t, a.Root, layer)
	rejected := f.MetricOrZero(t, "lifeboat_peer_rejected_total", nil)
	upstreamGets := reg.BlobGets(repo, layer)

	// The first answer may be cut if wrong bytes reached the client before the mismatch was
	// known; a complete answer with wrong bytes never may.
	url := blobURL(f, reg.Host(), repo, layer)
	var err error
	for attempt := range 2 {
		if _, err = getVerified(t.Context(), url, layer); err == nil {
			break
		}
		if strings.Contains(err.Error(), "bytes hash to") {
			t.Fatalf("F served wrong bytes of %s in full: %v", layer, err)
		}
		t.Logf("attempt %d: %v", attempt+1, err)
	}
	if err != nil {
		t.Fatalf("F could not serve %s after A sent wrong bytes: %v", layer, err)
	}
	if got := f.MetricOrZero(t, "lifeboat_peer_rejected_total", nil); got <= rejected {
		t.Errorf("lifeboat_peer_rejected_total on F stayed at %v: A's wrong bytes were not rejected (or never asked for)", got)
	}
	if got := reg.BlobGetsAtLeast(repo, layer, upstreamGets+1); got <= upstreamGets {
		t.Errorf("the registry served %s %d times, as before F's request: the right bytes came from nowhere", layer, got)
	}
	checkCachedFile(t, f.Root, layer)
}

// TestClusterPeerDeath: with the registry stopped, R fetches an image three holders hold
// (coalescing off, so that R, a home, holds none of it). First
// the first home of a blob's key is killed (SIGKILL): R's fetches keep working, before and after
// the others see it dead. Then the first home of another blob hangs (SIGSTOP): R's fetch still
// completes, bounded by hedging and the peer timeout.
func TestClusterPeerDeath(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/death"
	img := reg.PushRandom(t, repo, "1", 3, 512<<10)
	c := harness.StartCluster(t, 4, uncoalesced(reg))
	r := c.Nodes[3]
	for _, lb := range c.Nodes[:3] {
		pullVia(t, lb, reg.Host(), repo, "1", img)
	}
	blobs := blobDigests(t, img)
	waitHomed(t, c.Nodes, len(blobs)+2)
	// Every home of the blobs R fetches knows all three holders: a home that had heard only from
	// the holder killed below would send R nowhere else.
	for _, d := range blobs[:3] {
		waitHolders(t, c, homesOf(c.Nodes, d, 3), cluster.BlobKey(digest.Digest(d)), 3)
	}
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	dead := firstHome(t, c.Running(), blobs[0], r)
	dead.Kill(t)
	t.Logf("killed %s, the first home of %s", dead.Name, blobs[0])
	fetchFromPeers(t, r, reg.Host(), repo, blobs[0])
	c.WaitMembers(t)
	fetchFromPeers(t, r, reg.Host(), repo, blobs[1])

	hung := firstHome(t, c.Running(), blobs[2], r)
	hung.Pause(t)
	start := time.Now()
	fetchFromPeers(t, r, reg.Host(), repo, blobs[2])
	t.Logf("%s (first home of %s) hung: R's fetch took %s", hung.Name, blobs[2], time.Since(start).Round(time.Millisecond))
	hung.Resume(t)
	c.WaitMembers(t)
}

// TestClusterSecurity: a node with another key never becomes a member; the peer listener refuses
// every client without a certificate of the cluster's CA (plain HTTP, no certificate, another
// key's) before any handler runs; a registry with share_with_peers = false is neither fetched
// from peers nor served to them.
func TestClusterSecurity(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	const private = "private.lifeboat.test"
	opts := upstreamOf(reg)
	opts.ExtraConfig = fmt.Sprintf("[registry.%q]\nendpoints = [%q]\nshare_with_peers = false\n", private, reg.URL())
	c := harness.StartCluster(t, 2, opts)
	a, b := c.Nodes[0], c.Nodes[1]

	t.Run("wrong key", func(t *testing.T) {
		other := opts
		other.Cluster = &harness.ClusterOptions{Name: "intruder", KeyFile: harness.WriteClusterKey(t)}
		intruder := c.Add(t, other)
		// A member that joins after the intruder tried proves the gossip since then reached
		// everyone.
		late := c.AddFresh(t)
		harness.WaitAlive(t, a, b, late)
		for _, lb := range []*harness.Lifeboat{a, b, late} {
			if n := lb.Metric(t, "lifeboat_cluster_members", nil); n != 3 {
				t.Errorf("%s counts %v members in any state, want 3: the node with another key shows", lb.Name, n)
			}
		}
		if n := intruder.Metric(t, "lifeboat_cluster_members", map[string]string{"state": "alive"}); n != 1 {
			t.Errorf("the node with another key sees %v members alive, want only itself", n)
		}
	})

	const repo = "cluster/secure"
	shared := reg.PushRandom(t, repo, "shared", 1, 64<<10)
	secret := reg.PushRandom(t, repo, "secret", 1, 64<<10)
	pullVia(t, a, reg.Host(), repo, "shared", shared)
	pullVia(t, a, private, repo, "shared", shared)
	pullVia(t, a, private, repo, "secret", secret)
	sharedLayer := harness.LayerDigests(t, shared)[0]
	secretLayer := harness.LayerDigests(t, secret)[0]
	waitHomed(t, []*harness.Lifeboat{a, b}, len(blobDigests(t, shared))+2)

	t.Run("peer TLS", func(t *testing.T) {
		now := time.Now()
		otherKey := harness.PeerCertificate(t, harness.WriteClusterKey(t), b.Name, now.Add(-time.Hour), now.Add(time.Hour))
		stranger, otherCluster := harness.TLSClient(t), harness.TLSClient(t, otherKey)
		member := harness.PeerClient(t, c.KeyFile, b.Name)
		blob := a.PeerURL("/v2/" + repo + "/blobs/" + sharedLayer + "?ns=" + reg.Host())
		outBefore := a.MetricOrZero(t, "lifeboat_peer_bytes_total", map[string]string{"direction": "out"})
		for _, tc := range []struct {
			name   string
			method string
			url    string
			client *http.Client
			want   int // 0: the handshake is refused
		}{
			{"ping without a certificate", http.MethodGet, a.PeerURL("/v2/"), stranger, 0},
			{"blob without a certificate", http.MethodGet, blob, stranger, 0},
			{"lookup without a certificate", http.MethodPost, a.PeerURL("/lifeboat/v1/lookup"), stranger, 0},
			{"announce without a certificate", http.MethodPost, a.PeerURL("/lifeboat/v1/announce"), stranger, 0},
			{"blob with another key's certificate", http.MethodGet, blob, otherCluster, 0},
			{"blob in plain HTTP", http.MethodGet, "http://" + a.Peer + "/v2/" + repo + "/blobs/" + sharedLayer + "?ns=" + reg.Host(), http.DefaultClient, http.StatusBadRequest},
		} {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, tc.url, strings.NewReader("{}"))
			req.Header.Set(cluster.HeaderPeer, b.Name)
			resp, err := tc.client.Do(req)
			if tc.want == 0 {
				if err == nil {
					resp.Body.Close()
					t.Errorf("%s: answered %s, want the TLS handshake refused", tc.name, resp.Status)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s: %s, want %d: %.200s", tc.name, resp.Status, tc.want, body)
			}
		}
		if out := a.MetricOrZero(t, "lifeboat_peer_bytes_total", map[string]string{"direction": "out"}); out != outBefore {
			t.Errorf("A sent %v bytes to clients it refused", out-outBefore)
		}
		resp, err := member.Get(blob)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("blob with a certificate of the cluster: %s, want 200", resp.Status)
		}

		// Not served to peers, even to a member: the blob A holds only from the private
		// registry.
		resp, err = member.Get(a.PeerURL("/v2/" + repo + "/blobs/" + secretLayer + "?ns=" + private))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("A served a blob of the registry not shared with peers to a member")
		}
	})

	t.Run("not shared", func(t *testing.T) {
		// B asks for a blob A holds (and announced, from the shared name) under the private
		// name: the registry serves it, not A.
		before := reg.BlobGets(repo, sharedLayer)
		in := b.MetricOrZero(t, "lifeboat_peer_bytes_total", map[string]string{"direction": "in"})
		status, err := getVerified(t.Context(), blobURL(b, private, repo, sharedLayer), sharedLayer)
		if err != nil {
			t.Fatal(err)
		}
		if got := reg.BlobGetsAtLeast(repo, sharedLayer, before+1); got != before+1 || status == "peer" {
			t.Errorf("B fetched a blob of the private registry from %q, the registry served it %d times (want %d): it came from a peer", status, got-before, 1)
		}
		if got := b.MetricOrZero(t, "lifeboat_peer_bytes_total", map[string]string{"direction": "in"}); got != in {
			t.Errorf("B received %v bytes from peers while fetching a blob of the private registry", got-in)
		}
		// A's blob of the private registry was never announced: B asking for the same digest
		// under the shared name gets it from the registry.
		before = reg.BlobGets(repo, secretLayer)
		status, err = getVerified(t.Context(), blobURL(b, reg.Host(), repo, secretLayer), secretLayer)
		if err != nil {
			t.Fatal(err)
		}
		// (Through A's coalesced fill is fine, if A asked the registry itself.)
		if got := reg.BlobGetsAtLeast(repo, secretLayer, before+1); got != before+1 {
			t.Errorf("B fetched %s, held by A only from the private registry, with X-Lifeboat-Cache %q; the registry served it %d times, want 1: A shared it", secretLayer, status, got-before)
		}
	})
}

// TestClusterOutageTargets (coalescing off, so that only A holds what A pulled): `lifeboat
// outage start --target peers` sends a node to the registry instead of its peers; `--target
// all` leaves it only its own cache: a cached blob is served, a blob only a peer holds fails
// cleanly with 404.
func TestClusterOutageTargets(t *testing.T) {
	t.Parallel()

	const repo = "cluster/targets"
	reg, c, img := pulledByFirst(t, 2, repo, 2, 256<<10)
	b := c.Nodes[1]
	layers := harness.LayerDigests(t, img)

	if _, err := b.CLI(t, "outage", "start", "--mode", "blackhole", "--target", "peers"); err != nil {
		t.Fatal(err)
	}
	before := reg.BlobGets(repo, layers[0])
	status, err := getVerified(t.Context(), blobURL(b, reg.Host(), repo, layers[0]), layers[0])
	if err != nil {
		t.Fatalf("with peers cut, B could not fetch %s: %v", layers[0], err)
	}
	if got := reg.BlobGetsAtLeast(repo, layers[0], before+1); got != before+1 || status == "peer" {
		t.Errorf("with peers cut, B answered %s with %q and the registry served it %d times, want once", layers[0], status, got-before)
	}
	if _, err := b.CLI(t, "outage", "stop"); err != nil {
		t.Fatal(err)
	}

	if _, err := b.CLI(t, "outage", "start", "--mode", "blackhole", "--target", "all"); err != nil {
		t.Fatal(err)
	}
	if status, err := getVerified(t.Context(), blobURL(b, reg.Host(), repo, layers[0]), layers[0]); err != nil || status != "hit" {
		t.Errorf("with everything cut, B's cached %s: %q, %v; want a hit", layers[0], status, err)
	}
	before = reg.BlobGets(repo, layers[1])
	start := time.Now()
	resp, err := http.Get(blobURL(b, reg.Host(), repo, layers[1]))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	took := time.Since(start)
	t.Logf("with everything cut, B answered %s (held by A only) with %s in %s", layers[1], resp.Status, took.Round(time.Millisecond))
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("with everything cut, B answered a blob only A holds with %s, want 404", resp.Status)
	}
	if took > failFast {
		t.Errorf("the 404 took %s, want under %s", took, failFast)
	}
	if got := reg.BlobGets(repo, layers[1]); got != before {
		t.Errorf("with everything cut, the registry still served %s to B", layers[1])
	}
	if _, err := b.CLI(t, "outage", "stop"); err != nil {
		t.Fatal(err)
	}
}

// pulledByFirst starts a registry holding repo:1, a random image of layers × layerSize, and a
// cluster of n members without coalescing (only the nodes that pull a blob hold it); the first
// member pulls the image, and the homes learn it.
func pulledByFirst(t *testing.T, n int, repo string, layers int, layerSize int64) (*harness.Registry, *harness.Cluster, v1.Image) {
	t.Helper()
	reg := harness.StartRegistry(t)
	img := reg.PushRandom(t, repo, "1", layers, layerSize)
	c := harness.StartCluster(t, n, uncoalesced(reg))
	pullVia(t, c.Nodes[0], reg.Host(), repo, "1", img)
	waitHomed(t, c.Nodes, len(blobDigests(t, img))+2)
	return reg, c, img
}

// blobURL is the URL of a blob of registry's repo at lb's mirror.
func blobURL(lb *harness.Lifeboat, registry, repo, dgst string) string {
	return lb.URL() + "/v2/" + repo + "/blobs/" + dgst + "?ns=" + registry
}

// pullVia GETs img's manifest by tag and then its config and layers through lb's mirror, and
// checks every byte against its digest.
func pullVia(t *testing.T, lb *harness.Lifeboat, registry, repo, tag string, img v1.Image) {
	t.Helper()
	if _, err := getVerified(t.Context(), lb.URL()+"/v2/"+repo+"/manifests/"+tag+"?ns="+registry, harness.Digest(t, img)); err != nil {
		t.Fatalf("%s: %v", lb.Name, err)
	}
	for _, b := range blobDigests(t, img) {
		if _, err := getVerified(t.Context(), blobURL(lb, registry, repo, b), b); err != nil {
			t.Fatalf("%s: %v", lb.Name, err)
		}
	}
}

// getVerified GETs url, checks that the body hashes to dgst, and returns the answer's
// X-Lifeboat-Cache.
func getVerified(ctx context.Context, url, dgst string) (cacheStatus string, err error) {
	ctx, cancel := context.WithTimeout(ctx, clusterGetTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
		return "", fmt.Errorf("GET %s: bytes hash to %s, want %s", url, got, dgst)
	}
	return resp.Header.Get("X-Lifeboat-Cache"), nil
}

// headManifest HEADs a manifest at lb's mirror and returns its digest and X-Lifeboat-Cache.
func headManifest(t *testing.T, lb *harness.Lifeboat, path string) (dgst, cacheStatus string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodHead, lb.URL()+path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s at %s: %s", path, lb.Name, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("X-Lifeboat-Cache")
}

// fetchFromPeers GETs a blob through lb's mirror while the registry is down: the bytes must
// verify and the answer be marked as a peer's.
func fetchFromPeers(t *testing.T, lb *harness.Lifeboat, registry, repo, dgst string) {
	t.Helper()
	status, err := getVerified(t.Context(), blobURL(lb, registry, repo, dgst), dgst)
	if err != nil {
		t.Fatalf("%s: %v", lb.Name, err)
	}
	if status != "peer" {
		t.Errorf("%s answered %s with X-Lifeboat-Cache %q, want peer", lb.Name, dgst, status)
	}
}

// waitHomed waits until each node's index holds records of at least keys keys
// (lifeboat_cluster_homed_keys): the announcements of what the nodes pulled reached their
// homes. Every node is a home of every key while a cluster has at most [cluster] replicas (3)
// members.
func waitHomed(t *testing.T, nodes []*harness.Lifeboat, keys int) {
	t.Helper()
	homes := nodes
	if len(nodes) > 3 {
		homes = nil // some node is a home of each key, but which one is the hashing's choice
	}
	harness.WaitFor(t, "announcements to reach their homes", 30*time.Second, nil, func() error {
		total := 0.0
		for _, lb := range nodes {
			n := lb.MetricOrZero(t, "lifeboat_cluster_homed_keys", nil)
			total += n
			if homes != nil && int(n) < keys {
				return fmt.Errorf("%s homes %v keys, want at least %d", lb.Name, n, keys)
			}
		}
		if homes == nil && int(total) < 3*keys {
			return fmt.Errorf("the nodes home %v keys in all, want at least %d (%d keys × 3 replicas)", total, 3*keys, keys)
		}
		return nil
	})
}

// waitHolders waits until each of homes knows holders records of key (a lookup at its peer
// listener, as a member): the announcements, and the re-homing after a join, reached it.
func waitHolders(t *testing.T, c *harness.Cluster, homes []*harness.Lifeboat, key string, holders int) {
	t.Helper()
	client := harness.PeerClient(t, c.KeyFile, "test")
	harness.WaitFor(t, fmt.Sprintf("the homes to know %d holders of %s", holders, key), 30*time.Second, nil, func() error {
		for _, h := range homes {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, h.PeerURL(cluster.PathLookup+"?key="+url.QueryEscape(key)), nil)
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			var body struct{ Holders []cluster.Holder }
			err = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if err != nil {
				return fmt.Errorf("%s: %s: %w", h.Name, resp.Status, err)
			}
			if len(body.Holders) != holders {
				return fmt.Errorf("%s knows %d holders: %v", h.Name, len(body.Holders), body.Holders)
			}
		}
		return nil
	})
}

// homesOf is dgst's n homes among nodes, by the cluster's rendezvous hashing.
func homesOf(nodes []*harness.Lifeboat, dgst string, n int) []*harness.Lifeboat {
	byName := map[string]*harness.Lifeboat{}
	var names []string
	for _, lb := range nodes {
		byName[lb.Name] = lb
		names = append(names, lb.Name)
	}
	var homes []*harness.Lifeboat
	for _, name := range cluster.Rendezvous(cluster.BlobKey(digest.Digest(dgst)), names, n) {
		homes = append(homes, byName[name])
	}
	return homes
}

// firstHome is the member of nodes, other than not, that ranks first for dgst's key by the
// cluster's rendezvous hashing among nodes.
func firstHome(t *testing.T, nodes []*harness.Lifeboat, dgst string, not *harness.Lifeboat) *harness.Lifeboat {
	t.Helper()
	for _, lb := range homesOf(nodes, dgst, len(nodes)) {
		if lb != not {
			return lb
		}
	}
	t.Fatalf("no home of %s among %d nodes but %s", dgst, len(nodes), not.Name)
	return nil
}

// checkCachedFile checks that the cache under root holds dgst's blob with the right bytes.
//
// A blob's readers finish once its bytes verified, a moment before the fill has committed it:
// the file is waited for (10 s at most).
func checkCachedFile(t *testing.T, root, dgst string) {
	t.Helper()
	path := filepath.Join(root, "blobs", "sha256", strings.TrimPrefix(dgst, "sha256:"))
	f, err := os.Open(path)
	for deadline := time.Now().Add(10 * time.Second); errors.Is(err, fs.ErrNotExist) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		f, err = os.Open(path)
	}
	if err != nil {
		t.Errorf("blob %s is not in the cache: %v", dgst, err)
		return
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
		t.Errorf("the cache holds wrong bytes for %s (they hash to %s)", dgst, got)
	}
}
