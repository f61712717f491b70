package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// The cluster tier's homes against a key holder (the issue's rows 1, 3 and 4): real `lifeboat
// serve` members, and a client that speaks to their peer listeners as a member with the
// cluster's key, as a compromised node could.

// keyHolder speaks to peer listeners as the member called name, with the cluster's key (a
// certificate of the cluster's CA for that name): every request these tests send to a peer
// listener goes through its client or its trickle, so that a change of the peer transport is
// made here only.
type keyHolder struct {
	keyFile, name string
	http          *http.Client
}

// newKeyHolder returns a key holder of c's key that speaks as the member name.
func newKeyHolder(t *testing.T, c *harness.Cluster, name string) keyHolder {
	t.Helper()
	return keyHolder{keyFile: c.KeyFile, name: name, http: harness.PeerClient(t, c.KeyFile, name)}
}

// trickle opens a connection to the peer listener at addr and sends it the key holder's
// announce request, whose body of size bytes comes one byte every every. It returns a channel
// closed when the listener hangs up.
func (k keyHolder) trickle(t *testing.T, addr string, size int64, every time.Duration) <-chan struct{} {
	t.Helper()
	now := time.Now()
	cert := harness.PeerCertificate(t, k.keyFile, k.name, now.Add(-time.Hour), now.Add(time.Hour))
	conn, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body, feed := io.Pipe()
	t.Cleanup(func() { feed.Close() })
	req, _ := http.NewRequest(http.MethodPost, "https://"+addr+cluster.PathAnnounce, body)
	req.ContentLength = size
	req.Header.Set(cluster.HeaderPeer, k.name)
	go func() { _ = req.Write(conn) }()
	go func() {
		for {
			select {
			case <-t.Context().Done():
				return
			case <-time.After(every):
			}
			if _, err := feed.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	closed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, conn)
		close(closed)
	}()
	return closed
}

// announce posts recs to the peer listener of home as the key holder, and returns the status.
func (k keyHolder) announce(t *testing.T, home *harness.Lifeboat, recs []cluster.Record) int {
	t.Helper()
	body, err := json.Marshal(map[string][]cluster.Record{"records": recs})
	if err != nil {
		t.Fatal(err)
	}
	return k.post(t, home, body)
}

// post posts an announce body to home's peer listener, and returns the status (0 when the
// request failed).
func (k keyHolder) post(t *testing.T, home *harness.Lifeboat, body []byte) int {
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, home.PeerURL(cluster.PathAnnounce), bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := k.http.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// holders asks home which nodes hold key, as the key holder.
func (k keyHolder) holders(t *testing.T, home *harness.Lifeboat, key string) []cluster.Holder {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, home.PeerURL(cluster.PathLookup+"?key="+url.QueryEscape(key)), nil)
	resp, err := k.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Holders []cluster.Holder }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("lookup of %s at %s: %s: %v", key, home.Name, resp.Status, err)
	}
	return body.Holders
}

// rss reads a process's resident set (VmRSS) and its peak (VmHWM), in bytes.
func rss(t *testing.T, pid int) (now, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			now = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return now, peak
}

// floodRSSBound is the bound on a home's resident memory during a key holder's flood.
const floodRSSBound = 400 << 20

// junk returns n random lower-case hex characters.
func junk(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// floodBody is one announce of a key holder's flood, about 3 MiB: every kind of record a home
// should not keep, or keep within bounds: 1 KiB junk keys (the flood), and, of keys the
// target is a home of among names, random digests, tags of the longest names the grammars
// allow, and tags dated 59 minutes ahead.
func floodBody(target string, names []string) []byte {
	var recs []cluster.Record
	size := 0
	homed := func(key string) bool {
		for _, h := range cluster.Rendezvous(key, names, 3) {
			if h == target {
				return true
			}
		}
		return false
	}
	d := digest.FromString("forged")
	now := time.Now()
	for i := 0; size < 3<<20 && len(recs) < 9000; i++ {
		var r cluster.Record
		switch i % 4 {
		case 0:
			r = cluster.Record{Key: "junk-" + junk(1019)}
		case 1:
			r = cluster.Record{Key: "sha256:" + junk(64)}
		case 2:
			r = cluster.Record{Key: cluster.TagKey("flood.example.com", junk(60)+"/"+junk(60)+"/"+junk(60)+"/"+junk(60), junk(128)), Digest: d, Date: now}
		case 3:
			r = cluster.Record{Key: cluster.TagKey("flood.example.com", "app", junk(20)), Digest: d, Date: now.Add(59 * time.Minute)}
		}
		if i%4 != 0 && !homed(r.Key) {
			continue
		}
		recs = append(recs, r)
		size += len(r.Key) + 100
	}
	b, _ := json.Marshal(map[string][]cluster.Record{"records": recs})
	return b
}

// TestClusterIndexFlood (the row 1): a key holder floods one home with announces for
// 30 s, as four members (a key holder can take any name), so that together they may fill the
// home's index to its bound. The home's resident memory stays under 400 MiB, it refuses what it
// should (junk, future dates, past each sender's quota, past the bound), and legitimate
// records, known before the flood and announced during it, are still found.
func TestClusterIndexFlood(t *testing.T) {
	t.Parallel()
	reg := harness.StartRegistry(t)
	const repo = "cluster/flood"
	before := reg.PushRandom(t, repo, "before", 2, 4096)
	during := reg.PushRandom(t, repo, "during", 2, 4096)
	const floodNames = 4 // each may take a quarter of the index
	c := harness.StartCluster(t, 2+floodNames, uncoalesced(reg))
	target, honest := c.Nodes[0], c.Nodes[1]
	var names []string
	for _, lb := range c.Nodes {
		names = append(names, lb.Name)
	}
	pullVia(t, honest, reg.Host(), repo, "before", before)
	for _, b := range blobDigests(t, before) {
		waitHolders(t, c, homesOf(c.Nodes, b, 3), cluster.BlobKey(digest.Digest(b)), 1)
	}

	pid := target.Process().Pid()
	baseRSS, _ := rss(t, pid)
	const floodFor = 30 * time.Second
	var sent, bytesSent, accepted atomic.Int64
	var peakSeen atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range floodNames {
		k := newKeyHolder(t, c, names[2+w])
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				body := floodBody(target.Name, names)
				if code := k.post(t, target, body); code == http.StatusNoContent {
					accepted.Add(1)
				}
				sent.Add(1)
				bytesSent.Add(int64(len(body)))
			}
		})
	}
	deadline := time.After(floodFor)
	halfway := time.After(floodFor / 2)
	tick := time.NewTicker(250 * time.Millisecond)
flood:
	for {
		select {
		case <-deadline:
			break flood
		case <-halfway:
			// The honest node caches another image while the flood goes on.
			pullVia(t, honest, reg.Host(), repo, "during", during)
		case <-tick.C:
			now, _ := rss(t, pid)
			if now > peakSeen.Load() {
				peakSeen.Store(now)
			}
			if now > floodRSSBound {
				t.Errorf("the home's RSS reached %d MiB during the flood, over %d MiB: stopping the flood", now>>20, floodRSSBound>>20)
				break flood
			}
		}
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	_, peak := rss(t, pid)
	indexBytes := target.Metric(t, "lifeboat_cluster_index_bytes", nil)
	refused := map[string]float64{}
	for _, reason := range []string{"full", "quota", "shape", "not_home", "future"} {
		refused[reason] = target.MetricOrZero(t, "lifeboat_cluster_index_refused_total", map[string]string{"reason": reason})
	}
	t.Logf("flood: %d announces (%d accepted), %d MiB in %s; the home's RSS %d MiB before, %d MiB peak (VmHWM), its index %.1f MiB; refused %v",
		sent.Load(), accepted.Load(), bytesSent.Load()>>20, floodFor, baseRSS>>20, peak>>20, indexBytes/(1<<20), refused)
	if peak > floodRSSBound {
		t.Errorf("the home's peak RSS was %d MiB, over %d MiB", peak>>20, floodRSSBound>>20)
	}
	if sent.Load() < 10 {
		t.Errorf("only %d announces were sent: no flood", sent.Load())
	}
	for _, reason := range []string{"shape", "future", "quota", "full"} {
		if refused[reason] == 0 {
			t.Errorf("no record refused for its %s: refused %v", reason, refused)
		}
	}

	// The honest records known before the flood stay at every home. Those announced during it
	// reached the other homes; the flooded one may have had no room left for them (the four
	// names hold its whole bound): lookups hedge past it. With the registry down, a node that
	// holds neither image finds both at the peers.
	for _, b := range blobDigests(t, before) {
		waitHolders(t, c, homesOf(c.Nodes, b, 3), cluster.BlobKey(digest.Digest(b)), 1)
	}
	for _, b := range blobDigests(t, during) {
		var homes []*harness.Lifeboat
		for _, h := range homesOf(c.Nodes, b, 3) {
			if h != target {
				homes = append(homes, h)
			}
		}
		waitHolders(t, c, homes, cluster.BlobKey(digest.Digest(b)), 1)
	}
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, b := range append(blobDigests(t, before), blobDigests(t, during)...) {
		fetchFromPeers(t, c.Nodes[2], reg.Host(), repo, b)
	}
	if !target.Process().Running() {
		t.Fatalf("the home died:\n%s", target.Log())
	}
}

// TestClusterIndexTricklers (the row 4): connections that trickle their announce's body
// hold no announce slot: with twice as many tricklers as slots on A, what B caches reaches A's
// index, and the tricklers are cut off once an honest sender would have given up.
func TestClusterIndexTricklers(t *testing.T) {
	t.Parallel()
	reg := harness.StartRegistry(t)
	const repo = "cluster/trickle"
	img := reg.PushRandom(t, repo, "1", 1, 4096)
	c := harness.StartCluster(t, 2, uncoalesced(reg))
	a, b := c.Nodes[0], c.Nodes[1]
	k := newKeyHolder(t, c, b.Name)
	start := time.Now()
	var cut []<-chan struct{}
	for range 8 {
		cut = append(cut, k.trickle(t, a.Peer, 4096, 2*time.Second))
	}

	pullVia(t, b, reg.Host(), repo, "1", img)
	for _, d := range blobDigests(t, img) {
		waitHolders(t, c, []*harness.Lifeboat{a}, cluster.BlobKey(digest.Digest(d)), 1)
	}
	for i, ch := range cut {
		select {
		case <-ch:
		case <-time.After(2 * time.Minute):
			t.Fatalf("trickler %d still connected %s after it started", i, time.Since(start).Round(time.Second))
		}
	}
	t.Logf("8 tricklers: B's records reached A and every trickler was cut off within %s", time.Since(start).Round(time.Second))
}

// TestClusterForgedTag (the row 3): a key holder announces, as B, a tag record
// dated 59 minutes ahead naming another manifest B holds; the homes refuse it, so that A, its
// registry down, serves its own record rather than the forged one. A fresh node F that resolves
// the tag from the peers' records during an outage serves it, lists it in `lifeboat status`,
// and does not announce it as its own revalidation to a home that joins afterwards.
func TestClusterForgedTag(t *testing.T) {
	t.Parallel()
	reg := harness.StartRegistry(t)
	const repo = "cluster/forged"
	c := harness.StartCluster(t, 2, upstreamOf(reg))
	a, b := c.Nodes[0], c.Nodes[1]
	// G, the last to join, must be a new home of the tag and of its manifest, so that every
	// node announces them to it: a tag and an image whose keys rank G among their homes.
	const fName, gName = "node-f", "node-g"
	names := []string{a.Name, b.Name, fName, gName}
	homedAtG := func(key string) bool { return slices.Contains(cluster.Rendezvous(key, names, 3), gName) }
	tag := "v"
	for i := 0; !homedAtG(cluster.TagKey(reg.Host(), repo, tag)); i++ {
		tag = "v" + strconv.Itoa(i)
	}
	img := harness.RandomImage(t, harness.HostPlatform(), 1, 4096)
	for !homedAtG(cluster.BlobKey(digest.Digest(harness.Digest(t, img)))) {
		img = harness.RandomImage(t, harness.HostPlatform(), 1, 4096)
	}
	reg.PushImage(t, repo, tag, img)
	other := reg.PushRandom(t, repo, "other", 1, 4096)
	tagPath := "/v2/" + repo + "/manifests/" + tag + "?ns=" + reg.Host()
	pullVia(t, a, reg.Host(), repo, tag, img)
	pullVia(t, b, reg.Host(), repo, "other", other)
	own, forged := harness.Digest(t, img), harness.Digest(t, other)
	tagKey := cluster.TagKey(reg.Host(), repo, tag)
	waitHolders(t, c, c.Nodes, tagKey, 1)

	rec := cluster.Record{Key: tagKey, Digest: digest.Digest(forged), Date: time.Now().Add(59 * time.Minute)}
	for i, home := range c.Nodes {
		// As the other member: a member does not announce to itself.
		k := newKeyHolder(t, c, c.Nodes[1-i].Name)
		if code := k.announce(t, home, []cluster.Record{rec}); code != http.StatusNoContent {
			t.Fatalf("the forged announce to %s: %d", home.Name, code)
		}
		for _, h := range k.holders(t, home, tagKey) {
			if h.Digest == digest.Digest(forged) {
				t.Errorf("%s keeps the forged record %+v", home.Name, h)
			}
		}
		if n := home.MetricOrZero(t, "lifeboat_cluster_index_refused_total", map[string]string{"reason": "future"}); n != 1 {
			t.Errorf("%s counts %v records refused for their date, want 1", home.Name, n)
		}
	}
	if _, err := a.CLI(t, "outage", "start", "--mode", "blackhole"); err != nil {
		t.Fatal(err)
	}
	if dgst, status := headManifest(t, a, tagPath); dgst != own {
		t.Errorf("A, its registry down, answered the tag with %s (%s), want its own %s, not the forged %s", dgst, status, own, forged)
	}
	if _, err := a.CLI(t, "outage", "stop"); err != nil {
		t.Fatal(err)
	}

	// F joins and resolves the tag from the peers' records (A's) while its registry is down.
	member := func(name string) harness.LifeboatOptions {
		opts := upstreamOf(reg)
		opts.Cluster = &harness.ClusterOptions{Name: name}
		return opts
	}
	f := c.Add(t, member(fName))
	c.WaitMembers(t)
	waitHolders(t, c, []*harness.Lifeboat{f}, tagKey, 1)
	if _, err := f.CLI(t, "outage", "start", "--mode", "blackhole"); err != nil {
		t.Fatal(err)
	}
	if dgst, status := headManifest(t, f, tagPath); dgst != own || status != "peer" {
		t.Fatalf("F resolved the tag to %s (%s), want %s from the peers", dgst, status, own)
	}
	if n := f.Metric(t, "lifeboat_cluster_peer_tags", nil); n != 1 {
		t.Errorf("lifeboat_cluster_peer_tags = %v on F, want 1", n)
	}
	out, err := f.CLI(t, "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Cluster struct {
			PeerTags []struct{ Ref, Digest string }
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if want := reg.Host() + "/" + repo + ":" + tag; len(st.Cluster.PeerTags) != 1 || st.Cluster.PeerTags[0].Ref != want || st.Cluster.PeerTags[0].Digest != own {
		t.Errorf("status lists the tags from peer records %+v, want %s at %s", st.Cluster.PeerTags, want, own)
	}

	k := newKeyHolder(t, c, b.Name)
	// G joins: every node announces to it what it holds of the keys G is a new home of. F
	// tells it of the manifest it cached, but not of the tag: that record is A's.
	g := c.Add(t, member(gName))
	c.WaitMembers(t)
	waitHolders(t, c, []*harness.Lifeboat{g}, cluster.BlobKey(digest.Digest(own)), 2) // A's and F's
	var holders []string
	harness.WaitFor(t, "G to know A's record of the tag", 30*time.Second, nil, func() error {
		holders = nil
		for _, h := range k.holders(t, g, tagKey) {
			holders = append(holders, h.Node)
		}
		if !slices.Contains(holders, a.Name) {
			return fmt.Errorf("G knows the tag from %v", holders)
		}
		return nil
	})
	if !slices.Equal(holders, []string{a.Name}) {
		t.Errorf("G knows the tag from %v, want A's record only: F announced the peers' record as its own", holders)
	}

	// Once the registry answers F again, the tag is F's own.
	if _, err := f.CLI(t, "outage", "stop"); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "F to revalidate the tag with the registry", 30*time.Second, nil, func() error {
		if _, status := headManifest(t, f, tagPath); status != "revalidated" {
			return fmt.Errorf("F answered the tag %q", status)
		}
		return nil
	})
	if n := f.Metric(t, "lifeboat_cluster_peer_tags", nil); n != 0 {
		t.Errorf("lifeboat_cluster_peer_tags = %v on F once the registry answered, want 0", n)
	}
}
