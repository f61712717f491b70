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
	p99 := median(r.lookupP99)
	fmt.Fprintf(b, "\nLookups among %d members (in-process `cluster.Node`s, each with real memberlist gossip and its index served over HTTP on its own loopback address: "+
		"a lookup is timed at the call, which a lifeboat process shows only as histogram buckets), %d lookups of random announced keys from random members a round: "+
		"p50 %s, p99 %s (goal p99 ≤ 20 ms%s).\n",
		r.lookupMembers, r.lookupCount, durSpread(r.lookupP50), durSpread(r.lookupP99), goal(p99 <= 20*time.Millisecond))
	if r.simulation != "" {
		fmt.Fprintf(b, "\nThe routing layer simulated in-process (`clustersim.Simulate`):\n\n%s", r.simulation)
	}
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
