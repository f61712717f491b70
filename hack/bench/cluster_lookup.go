package main

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

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
		go srv.Serve(n.Listener(l))
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

// indexOnly serves node's index requests, authenticating them as the peer listener does.
func indexOnly(node *cluster.Node) http.Handler {
	index := node.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := node.Authenticate(r); err != nil {
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
