package main

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/clustersim"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// The cluster tier's benchmark: lifeboat processes on distinct loopback addresses 127.0.0.x
// forming a cluster, the distribution registry as their upstream.

// clusterResults holds what clusterBench measured.
type clusterResults struct {
	rounds int

	// A fresh node fetching an image's blobs from a peer that holds them, and a fresh lone
	// node fetching them from the registry (the baseline), alternating.
	peerBytes              int64
	fromPeer, fromRegistry []time.Duration

	// Lookups of announced keys among lookupMembers in-process cluster.Nodes: each round's
	// p50 and p99 of lookupCount lookups.
	lookupMembers, lookupCount int
	lookupP50, lookupP99       []time.Duration

	// coalesceNodes cluster members, and as many lone nodes (the baseline: every node on its own,
	// as Spegel's are for a blob no peer holds), each pulling a cold image all at once; the
	// registry's GETs per blob of each round, and the time until every node had every blob.
	coalesceNodes, coalesceBlobs int
	getsCluster, getsAlone       []float64
	wallCluster, wallAlone       []time.Duration

	simulation string // clustersim.Simulate's table, as it renders it
}

// clusterBench runs the cluster sections; rounds alternate every comparison's parties.
func clusterBench(ctx context.Context, scratch, tools, lifeboat string, peerSize int64, rounds int) (clusterResults, error) {
	res := clusterResults{rounds: rounds, lookupMembers: 20, lookupCount: 2000, coalesceNodes: 10}
	base := filepath.Join(scratch, "cluster")
	reg, regAddr, err := runRegistry(filepath.Join(base, "registry"), tools, "  delete:\n    enabled: true\n", "")
	if err != nil {
		return res, err
	}
	defer reg.stop()
	key, err := writeClusterKey(filepath.Join(base, "cluster.key"))
	if err != nil {
		return res, err
	}
	ips := &loopbackIPs{}
	if err := peerVsRegistry(ctx, base, lifeboat, regAddr, key, ips, peerSize, &res); err != nil {
		return res, fmt.Errorf("fresh node from a peer: %w", err)
	}
	if err := coalesceBench(ctx, base, lifeboat, reg, regAddr, key, ips, &res); err != nil {
		return res, fmt.Errorf("coalesced cold pulls: %w", err)
	}
	if err := lookupBench(ctx, ips, &res); err != nil {
		return res, fmt.Errorf("lookups: %w", err)
	}
	res.simulation = simulate()
	return res, nil
}

// loopbackIPs hands out 127.0.0.2, 127.0.0.3, ...: one address per node.
type loopbackIPs struct{ n int }

func (l *loopbackIPs) next() string {
	l.n++
	return fmt.Sprintf("127.0.0.%d", 1+l.n%254)
}

// writeClusterKey writes a new cluster key to path, mode 0600, and returns the path.
func writeClusterKey(path string) (string, error) {
	b := make([]byte, 32)
	if _, err := crand.Read(b); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600)
}

// member is a `lifeboat serve` of the benchmark: a cluster member, or a lone node.
type member struct {
	*daemon
	dir, name, mirror, metrics, gossip string
}

// startMember starts lifeboat on ip with docker.io pointing at upstream and its metrics on; a
// cluster member when keyFile is set, joining join (itself when join is empty).
func startMember(dir, bin, upstream, ip, nodeName, keyFile, join string) (*member, error) {
	addr := func() (string, error) {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return "", err
		}
		defer l.Close()
		return l.Addr().String(), nil
	}
	m := &member{dir: dir, name: nodeName}
	var err error
	if m.mirror, err = addr(); err != nil {
		return nil, err
	}
	if m.metrics, err = addr(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// upstream_timeout 5 s: twenty nodes starting fills at once on a shared two-core machine
	// can keep a registry's headers past the default 1 s, and a failed fill is not what this
	// measures.
	cfg := fmt.Sprintf("root = %q\n[mirror]\naddress = %q\n[plugin]\naddress = %q\n[admin]\naddress = %q\n[metrics]\naddress = %q\n[cache]\nmax_size = \"16GiB\"\n[resolve]\nupstream_timeout = \"5s\"\n[log]\nlevel = \"warn\"\n[registry.\"docker.io\"]\nendpoints = [\"http://%s\"]\n",
		filepath.Join(dir, "root"), m.mirror, filepath.Join(dir, "l.sock"), filepath.Join(dir, "a.sock"), m.metrics, upstream)
	if keyFile != "" {
		if m.gossip, err = addr(); err != nil {
			return nil, err
		}
		peer, err := addr()
		if err != nil {
			return nil, err
		}
		if join == "" {
			join = m.gossip
		}
		cfg += fmt.Sprintf("[cluster]\njoin = [%q]\ngossip_address = %q\npeer_address = %q\nadvertise_address = %q\nnode_name = %q\nsecret_file = %q\n",
			join, m.gossip, peer, ip, nodeName, keyFile)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	d, err := startDaemon(dir, bin, []string{"serve", "--config", filepath.Join(dir, "config.toml")}, nil)
	if err != nil {
		return nil, err
	}
	m.daemon = d
	if err := waitHTTP("http://"+m.mirror+"/v2/", d); err != nil {
		d.stop()
		return nil, err
	}
	return m, nil
}

// remove stops the member and deletes its directory.
func (m *member) remove() {
	m.stop()
	os.RemoveAll(m.dir)
}

// metric is the sum of the samples of name whose label text contains labels, from /metrics.
func (m *member) metric(name, labels string) (float64, error) {
	resp, err := http.Get("http://" + m.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") || !strings.Contains(line, labels) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q", name, line)
		}
		sum += v
	}
	return sum, sc.Err()
}

// waitMetric waits up to timeout until m's metric name (its samples whose labels contain
// labels, summed) is what ok accepts; want says what that is, for the error.
func waitMetric(m *member, name, labels, want string, timeout time.Duration, ok func(float64) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := m.metric(name, labels)
		if err == nil && ok(got) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s{%s} is %v, want %s (%v)", m.name, name, labels, got, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitHomed waits until m's index holds at least n keys.
func waitHomed(m *member, n int) error {
	return waitMetric(m, "lifeboat_cluster_homed_keys", "", fmt.Sprintf("at least %d", n), 30*time.Second,
		func(v float64) bool { return int(v) >= n })
}

// waitAlive waits until each of ms counts len(ms) members alive.
func waitAlive(ms []*member) error {
	for _, m := range ms {
		if err := waitMetric(m, "lifeboat_cluster_members", `state="alive"`, strconv.Itoa(len(ms)), 60*time.Second,
			func(v float64) bool { return int(v) == len(ms) }); err != nil {
			return err
		}
	}
	return nil
}

// pushRandom pushes a random image of layers × layerSize to the registry as repo:1 and returns
// its config and layer digests with their sizes.
func pushRandom(ctx context.Context, regAddr, repo string, layers int, layerSize int64) (map[string]int64, error) {
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		return nil, err
	}
	ref, err := name.ParseReference(regAddr+"/"+repo+":1", name.Insecure)
	if err != nil {
		return nil, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	blobs := map[string]int64{m.Config.Digest.String(): m.Config.Size}
	for _, l := range m.Layers {
		blobs[l.Digest.String()] = l.Size
	}
	return blobs, nil
}

// getBlobs GETs every blob of repo through the mirror at once; when want is set, every answer
// must carry X-Lifeboat-Cache: want.
func getBlobs(mirror, repo string, blobs map[string]int64, want string) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(blobs))
	for d, size := range blobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := "http://" + mirror + "/v2/" + repo + "/blobs/" + d + "?ns=docker.io"
			resp, err := http.Get(url)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("GET %s: %s", url, resp.Status)
				return
			}
			if got := resp.Header.Get(oci.HeaderCache); want != "" && got != want {
				errs <- fmt.Errorf("GET %s: %s %q, want %q", url, oci.HeaderCache, got, want)
				return
			}
			n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, make([]byte, 1<<20))
			if err == nil && n != size {
				err = fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// peerVsRegistry: a holder fetches an image of peerSize bytes in four layers; then each round a
// fresh member (empty root, joined, seeing the holder alive) fetches every blob from the holder,
// alternating with a fresh lone node fetching them from the registry. Both fill their caches.
func peerVsRegistry(ctx context.Context, base, bin, regAddr, key string, ips *loopbackIPs, peerSize int64, res *clusterResults) error {
	const repo = "library/peerbench"
	blobs, err := pushRandom(ctx, regAddr, repo, 4, peerSize/4)
	if err != nil {
		return err
	}
	for _, s := range blobs {
		res.peerBytes += s
	}
	holder, err := startMember(filepath.Join(base, "holder"), bin, regAddr, ips.next(), "holder", key, "")
	if err != nil {
		return err
	}
	defer holder.remove()
	if err := getBlobs(holder.mirror, repo, blobs, ""); err != nil {
		return err
	}
	// The holder announces what it cached in batches: a fresh node that looked before the batch
	// went out would find no holder and fetch from the registry.
	if err := waitHomed(holder, len(blobs)); err != nil {
		return err
	}
	fresh := 0
	return alternate(res.rounds,
		func() error {
			fresh++
			m, err := startMember(filepath.Join(base, fmt.Sprintf("fresh-%d", fresh)), bin, regAddr, ips.next(), fmt.Sprintf("fresh-%d", fresh), key, holder.gossip)
			if err != nil {
				return err
			}
			defer m.remove()
			if err := waitAlive([]*member{holder, m}); err != nil {
				return err
			}
			err = timedInto(&res.fromPeer, func() error { return getBlobs(m.mirror, repo, blobs, "peer") })()
			if err != nil {
				return fmt.Errorf("%w; %s's log ends:\n%s\nthe holder's log ends:\n%s", err, m.name, tail(m.Log(), 3000), tail(holder.Log(), 3000))
			}
			return nil
		},
		func() error {
			fresh++
			m, err := startMember(filepath.Join(base, fmt.Sprintf("fresh-%d", fresh)), bin, regAddr, ips.next(), "", "", "")
			if err != nil {
				return err
			}
			defer m.remove()
			return timedInto(&res.fromRegistry, func() error { return getBlobs(m.mirror, repo, blobs, "miss") })()
		})
}

// coalesceBench starts coalesceNodes cluster members and as many lone nodes; each round both
// groups pull a cold image of their own, every node every blob at once, alternating, and the
// registry's access log counts the GETs of each blob.
func coalesceBench(ctx context.Context, base, bin string, reg *daemon, regAddr, key string, ips *loopbackIPs, res *clusterResults) error {
	var members, alone []*member
	defer func() {
		for _, m := range append(members, alone...) {
			m.remove()
		}
	}()
	for i := range res.coalesceNodes {
		join := ""
		if i > 0 {
			join = members[0].gossip
		}
		m, err := startMember(filepath.Join(base, fmt.Sprintf("member-%d", i)), bin, regAddr, ips.next(), fmt.Sprintf("member-%d", i), key, join)
		if err != nil {
			return err
		}
		members = append(members, m)
		a, err := startMember(filepath.Join(base, fmt.Sprintf("alone-%d", i)), bin, regAddr, ips.next(), "", "", "")
		if err != nil {
			return err
		}
		alone = append(alone, a)
	}
	if err := waitAlive(members); err != nil {
		return err
	}
	const layers, layerSize = 3, 8 << 20
	res.coalesceBlobs = layers + 1
	image := 0
	pull := func(nodes []*member, gets *[]float64, wall *[]time.Duration) func() error {
		return func() error {
			image++
			repo := fmt.Sprintf("library/cold-%d", image)
			blobs, err := pushRandom(ctx, regAddr, repo, layers, layerSize)
			if err != nil {
				return err
			}
			var wg sync.WaitGroup
			errs := make(chan error, len(nodes))
			start := time.Now()
			for _, m := range nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := getBlobs(m.mirror, repo, blobs, ""); err != nil {
						errs <- fmt.Errorf("%w; its log ends:\n%s", err, tail(m.Log(), 3000))
					}
				}()
			}
			wg.Wait()
			*wall = append(*wall, time.Since(start))
			close(errs)
			if err := <-errs; err != nil {
				return err
			}
			log := reg.Log()
			n := 0
			for d := range blobs {
				n += strings.Count(log, `"GET /v2/`+repo+`/blobs/`+d)
			}
			*gets = append(*gets, float64(n)/float64(len(blobs)))
			return nil
		}
	}
	return alternate(res.rounds,
		pull(members, &res.getsCluster, &res.wallCluster),
		pull(alone, &res.getsAlone, &res.wallAlone))
}

// lookupBench starts lookupMembers cluster.Nodes in this process, each with real memberlist
// gossip and its own index listener on its own loopback address (in process, so that each
// lookup is timed at the call; a lifeboat process exports only histogram buckets of them),
// announces keys from every node, and times lookups of random keys from random nodes.
func lookupBench(ctx context.Context, ips *loopbackIPs, res *clusterResults) error {
	secret := make([]byte, 32)
	if _, err := crand.Read(secret); err != nil {
		return err
	}
	// The nodes log to this process's logger: keep their gossip chatter out of the report.
	log.L.Logger.SetOutput(io.Discard)
	defer log.L.Logger.SetOutput(os.Stderr)
	var nodes []*cluster.Node
	defer func() {
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Go(func() { n.Close() })
		}
		wg.Wait()
	}()
	var join string
	for i := range res.lookupMembers {
		ip := ips.next()
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return err
		}
		defer l.Close()
		gossip, err := freeGossip(ip)
		if err != nil {
			return err
		}
		if join == "" {
			join = gossip
		}
		n, err := cluster.Start(ctx, cluster.Config{
			NodeName:         fmt.Sprintf("n%02d", i),
			GossipAddress:    gossip,
			AdvertiseAddress: ip,
			PeerPort:         l.Addr().(*net.TCPAddr).Port,
			Join:             []string{join},
			Secret:           secret,
		})
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		srv := &http.Server{Handler: indexOnly(n), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		defer srv.Close()
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range nodes {
		for n.Stats().Members[cluster.Alive] != len(nodes) {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s sees %d members alive, want %d", n.Name(), n.Stats().Members[cluster.Alive], len(nodes))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// 100 keys held by each node.
	var keys []string
	for i, n := range nodes {
		var recs []cluster.Record
		for j := range 100 {
			k := cluster.BlobKey(digest.FromString(fmt.Sprintf("%d/%d", i, j)))
			keys = append(keys, k)
			recs = append(recs, cluster.Record{Key: k})
		}
		n.Announce(recs...)
	}
	for {
		entries := 0
		for _, n := range nodes {
			entries += n.Stats().IndexEntries
		}
		if entries >= 3*len(keys) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the homes hold %d records, want %d (%d keys × 3 replicas)", entries, 3*len(keys), len(keys))
		}
		time.Sleep(20 * time.Millisecond)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range res.rounds {
		ds := make([]time.Duration, 0, res.lookupCount)
		for range res.lookupCount {
			n := nodes[rng.IntN(len(nodes))]
			k := keys[rng.IntN(len(keys))]
			start := time.Now()
			hs, err := n.Lookup(ctx, k)
			d := time.Since(start)
			if err != nil {
				return err
			}
			if len(hs) == 0 && !heldOnlyBy(n, k, keys) {
				return fmt.Errorf("%s: no holder of %s", n.Name(), k)
			}
			ds = append(ds, d)
		}
		res.lookupP50 = append(res.lookupP50, percentile(ds, 0.5))
		res.lookupP99 = append(res.lookupP99, percentile(ds, 0.99))
	}
	return nil
}

// heldOnlyBy reports whether key is one of n's own (a lookup leaves out the asking node).
func heldOnlyBy(n *cluster.Node, key string, keys []string) bool {
	var i int
	fmt.Sscanf(n.Name(), "n%d", &i)
	for _, k := range keys[i*100 : (i+1)*100] {
		if k == key {
			return true
		}
	}
	return false
}

// indexOnly serves node's index requests, verifying tokens as the peer listener does.
func indexOnly(node *cluster.Node) http.Handler {
	index := node.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := node.Signer().Verify(r); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		index.ServeHTTP(w, r)
	})
}

// freeGossip is a port of ip free for both TCP and UDP a moment ago, as "ip:port".
func freeGossip(ip string) (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		l.Close()
		if u, err := net.ListenPacket("udp", addr); err == nil {
			u.Close()
			return addr, nil
		}
	}
	return "", fmt.Errorf("no free TCP and UDP port on %s", ip)
}

// simulate renders the routing simulation (clustersim.Simulate, its defaults: 10,000 images,
// 200 per member, one pull a second cluster-wide) for 1,000 and 10,000 members.
func simulate() string {
	var reps []clustersim.Report
	for _, members := range []int{1000, 10_000} {
		reps = append(reps, clustersim.Simulate(clustersim.Options{Members: members, Seed: 1}))
	}
	o := reps[0].Options
	return fmt.Sprintf("%d images (%d layers each, %d from one of %d base images), %d per member drawn by popularity (Zipf %.1f), "+
		"%d replicas, one pull a second cluster-wide, announcements batched every %s and refreshed every %s:\n\n%s",
		o.Images, o.LayersPerImage, o.BaseLayers, o.Bases, o.ImagesPerNode, o.Zipf, o.Replicas, o.AnnounceInterval, o.RefreshInterval, clustersim.Table(reps))
}

func renderCluster(b *strings.Builder, r clusterResults) {
	fmt.Fprintf(b, "\n## Cluster tier (lifeboat processes on loopback addresses 127.0.0.x, the distribution registry upstream)\n\n")
	fmt.Fprintf(b, "Medians of %d rounds with their range; the parties of each comparison alternate.\n\n", r.rounds)
	fmt.Fprintf(b, "| measured | lifeboat | baseline | ratio | goal |\n|---|---:|---:|---:|---|\n")
	ratio := mibps(r.peerBytes, r.fromPeer) / mibps(r.peerBytes, r.fromRegistry)
	fmt.Fprintf(b, "| a fresh node fetching a %s image (4 layers) from a peer, MiB/s; baseline: a fresh lone node from the registry | %s | %s | %.2f | ≥ 0.9%s |\n",
		sizeName(r.peerBytes), rateSpread(r.peerBytes, r.fromPeer), rateSpread(r.peerBytes, r.fromRegistry), ratio, goal(ratio >= 0.9))
	fmt.Fprintf(b, "| registry GETs per blob, %d nodes pulling one cold image (%d blobs) at once; baseline: %d lone nodes (Spegel: up to %d) | %s | %s | %.2f | 1%s |\n",
		r.coalesceNodes, r.coalesceBlobs, r.coalesceNodes, r.coalesceNodes, floatSpread(r.getsCluster, 2), floatSpread(r.getsAlone, 2),
		median(r.getsCluster)/median(r.getsAlone), goal(slicesMax(r.getsCluster) <= 1))
	fmt.Fprintf(b, "| time until all %d nodes hold every blob of that image | %s | %s | %.2f | |\n",
		r.coalesceNodes, durSpread(r.wallCluster), durSpread(r.wallAlone), median(r.wallCluster).Seconds()/median(r.wallAlone).Seconds())
	p99 := median(r.lookupP99)
	fmt.Fprintf(b, "\nLookups among %d members (in-process `cluster.Node`s, each with real memberlist gossip and its index served over HTTP on its own loopback address: "+
		"a lookup is timed at the call, which a lifeboat process shows only as histogram buckets), %d lookups of random announced keys from random members a round: "+
		"p50 %s, p99 %s (goal p99 ≤ 20 ms%s).\n",
		r.lookupMembers, r.lookupCount, durSpread(r.lookupP50), durSpread(r.lookupP99), goal(p99 <= 20*time.Millisecond))
	if r.simulation != "" {
		fmt.Fprintf(b, "\nThe routing layer simulated in-process (`clustersim.Simulate`):\n\n%s", r.simulation)
	}
}

// tail is the last n bytes of s.
func tail(s string, n int) string { return s[max(0, len(s)-n):] }

// slicesMax is the largest of xs.
func slicesMax(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs[1:] {
		m = max(m, x)
	}
	return m
}

type clusterJSON struct {
	Rounds                    int       `json:"rounds"`
	PeerImageBytes            int64     `json:"peer_image_bytes"`
	FromPeerSeconds           []float64 `json:"fresh_node_from_peer_seconds"`
	FromRegistrySeconds       []float64 `json:"fresh_node_from_registry_seconds"`
	PeerToRegistryRatio       float64   `json:"peer_to_registry_throughput_ratio"`
	LookupMembers             int       `json:"lookup_members"`
	LookupP50Seconds          []float64 `json:"lookup_p50_seconds"`
	LookupP99Seconds          []float64 `json:"lookup_p99_seconds"`
	CoalesceNodes             int       `json:"coalesce_nodes"`
	GetsPerBlobCluster        []float64 `json:"registry_gets_per_blob_cluster"`
	GetsPerBlobAlone          []float64 `json:"registry_gets_per_blob_lone_nodes"`
	ColdPullClusterSeconds    []float64 `json:"cold_pull_cluster_seconds"`
	ColdPullLoneNodesSeconds  []float64 `json:"cold_pull_lone_nodes_seconds"`
	RoutingSimulationMarkdown string    `json:"routing_simulation_markdown,omitempty"`
}

func (r clusterResults) json() clusterJSON {
	secs := func(ds []time.Duration) []float64 { return mapSlice(ds, time.Duration.Seconds) }
	return clusterJSON{
		Rounds: r.rounds, PeerImageBytes: r.peerBytes, FromPeerSeconds: secs(r.fromPeer), FromRegistrySeconds: secs(r.fromRegistry),
		PeerToRegistryRatio: mibps(r.peerBytes, r.fromPeer) / mibps(r.peerBytes, r.fromRegistry),
		LookupMembers:       r.lookupMembers, LookupP50Seconds: secs(r.lookupP50), LookupP99Seconds: secs(r.lookupP99),
		CoalesceNodes: r.coalesceNodes, GetsPerBlobCluster: r.getsCluster, GetsPerBlobAlone: r.getsAlone,
		ColdPullClusterSeconds: secs(r.wallCluster), ColdPullLoneNodesSeconds: secs(r.wallAlone),
		RoutingSimulationMarkdown: r.simulation,
	}
}
