package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// The cluster tier's failed paths, with real `lifeboat serve` processes and the registry up: a
// peer that fails costs a cold blob no latency (the per-peer breaker, lookups that do not wait
// on a straggler), and a coalesced fill survives its home.

// silentPeer is a member of the cluster that gossips but whose peer listener answers no HTTP
// request (a firewall in front of the peer port, a wrong advertise address): a real cluster
// node (package cluster) in this process, whose peer port accepts connections and holds every
// request until its sender gives up. It counts the requests by kind.
type silentPeer struct {
	node *cluster.Node
	// lookups and blobs are the index lookups and /v2/ blob requests that reached it; probes
	// the breaker's GET /v2/; others the rest (announcements).
	lookups, blobs, probes, others atomic.Int64
}

// startSilentPeer joins the cluster of c as name, on a loopback address of its own.
func startSilentPeer(t *testing.T, c *harness.Cluster, name string) *silentPeer {
	t.Helper()
	secret, err := cluster.LoadSecret(c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ip := harness.LoopbackIP()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	p := &silentPeer{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == cluster.PathLookup:
			p.lookups.Add(1)
		case r.URL.Path == "/v2/":
			p.probes.Add(1)
		case strings.Contains(r.URL.Path, "/blobs/"):
			p.blobs.Add(1)
		default:
			p.others.Add(1)
		}
		<-r.Context().Done()
	})}
	p.node, err = cluster.Start(t.Context(), cluster.Config{
		NodeName:         name,
		GossipAddress:    net.JoinHostPort(ip, "0"),
		AdvertiseAddress: ip,
		PeerPort:         ln.Addr().(*net.TCPAddr).Port,
		Join:             []string{c.Nodes[0].Gossip},
		Secret:           secret,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.node.Close() })
	// Over the cluster's mutual TLS, as every peer listener: the requests reach the handler,
	// which answers nothing.
	go srv.Serve(p.node.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return p
}

// asked is how many lookups and blob requests reached the peer.
func (p *silentPeer) asked() int64 { return p.lookups.Load() + p.blobs.Load() }

// waitAliveCount waits until lb counts n members alive.
func waitAliveCount(t *testing.T, lb *harness.Lifeboat, n int) {
	t.Helper()
	harness.WaitFor(t, fmt.Sprintf("%s to see %d members alive", lb.Name, n), 60*time.Second, nil, func() error {
		if got := lb.MetricOrZero(t, "lifeboat_cluster_members", map[string]string{"state": "alive"}); int(got) != n {
			return fmt.Errorf("%s sees %v members alive", lb.Name, got)
		}
		return nil
	})
}

// timedGets GETs each blob through lb's mirror, verified, and returns how long each took.
func timedGets(t *testing.T, lb *harness.Lifeboat, registry, repo string, blobs []string) []time.Duration {
	t.Helper()
	took := make([]time.Duration, len(blobs))
	for i, b := range blobs {
		start := time.Now()
		if _, err := getVerified(t.Context(), blobURL(lb, registry, repo, b), b); err != nil {
			t.Fatalf("%s: %v", lb.Name, err)
		}
		took[i] = time.Since(start)
	}
	return took
}

// roundedMs is ds in milliseconds, for the log.
func roundedMs(ds []time.Duration) []int64 {
	ms := make([]int64, len(ds))
	for i, d := range ds {
		ms[i] = d.Milliseconds()
	}
	return ms
}

// TestClusterUnreachablePeers (issue 21, row 7): R's two peers are alive in gossip but answer
// no HTTP request, and the registry is up. The first cold blob trips R's breaker on both
// (its lookup waits for them once); every cold blob after it asks them nothing at all, neither
// a lookup nor a transfer nor a coalesced fill, and comes from the registry. Counted at the
// peers' listeners, not by the clock.
func TestClusterUnreachablePeers(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/unreachable"
	const cold = 8
	img := reg.PushRandom(t, repo, "1", cold+1, 256<<10)
	blobs := harness.LayerDigests(t, img)

	c := harness.StartCluster(t, 1, upstreamOf(reg))
	r := c.Nodes[0]
	silent := []*silentPeer{startSilentPeer(t, c, "silent-1"), startSilentPeer(t, c, "silent-2")}
	waitAliveCount(t, r, 3)

	first := timedGets(t, r, reg.Host(), repo, blobs[:1])
	var asked int64
	for _, p := range silent {
		asked += p.asked()
	}
	if asked == 0 {
		t.Fatal("the first cold blob asked the silent peers nothing: the test does not reach them")
	}
	trips := r.Metric(t, "lifeboat_peer_breaker_trips_total", nil)
	skips := r.Metric(t, "lifeboat_peer_breaker_skips_total", nil)
	if down := r.Metric(t, "lifeboat_peer_down", nil); down != 2 {
		t.Errorf("after the first cold blob R holds %v peers down, want both", down)
	}

	took := timedGets(t, r, reg.Host(), repo, blobs[1:])
	var after int64
	for _, p := range silent {
		after += p.asked()
	}
	t.Logf("first cold blob: %v ms (its lookup waited on the silent peers); next %d: %v ms", roundedMs(first), cold, roundedMs(took))
	if after != asked {
		t.Errorf("the %d cold blobs after the first sent %d lookups or blob requests to the peers held down, want none", cold, after-asked)
	}
	if got := r.Metric(t, "lifeboat_peer_breaker_skips_total", nil); got < skips+cold {
		t.Errorf("R spared the down peers %v requests over %d cold blobs, want at least one per blob", got-skips, cold)
	}
	if got := r.Metric(t, "lifeboat_peer_breaker_trips_total", nil); got != trips {
		t.Errorf("R tripped its breaker %v more times while the peers were down", got-trips)
	}
	for _, b := range blobs {
		if n := reg.BlobGetsAtLeast(repo, b, 1); n != 1 {
			t.Errorf("the registry served %s %d times, want once", b, n)
		}
	}

	// For the record: the same cold blobs through a lifeboat with the cluster off.
	off := harness.StartLifeboat(t, upstreamOf(reg))
	t.Logf("the same %d cold blobs with the cluster off: %v ms", cold, roundedMs(timedGets(t, off, reg.Host(), repo, blobs[1:])))
}

// TestClusterStoppedHome (issue 21, row 8): of three nodes, H is stopped (SIGSTOP) with the
// registry up, and R fetches cold blobs whose first home H is, before memberlist declares H
// dead. R's lookups end once the other homes answered, without waiting on H (counted in the
// lookup histogram), and no blob goes through H's fill: none takes anything like the 2 s a
// coalesced fill sent to a stopped home waits.
func TestClusterStoppedHome(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/stopped"
	img := reg.PushRandom(t, repo, "1", 24, 64<<10)
	c := harness.StartCluster(t, 3, upstreamOf(reg))
	r, h := c.Nodes[0], c.Nodes[2]
	var blobs []string
	for _, b := range harness.LayerDigests(t, img) {
		if homesOf(c.Nodes, b, 3)[0] == h {
			blobs = append(blobs, b)
		}
	}
	if len(blobs) < 3 {
		t.Fatalf("only %d of 24 layers have %s as first home", len(blobs), h.Name)
	}

	const lookupBucket = 0.256 // half the lookup timeout: a lookup above it waited on H
	count, buckets := r.Histogram(t, "lifeboat_cluster_lookup_duration_seconds")
	h.Pause(t)
	start := time.Now()
	took := timedGets(t, r, reg.Host(), repo, blobs)
	total := time.Since(start)
	after, bucketsAfter := r.Histogram(t, "lifeboat_cluster_lookup_duration_seconds")
	if alive := r.Metric(t, "lifeboat_cluster_members", map[string]string{"state": "alive"}); alive != 3 {
		// Memberlist declared H dead during the run: the homes changed under it.
		t.Logf("R counts %v members alive at the end: H was declared dead during the run", alive)
	}
	lookups := after - count
	slow := lookups - (bucketsAfter[lookupBucket] - buckets[lookupBucket])
	t.Logf("%d cold blobs whose first home is stopped: %v ms (%s in all); %d lookups, %d over %v s",
		len(blobs), roundedMs(took), total.Round(time.Millisecond), lookups, slow, lookupBucket)
	if lookups < uint64(len(blobs)) {
		t.Errorf("R made %d lookups for %d cold blobs, want one at least for each", lookups, len(blobs))
	}
	if slow != 0 {
		t.Errorf("%d of R's lookups took over %v s: they waited on the stopped home", slow, lookupBucket)
	}
	for i, d := range took {
		if d >= 1500*time.Millisecond {
			t.Errorf("cold blob %s took %s: it waited on the stopped home", blobs[i], d.Round(time.Millisecond))
		}
	}
	h.Resume(t)
	c.WaitMembers(t)
}

// TestClusterFillSurvivesItsHome (issue 21, row 9): R fetches a cold 8 MiB blob (above
// verify_before_send) through the coalesced fill of its home H; H's registry sends 3 MiB and
// then nothing. Once R's client has 2 MiB, H is killed (SIGKILL). R resumes its fill from the
// registry with a Range request at the offset written: the client gets the whole blob, which
// verifies, in one answer.
func TestClusterFillSurvivesItsHome(t *testing.T) {
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/survive"
	const size = 8 << 20
	names := []string{"node-0", "node-1"} // R and H, as the cluster names them
	var img v1.Image
	var layer string
	for range 64 {
		img = reg.PushRandom(t, repo, "1", 1, size)
		layer = harness.LayerDigests(t, img)[0]
		if cluster.Rendezvous(cluster.BlobKey(digest.Digest(layer)), names, 2)[0] == names[1] {
			break
		}
	}
	if cluster.Rendezvous(cluster.BlobKey(digest.Digest(layer)), names, 2)[0] != names[1] {
		t.Fatal("no layer found whose first home is H")
	}

	// H's registry: the layer's first 3 MiB, then nothing until H is gone.
	stalled := newStallingUpstream(t, reg, layer, 3<<20)
	streaming := "[cache]\nmax_size = \"8GiB\"\nverify_before_send = \"0\"\n"
	rOpts := upstreamOf(reg)
	rOpts.MaxSize, rOpts.ExtraConfig = "auto", streaming
	hOpts := harness.LifeboatOptions{Upstreams: map[string][]string{reg.Host(): {stalled.URL}}, MaxSize: "auto", ExtraConfig: streaming}
	c := harness.StartCluster(t, 1, rOpts)
	c.Add(t, hOpts)
	c.WaitMembers(t)
	r, h := c.Nodes[0], c.Nodes[1]

	ctx, cancel := context.WithTimeout(t.Context(), clusterGetTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, blobURL(r, reg.Host(), repo, layer), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength < size {
		t.Fatalf("R answered %s with %d bytes, want 200 with the layer's %d or more", resp.Status, resp.ContentLength, size)
	}
	if got := resp.Header.Get("X-Lifeboat-Cache"); got != "peer" {
		t.Errorf("R's answer has X-Lifeboat-Cache %q, want peer (through H's fill)", got)
	}
	hash := sha256.New()
	head, err := io.CopyN(hash, resp.Body, 2<<20)
	if err != nil {
		t.Fatalf("R's client read %d bytes before H was killed: %v", head, err)
	}
	h.Kill(t)
	stalled.release()
	rest, err := io.Copy(hash, resp.Body)
	got := "sha256:" + hex.EncodeToString(hash.Sum(nil))
	t.Logf("R's client read %d bytes, H was killed, then %d more (%v)", head, rest, err)
	if err != nil || head+rest != resp.ContentLength || got != layer {
		t.Fatalf("R's client got %d of %d bytes hashing to %s (want %s), then %v: a truncated answer", head+rest, resp.ContentLength, got, layer, err)
	}
	if n := reg.BlobRangeGets(repo, layer); n < 1 {
		t.Errorf("the registry answered no Range request for the layer: the fill did not resume\n%s", lastLines(reg.Process().Log(), 20))
	}
	if stalled.gets.Load() != 1 {
		t.Errorf("H's registry served the layer %d times, want once (H's coalesced fill)", stalled.gets.Load())
	}
}

// stallingUpstream is a registry's front that sends the first limit bytes of the blob dgst, then
// holds the rest until release.
type stallingUpstream struct {
	*httptest.Server
	gets     atomic.Int64
	released chan struct{}
	once     sync.Once
}

func newStallingUpstream(t *testing.T, reg *harness.Registry, dgst string, limit int64) *stallingUpstream {
	t.Helper()
	target, _ := url.Parse(reg.URL())
	s := &stallingUpstream{released: make(chan struct{})}
	fwd := httputil.NewSingleHostReverseProxy(target)
	fwd.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodGet || !strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+dgst) {
			return nil
		}
		s.gets.Add(1)
		resp.Body = &stallingBody{ReadCloser: resp.Body, left: limit, released: s.released, ctx: resp.Request.Context()}
		return nil
	}
	s.Server = httptest.NewServer(fwd)
	t.Cleanup(func() {
		s.release()
		s.Close()
	})
	return s
}

func (s *stallingUpstream) release() { s.once.Do(func() { close(s.released) }) }

// stallingBody passes left bytes on, then waits for released (or its request's end) before it
// passes on the rest.
type stallingBody struct {
	io.ReadCloser
	left     int64
	released <-chan struct{}
	ctx      context.Context
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		select {
		case <-b.released:
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		}
		return b.ReadCloser.Read(p)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left == 0 && err == nil {
		return n, nil
	}
	if errors.Is(err, io.EOF) && b.left > 0 {
		b.left = 0
	}
	return n, err
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
