package main

import (
	"fmt"
	"strings"
	"time"
)

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
	renderFailedPaths(b, r)
	p99 := median(r.lookupP99)
	fmt.Fprintf(b, "\nLookups among %d members (in-process `cluster.Node`s, each with real memberlist gossip and its index served over HTTP on its own loopback address: "+
		"a lookup is timed at the call, which a lifeboat process shows only as histogram buckets), %d lookups of random announced keys from random members a round: "+
		"p50 %s, p99 %s (goal p99 ≤ 20 ms%s).\n",
		r.lookupMembers, r.lookupCount, durSpread(r.lookupP50), durSpread(r.lookupP99), goal(p99 <= 20*time.Millisecond))
	if r.simulation != "" {
		fmt.Fprintf(b, "\nThe routing layer simulated in-process (`clustersim.Simulate`):\n\n%s", r.simulation)
	}
}

// renderFailedPaths adds failedPaths' rows to the table, and says how they were measured.
func renderFailedPaths(b *strings.Builder, r clusterResults) {
	off := blobsOf(r.coldOff, 0)
	blob := fmt.Sprintf("%d KiB", failedBlobSize>>10)
	row := func(what string, ds []time.Duration) {
		fmt.Fprintf(b, "| %s | %s | %s | %.2f | |\n", what, durSpread(ds), durSpread(off), timeRatio(ds, off))
	}
	row(fmt.Sprintf("a cold %s blob through a member whose 2 peers are unreachable (`lifeboat outage start --mode blackhole --target peers`), "+
		"the first of each round (it trips the breaker); baseline: a lone node (the cluster off), per blob", blob), firstBlobs(r.coldUnreachable))
	row(fmt.Sprintf("the same, the next %d cold blobs of each round, per blob", failedBlobs-1), blobsOf(r.coldUnreachable, 1))
	row(fmt.Sprintf("a cold %s blob whose first home is stopped (SIGSTOP), through another member, per blob; baseline: the cluster off", blob), blobsOf(r.coldStopped, 0))
	dead := "in none of the rounds"
	if r.stoppedDeclaredDead > 0 {
		dead = fmt.Sprintf("in %d of the rounds, whose homes changed under them", r.stoppedDeclaredDead)
	}
	fmt.Fprintf(b, "\nThe cold-blob rows: each round, alternating, a lone lifeboat (the cluster off), member R of three with its peer traffic "+
		"blackholed (gossip up), and R with H, the first home of each of its blobs, stopped, each fetch %d cold %s blobs of their own from the registry, "+
		"one after another. Figures per blob: the median of every blob of every round, with the lowest and highest; ratios of times (lower is better). "+
		"The first blob under the outage waits out the lookup timeout once and trips R's breaker on both peers (lifeboat_peer_down 2, checked each round). "+
		"H is resumed after each round, and each cluster round starts with R's breaker holding no peer down and all three members alive; "+
		"memberlist declared H dead before R's last blob %s.\n", failedBlobs, blob, dead)
}

// blobsOf is the latencies of every round's blobs from the from-th on.
func blobsOf(rounds [][]time.Duration, from int) []time.Duration {
	var ds []time.Duration
	for _, r := range rounds {
		ds = append(ds, r[from:]...)
	}
	return ds
}

// firstBlobs is the latency of every round's first blob.
func firstBlobs(rounds [][]time.Duration) []time.Duration {
	return mapSlice(rounds, func(r []time.Duration) time.Duration { return r[0] })
}

// timeRatio is the median of ds over that of base.
func timeRatio(ds, base []time.Duration) float64 {
	return median(ds).Seconds() / median(base).Seconds()
}

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

	// Each round's cold blobs, one after another, in order: through a lone node, through a
	// member whose peers are unreachable (the first trips its breaker), and through a member
	// while each blob's first home is stopped.
	FailedPathsBlobBytes            int64       `json:"failed_paths_blob_bytes"`
	ColdBlobClusterOffSeconds       [][]float64 `json:"cold_blob_cluster_off_seconds"`
	ColdBlobPeersUnreachableSeconds [][]float64 `json:"cold_blob_peers_unreachable_seconds"`
	ColdBlobStoppedHomeSeconds      [][]float64 `json:"cold_blob_stopped_home_seconds"`
	PeersUnreachableFirstRatio      float64     `json:"peers_unreachable_first_blob_to_cluster_off_time_ratio"`
	PeersUnreachableNextRatio       float64     `json:"peers_unreachable_next_blobs_to_cluster_off_time_ratio"`
	StoppedHomeRatio                float64     `json:"stopped_home_to_cluster_off_time_ratio"`
	StoppedHomeDeclaredDeadRounds   int         `json:"stopped_home_declared_dead_rounds"`
}

func (r clusterResults) json() clusterJSON {
	secs := func(ds []time.Duration) []float64 { return mapSlice(ds, time.Duration.Seconds) }
	j := clusterJSON{
		Rounds: r.rounds, PeerImageBytes: r.peerBytes, FromPeerSeconds: secs(r.fromPeer), FromRegistrySeconds: secs(r.fromRegistry),
		PeerToRegistryRatio: mibps(r.peerBytes, r.fromPeer) / mibps(r.peerBytes, r.fromRegistry),
		LookupMembers:       r.lookupMembers, LookupP50Seconds: secs(r.lookupP50), LookupP99Seconds: secs(r.lookupP99),
		CoalesceNodes: r.coalesceNodes, GetsPerBlobCluster: r.getsCluster, GetsPerBlobAlone: r.getsAlone,
		ColdPullClusterSeconds: secs(r.wallCluster), ColdPullLoneNodesSeconds: secs(r.wallAlone),
		RoutingSimulationMarkdown: r.simulation,
	}
	rounds := func(rs [][]time.Duration) [][]float64 { return mapSlice(rs, secs) }
	off := blobsOf(r.coldOff, 0)
	j.FailedPathsBlobBytes = failedBlobSize
	j.ColdBlobClusterOffSeconds, j.ColdBlobPeersUnreachableSeconds, j.ColdBlobStoppedHomeSeconds = rounds(r.coldOff), rounds(r.coldUnreachable), rounds(r.coldStopped)
	j.PeersUnreachableFirstRatio = timeRatio(firstBlobs(r.coldUnreachable), off)
	j.PeersUnreachableNextRatio = timeRatio(blobsOf(r.coldUnreachable, 1), off)
	j.StoppedHomeRatio = timeRatio(blobsOf(r.coldStopped, 0), off)
	j.StoppedHomeDeclaredDeadRounds = r.stoppedDeclaredDead
	return j
}
