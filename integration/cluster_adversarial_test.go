package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// Reasons of the cluster's refusal and drop counters, as the figures of TestAdversarialCluster
// break them down.
var (
	indexRefusedReasons = []string{"full", "quota", "shape", "not_home", "future"}
	handshakeReasons    = []string{
		cluster.ReasonNotTLS, cluster.ReasonNoCertificate, cluster.ReasonUnknownAuthority,
		cluster.ReasonNotYetValid, cluster.ReasonExpired, cluster.ReasonBadCertificate,
		cluster.ReasonWrongName, cluster.ReasonRefused, cluster.ReasonOther,
	}
)

// Sizes of TestAdversarialCluster's attack.
const (
	// advIdleConns is the idle connections held open to each member's gossip port.
	advIdleConns = 600
	// advTricklers is the connections trickling an announce to one member at any time.
	advTricklers = 8
	// advLogLines bounds the lines a member logs above debug level during the attack, whatever
	// its length: the adversaries' refusals are counted, not logged one by one.
	advLogLines = 100
)

// TestAdversarialCluster (part of `make soak`) attacks a cluster of three real `lifeboat serve`
// members for LIFEBOAT_ADVERSARY_DURATION (30s by default), with every adversary of issue 21
// at once: a key holder flooding one home with announces of keys it should not keep; a
// sniffer replaying a recorded peer exchange to another; a key holder announcing, to every
// home, a tag record dated 59 minutes ahead; connections trickling announces to the third;
// junk datagrams and idle connections at every gossip port. The third member's registry is
// blackholed, so it serves the tag from its cache and new blobs from its peers.
//
// Meanwhile honest clients pull an image through every member, checking every byte (the tag
// too: a forged record served would be a corrupt answer), and a member caches new images that
// the third must find at its peers. Required: no corrupt answer; at least 10 pulls through every
// member and at most 1% of pulls failed; at least one new image found through the peers, none
// missed; every member's peak resident memory (VmHWM) under 400 MiB, its descriptors within
// the gossip stream bound plus slack, its log above debug at most 100 lines, those about the gossip flood
// a handful; the forged
// record never kept nor served; no replay answered. The last line of the log gives the figures.
func TestAdversarialCluster(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	duration := 30 * time.Second
	if v := os.Getenv("LIFEBOAT_ADVERSARY_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("LIFEBOAT_ADVERSARY_DURATION: %v", err)
		}
		duration = d
	}

	reg := harness.StartRegistry(t)
	const repo = "cluster/adversarial"
	img := reg.PushRandom(t, repo, "1", 2, 256<<10)
	other := reg.PushRandom(t, repo, "other", 1, 4096)
	var fresh [][]string // the blobs of each new image
	for i := range max(4, int(duration/(5*time.Second))) {
		fresh = append(fresh, blobDigests(t, reg.PushRandom(t, repo, fmt.Sprintf("fresh%d", i), 1, 4096)))
	}
	// Without coalescing only the member that pulls a blob holds it: a new blob is found at
	// the peers only if its announce reached the homes.
	c := harness.StartCluster(t, 3, uncoalesced(reg))
	n0, n1, n2 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	var names []string
	for _, lb := range c.Nodes {
		names = append(names, lb.Name)
		pullVia(t, lb, reg.Host(), repo, "1", img)
	}
	pullVia(t, n1, reg.Host(), repo, "other", other)
	own, forged := harness.Digest(t, img), harness.Digest(t, other)
	tagKey := cluster.TagKey(reg.Host(), repo, "1")
	waitHolders(t, c, c.Nodes, tagKey, 3)
	if _, err := n2.CLI(t, "outage", "start", "--mode", "blackhole"); err != nil {
		t.Fatal(err)
	}

	// The sniffer records one of n1's GETs of a blob at n0.
	blobs := blobDigests(t, img)
	layer := harness.LayerDigests(t, img)[0]
	data := layerBytes(t, img, layer)
	proxy := startRecordingProxy(t, n0.Peer)
	resp, err := harness.PeerClient(t, c.KeyFile, n1.Name).Get("https://" + proxy.addr + "/v2/" + repo + "/blobs/" + layer + "?ns=" + reg.Host())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the recorded GET: %s, %d bytes, %v", resp.Status, len(got), err)
	}
	recorded, _ := proxy.recorded()

	type nodeFigures struct {
		pid            int
		fdsBefore      int
		peakFDs        int
		logBefore      int
		pulls, failed  atomic.Int64
		handshakeOther float64
	}
	figs := make([]*nodeFigures, len(c.Nodes))
	for i, lb := range c.Nodes {
		pid := lb.Process().Pid()
		figs[i] = &nodeFigures{pid: pid, fdsBefore: openFDs(t, pid), logBefore: len(lb.Log()),
			handshakeOther: lb.MetricOrZero(t, "lifeboat_cluster_handshake_failures_total", map[string]string{"direction": "in", "reason": cluster.ReasonOther})}
		figs[i].peakFDs = figs[i].fdsBefore
	}

	var (
		corrupt, floodSent, floodAccepted, replays, replaysAnswered, trickles, datagrams, idle atomic.Int64
		freshFound                                                                             atomic.Int64
		freshMissed                                                                            atomic.Bool
		errMu                                                                                  sync.Mutex
		errs                                                                                   []string
	)
	report := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var wg sync.WaitGroup

	// Honest clients: two per member, pulling the image by tag, every byte checked.
	for i, lb := range c.Nodes {
		for range 2 {
			wg.Go(func() {
				for ctx.Err() == nil {
					err := pullImage(ctx, lb, reg.Host(), repo, own, blobs)
					if ctx.Err() != nil {
						return
					}
					figs[i].pulls.Add(1)
					if err != nil {
						figs[i].failed.Add(1)
						if strings.Contains(err.Error(), "hash to") {
							corrupt.Add(1)
						}
						report("%s: %v", lb.Name, err)
					}
				}
			})
		}
	}

	// A member caches new images; the blackholed member must find them at the peers: its
	// homes' lookups name n0 although tricklers hold at n2's announce endpoint.
	lookups := harness.PeerClient(t, c.KeyFile, "test")
	wg.Go(func() {
		for _, im := range fresh {
			if ctx.Err() != nil {
				return
			}
			if err := findAtPeers(ctx, lookups, n0, n2, reg.Host(), repo, im); err != nil {
				if ctx.Err() == nil {
					freshMissed.Store(true)
					report("new image: %v", err)
				}
				return
			}
			freshFound.Add(1)
		}
	})

	// The key holder's flood of n1, as the other two members (a home takes announces from
	// members only, and a key holder can sign as any).
	for _, as := range []*harness.Lifeboat{n0, n2} {
		k := newKeyHolder(t, c, as.Name)
		wg.Go(func() {
			for ctx.Err() == nil {
				if k.post(t, n1, floodBody(n1.Name, names)) == http.StatusNoContent {
					floodAccepted.Add(1)
				}
				floodSent.Add(1)
			}
		})
	}

	// The sniffer replays its recording to n0, ten times a second.
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			answered, err := replay(n0.Peer, recorded, data)
			if err != nil {
				report("replay: %v", err)
				return
			}
			replays.Add(1)
			if answered {
				replaysAnswered.Add(1)
			}
		}
	})

	// Tricklers at n2's announce endpoint, as n1, a new one as each is cut off.
	trickler := newKeyHolder(t, c, n1.Name)
	for range advTricklers {
		wg.Go(func() {
			for ctx.Err() == nil {
				cut := trickler.trickle(t, n2.Peer, 4096, 2*time.Second)
				trickles.Add(1)
				select {
				case <-cut:
				case <-ctx.Done():
				}
			}
		})
	}

	// Junk at every gossip port: datagrams, 100 every 50 ms, and idle connections held open
	// from ten addresses that are not members.
	for _, lb := range c.Nodes {
		wg.Go(func() {
			udp, err := net.Dial("udp", lb.Gossip)
			if err != nil {
				report("gossip %s: %v", lb.Name, err)
				return
			}
			defer udp.Close()
			buf := make([]byte, 200)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				for range 100 {
					_, _ = rand.Read(buf)
					if _, err := udp.Write(buf); err == nil {
						datagrams.Add(1)
					}
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
		wg.Go(func() {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for i := 0; i < advIdleConns && ctx.Err() == nil; i++ {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.0.%d", 200+i%10))}, Timeout: 10 * time.Second}
				conn, err := d.DialContext(ctx, "tcp", lb.Gossip)
				if err != nil {
					if ctx.Err() == nil {
						report("idle connection %d to %s: %v", i, lb.Name, err)
					}
					return
				}
				conns = append(conns, conn)
				idle.Add(1)
			}
			<-ctx.Done()
		})
	}

	// While they run: the forged tag record to every home, once a second (as another member:
	// a member does not announce to itself), and every member's memory and descriptors.
	forgedRec := cluster.Record{Key: tagKey, Digest: digest.Digest(forged), Date: time.Now().Add(59 * time.Minute)}
	forgers := make([]keyHolder, len(c.Nodes))
	for i := range c.Nodes {
		forgers[i] = newKeyHolder(t, c, c.Nodes[(i+1)%len(c.Nodes)].Name)
	}
	var forgedSent, forgedKept int
	deadline := time.After(duration)
	sample := time.NewTicker(250 * time.Millisecond)
	forge := time.NewTicker(time.Second)
attack:
	for {
		select {
		case <-deadline:
			break attack
		case <-forge.C:
			for i, home := range c.Nodes {
				forgers[i].announce(t, home, []cluster.Record{forgedRec})
				forgedSent++
				for _, h := range forgers[i].holders(t, home, tagKey) {
					if h.Digest == digest.Digest(forged) {
						forgedKept++
					}
				}
			}
		case <-sample.C:
			for i, lb := range c.Nodes {
				figs[i].peakFDs = max(figs[i].peakFDs, openFDs(t, figs[i].pid))
				if now, _ := rss(t, figs[i].pid); now > floodRSSBound {
					t.Errorf("%s's RSS reached %d MiB during the attack, over %d MiB: stopping it", lb.Name, now>>20, floodRSSBound>>20)
					break attack
				}
			}
		}
	}
	sample.Stop()
	forge.Stop()
	stop()
	wg.Wait()

	// The figures, and what must hold.
	for _, e := range errs {
		t.Log(e)
	}
	var pulls, failed int64
	var peakRSS int64
	peakFDs, maxLogged := 0, 0
	refused, handshakes, drops := map[string]float64{}, map[string]float64{}, map[string]float64{}
	for i, lb := range c.Nodes {
		f := figs[i]
		if !lb.Process().Running() {
			t.Fatalf("%s died:\n%s", lb.Name, lastLines(lb.Log(), 30))
		}
		pulls += f.pulls.Load()
		failed += f.failed.Load()
		if n := f.pulls.Load(); n < 10 {
			t.Errorf("%s served %d pulls during the attack, want at least 10", lb.Name, n)
		}
		_, peak := rss(t, f.pid)
		peakRSS = max(peakRSS, peak)
		if peak > floodRSSBound {
			t.Errorf("%s's peak RSS was %d MiB, over %d MiB", lb.Name, peak>>20, floodRSSBound>>20)
		}
		peakFDs = max(peakFDs, f.peakFDs)
		if limit := f.fdsBefore + gossipStreamBound + 2*fdSlack; f.peakFDs > limit {
			t.Errorf("%s had %d descriptors open (%d before); want at most %d", lb.Name, f.peakFDs, f.fdsBefore, limit)
		}
		logged := 0
		for _, l := range strings.Split(lb.Log()[f.logBefore:], "\n") {
			if l != "" && !strings.Contains(l, "level=debug") {
				logged++
			}
		}
		maxLogged = max(maxLogged, logged)
		if logged > advLogLines {
			t.Errorf("%s logged %d lines during the attack, want at most %d:\n%s", lb.Name, logged, advLogLines, lastLines(lb.Log(), 20))
		}
		if lines := floodLines(lb.Log()[f.logBefore:]); len(lines) > floodLogLines {
			t.Errorf("%s logged %d lines about the gossip flood, want at most %d; the first:\n%s", lb.Name, len(lines), floodLogLines,
				strings.Join(lines[:min(len(lines), 10)], "\n"))
		}
		for _, r := range indexRefusedReasons {
			refused[r] += lb.MetricOrZero(t, "lifeboat_cluster_index_refused_total", map[string]string{"reason": r})
		}
		for _, r := range handshakeReasons {
			handshakes[r] += lb.MetricOrZero(t, "lifeboat_cluster_handshake_failures_total", map[string]string{"reason": r})
		}
		gossipDrops := 0.0
		for _, r := range cluster.GossipDropReasons {
			n := lb.MetricOrZero(t, "lifeboat_cluster_gossip_dropped_total", map[string]string{"reason": r})
			drops[r] += n
			gossipDrops += n
		}
		if gossipDrops == 0 {
			t.Errorf("%s counted no gossip dropped", lb.Name)
		}
	}
	if n := corrupt.Load(); n != 0 {
		t.Errorf("%d answers had bytes that did not match their digest", n)
	}
	if failed*100 > pulls {
		t.Errorf("%d of %d pulls failed, want at most 1%%", failed, pulls)
	}
	if n := freshFound.Load(); n == 0 || freshMissed.Load() {
		t.Errorf("%d of %d new images found through the peers during the attack; one was missed: %v", n, len(fresh), freshMissed.Load())
	}
	if forgedKept != 0 {
		t.Errorf("the homes kept the forged tag record %d times", forgedKept)
	}
	if forgedSent == 0 || refused["future"] < float64(forgedSent) {
		t.Errorf("%v records refused for their date, want at least the %d forged announces", refused["future"], forgedSent)
	}
	if dgst, status := headManifest(t, n2, "/v2/"+repo+"/manifests/1?ns="+reg.Host()); dgst != own {
		t.Errorf("the blackholed member answers the tag with %s (%s), want %s", dgst, status, own)
	}
	if n := replaysAnswered.Load(); n != 0 {
		t.Errorf("%d of %d replays were answered", n, replays.Load())
	}
	if got := n0.MetricOrZero(t, "lifeboat_cluster_handshake_failures_total", map[string]string{"direction": "in", "reason": cluster.ReasonOther}) - figs[0].handshakeOther; replays.Load() == 0 || got < float64(replays.Load()) {
		t.Errorf("%s counts %v failed handshakes during %d replays", n0.Name, got, replays.Load())
	}
	if floodSent.Load() < 10 {
		t.Errorf("only %d flood announces were sent: no flood", floodSent.Load())
	}
	harness.WaitAlive(t, c.Nodes...)

	t.Logf("adversarial cluster, %s, 3 members: %d pulls (%d failed, %d corrupt), %d/%d new images found at peers; peak RSS %d MiB, peak fds %d, at most %d lines logged above debug a member; "+
		"flood %d announces (%d accepted), %d replays (%d answered), %d forged tags (%d kept), %d trickles, %d junk datagrams, %d idle gossip connections; "+
		"announces refused %s; handshake failures %s; gossip dropped %s",
		duration, pulls, failed, corrupt.Load(), freshFound.Load(), len(fresh), peakRSS>>20, peakFDs, maxLogged,
		floodSent.Load(), floodAccepted.Load(), replays.Load(), replaysAnswered.Load(), forgedSent, forgedKept, trickles.Load(), datagrams.Load(), idle.Load(),
		nonZero(refused), nonZero(handshakes), nonZero(drops))
}

// pullImage GETs a manifest by tag and its blobs through lb's mirror, checking every byte
// against its digest (the manifest's against want).
func pullImage(ctx context.Context, lb *harness.Lifeboat, registry, repo, want string, blobs []string) error {
	if _, err := getVerified(ctx, lb.URL()+"/v2/"+repo+"/manifests/1?ns="+registry, want); err != nil {
		return err
	}
	for _, b := range blobs {
		if _, err := getVerified(ctx, blobURL(lb, registry, repo, b), b); err != nil {
			return err
		}
	}
	return nil
}

// findAtPeers pulls blobs through holder, waits (30 s at most) until finder's lookups of
// each name holder, and GETs each through finder: its answer must verify and be a peer's.
func findAtPeers(ctx context.Context, lookups *http.Client, holder, finder *harness.Lifeboat, registry, repo string, blobs []string) error {
	for _, b := range blobs {
		if _, err := getVerified(ctx, blobURL(holder, registry, repo, b), b); err != nil {
			return err
		}
	}
	for _, b := range blobs {
		key := cluster.BlobKey(digest.Digest(b))
		deadline := time.Now().Add(30 * time.Second)
		for {
			nodes, err := lookupNodes(ctx, lookups, finder, key)
			if err == nil && slices.Contains(nodes, holder.Name) {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%s's lookup of %s names %v (%v), not %s", finder.Name, key, nodes, err, holder.Name)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		status, err := getVerified(ctx, blobURL(finder, registry, repo, b), b)
		if err != nil {
			return err
		}
		if status != "peer" {
			return fmt.Errorf("%s answered %s with X-Lifeboat-Cache %q, want peer", finder.Name, b, status)
		}
	}
	return nil
}

// lookupNodes is the nodes that the cluster's lookup of key, asked at lb, says hold it.
func lookupNodes(ctx context.Context, client *http.Client, lb *harness.Lifeboat, key string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, lb.PeerURL(cluster.PathLookup+"?key="+url.QueryEscape(key)), nil)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct{ Holders []cluster.Holder }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("%s: %w", resp.Status, err)
	}
	var nodes []string
	for _, h := range body.Holders {
		nodes = append(nodes, h.Node)
	}
	return nodes, nil
}

// replay sends recorded, the bytes a client sent on one connection, to addr on a new one and
// reads the answer (30 s at most): answered is whether it shows an HTTP answer or data.
func replay(addr string, recorded, data []byte) (answered bool, err error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if _, err := conn.Write(recorded); err != nil {
		return false, nil // the listener hung up before reading it all: nothing answered
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	reply, err := io.ReadAll(conn)
	if isTimeout(err) {
		return true, nil // kept open: as bad as an answer
	}
	return bytes.Contains(reply, []byte("HTTP/1.1")) || bytes.Contains(reply, data[len(data)/2:len(data)/2+32]), nil
}

// nonZero formats the non-zero counts of m, by key ("future 31, shape 5120"), or "none".
func nonZero(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
