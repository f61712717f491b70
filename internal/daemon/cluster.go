package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/metrics"
	"github.com/lifeboat-dev/lifeboat/peer"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// startCluster joins the cluster [cluster] names, with this node's peer listener at peerLn
// (served with the cluster's TLS, Node.Listener), its traffic to peers through the outage
// simulator, and its records read from store. It
// returns the membership and the resolver's view of it, which times its requests to peers by
// budget.
func (d *Daemon) startCluster(ctx context.Context, secret []byte, peerLn net.Listener, budget peer.Budget) (*cluster.Node, *peer.Source, error) {
	cc := d.cfg.Cluster
	name := cc.NodeName
	if name == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, nil, fmt.Errorf("cannot name this node of the cluster: %w (set [cluster] node_name)", err)
		}
		name = host
	}
	advertise, err := advertiseAddress(cc, net.InterfaceAddrs)
	if err != nil {
		return nil, nil, err
	}
	_, portStr, _ := net.SplitHostPort(peerLn.Addr().String())
	port, _ := strconv.Atoi(portStr)
	// "[10.0.0.5]:7946", as a template that cannot tell IPv4 from IPv6 writes it, is
	// "10.0.0.5:7946" to memberlist.
	gossipHost, gossipPort, _ := net.SplitHostPort(cc.GossipAddress)
	lookups := metrics.NewLookups(d.reg)
	node, err := cluster.Start(ctx, cluster.Config{
		NodeName:         name,
		GossipAddress:    net.JoinHostPort(gossipHost, gossipPort),
		AdvertiseAddress: advertise,
		PeerPort:         port,
		Join:             cc.Join,
		Secret:           secret,
		Replicas:         cc.Replicas,
		MaxIndexBytes:    int64(cc.MaxIndexSize),
		MaxClockSkew:     time.Duration(cc.MaxClockSkew),
		Local:            localRecords(d.Store, d.cfg.Registry),
		WrapTransport:    d.Outage.WrapPeers,
		ObserveLookup:    lookups.Observe,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("cannot join the cluster: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"node": name, "gossip": cc.GossipAddress, "advertise": advertise, "peer_port": port, "join": cc.Join}).
		Info("cluster tier on")
	return node, peer.NewSource(node, peer.SourceOptions{Coalesce: cc.Coalesce, Budget: budget}), nil
}

// peerHandler is the peer listener's handler: the cluster's index requests, and the OCI pull
// API over what the resolver serves its peers (the registries that are shared, from the cache,
// and the coalesced fills of the blobs this node is the home of). It is served on the
// cluster's Listener, whose TLS handshakes authenticate the peers.
func (d *Daemon) peerHandler() (http.Handler, error) {
	view := d.Resolver.ForPeers()
	return peer.NewHandler(d.Cluster, d.Cluster.Handler(), view, view.Coalescing(), peer.HandlerOptions{
		Source: d.Peers, // counts the bytes served to peers
		Budget: d.budget,
	})
}

// advertiseAddress is the IP other nodes reach this one at: [cluster] advertise_address; else
// the host of gossip_address when it is a specific IP; else the first address of addrs that
// is neither loopback nor link-local, IPv4 first.
func advertiseAddress(cc config.Cluster, addrs func() ([]net.Addr, error)) (string, error) {
	if cc.AdvertiseAddress != "" {
		return cc.AdvertiseAddress, nil
	}
	if host, _, err := net.SplitHostPort(cc.GossipAddress); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			return ip.String(), nil
		}
	}
	list, err := addrs()
	if err != nil {
		return "", fmt.Errorf("cannot list this machine's addresses to advertise one to the cluster: %w (set [cluster] advertise_address)", err)
	}
	var v6 net.IP
	for _, a := range list {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() || ipn.IP.IsUnspecified() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
		if v6 == nil {
			v6 = ipn.IP
		}
	}
	if v6 != nil {
		return v6.String(), nil
	}
	return "", errors.New("this machine has no address other nodes could reach (only loopback): set [cluster] advertise_address")
}

// localRecords returns cluster.Config.Local over store: a blob record for every digest linked
// to a repository of a shared registry (once, whatever the number of repositories), and a tag
// record for every cached tag of a shared registry that the registry confirmed, with its digest
// and the registry's Date of that answer. A tag resolved from the peers' records
// (resolver.FromPeers) is not announced: it is theirs, not this node's revalidation, and
// announcing it would spread a forged record as this node's own. registries are the [registry]
// tables (share_with_peers).
func localRecords(store *cache.Store, registries map[string]config.Registry) func(context.Context, func(cluster.Record) bool) error {
	shared := func(registry string) bool { return registries[registry].Shared() }
	return func(ctx context.Context, yield func(cluster.Record) bool) error {
		// Collected first: the cache's read transaction is not held while records go out.
		var blobs []digest.Digest
		seen := map[digest.Digest]bool{}
		err := store.EachLink(ctx, func(repository string, dgst digest.Digest) bool {
			registry, _, _ := strings.Cut(repository, "/")
			if shared(registry) && !seen[dgst] {
				seen[dgst] = true
				blobs = append(blobs, dgst)
			}
			return true
		})
		if err != nil {
			return fmt.Errorf("list the cached blobs: %w", err)
		}
		for _, dgst := range blobs {
			if !yield(cluster.Record{Key: cluster.BlobKey(dgst)}) {
				return nil
			}
		}
		refs, err := store.Refs(ctx)
		if err != nil {
			return fmt.Errorf("list the cached tags: %w", err)
		}
		for _, ref := range refs {
			registry, repository, tag, ok := splitTagRef(ref.Name)
			if !ok || !shared(registry) || resolver.FromPeers(ref) {
				continue
			}
			// The registry's Date of the answer that last confirmed the tag, so that node clocks
			// do not matter; this node's clock only for a ref recorded before the cache kept it.
			date := ref.UpstreamDate
			if date.IsZero() {
				date = ref.VerifiedAt
			}
			rec := cluster.Record{Key: cluster.TagKey(registry, repository, tag), Digest: ref.Target.Digest, Date: date}
			if !yield(rec) {
				return nil
			}
		}
		return nil
	}
}

// splitTagRef splits a cached ref name "registry/repository:tag" ("docker.io/library/alpine:3.20",
// "localhost:5000/app:v1"); ok is false for a ref by digest ("registry/repository@sha256:…").
func splitTagRef(name string) (registry, repository, tag string, ok bool) {
	if strings.Contains(name, "@") {
		return "", "", "", false
	}
	registry, rest, found := strings.Cut(name, "/")
	i := strings.LastIndex(rest, ":")
	if !found || registry == "" || i <= 0 || i == len(rest)-1 || strings.Contains(rest[i:], "/") {
		return "", "", "", false
	}
	return registry, rest[:i], rest[i+1:], true
}
