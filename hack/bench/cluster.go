package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/clustersim"
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

	// Each round's latencies of failedBlobs cold blobs fetched one after another (failedPaths):
	// by a lone node (the cluster off: the baseline), by a member whose peers are unreachable
	// (the first blob trips its breaker), and by a member while each blob's first home is
	// stopped; stoppedDeclaredDead counts the rounds in which memberlist declared that home dead
	// before the last blob.
	coldOff, coldUnreachable, coldStopped [][]time.Duration
	stoppedDeclaredDead                   int

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
	if err := failedPaths(ctx, base, lifeboat, regAddr, key, ips, &res); err != nil {
		return res, fmt.Errorf("cold blobs with peers unreachable or a home stopped: %w", err)
	}
	if err := lookupBench(ctx, ips, &res); err != nil {
		return res, fmt.Errorf("lookups: %w", err)
	}
	res.simulation = simulate()
	return res, nil
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
