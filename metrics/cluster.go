package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/peer"
)

// ClusterStats is what the cluster collector reads of the membership and the index;
// *cluster.Node provides it.
type ClusterStats interface {
	Stats() cluster.Stats
}

// PeerStats is what the cluster collector reads of the transfers; *peer.Source provides it.
type PeerStats interface {
	Stats() peer.Stats
}

// PeerTagLister lists the cached tags answered from the peers' records (resolved from them
// while the registry could not answer, not confirmed by it since); *resolver.Resolver provides
// it.
type PeerTagLister interface {
	PeerTags(ctx context.Context) ([]cache.Ref, error)
}

// memberStates are the states lifeboat_cluster_members always reports, 0 included, so that a
// rule on "dead > 0" has a series to compare.
var memberStates = []cluster.MemberState{cluster.Alive, cluster.Suspect, cluster.Dead, cluster.Left}

// clusterCollector reads the node's and the source's counters at scrape time.
type clusterCollector struct {
	node  ClusterStats
	peers PeerStats
	tags  PeerTagLister

	members, homedKeys, lookups   *prometheus.Desc
	indexBytes, refused, peerTags *prometheus.Desc
	peerBytes, coalesced, rejects *prometheus.Desc
	breaker                       breakerDescs
	handshakeFailures             *prometheus.Desc
}

// NewClusterCollector returns a collector of the cluster tier's figures: members by state,
// the keys this node is home to, the memory of their index and the records it refused, lookups
// by result, the tags answered from the peers' records, the peer transfers' bytes, coalesced
// fills and rejected bytes, and the failed TLS handshakes with peers by direction and reason.
func NewClusterCollector(node ClusterStats, peers PeerStats, tags PeerTagLister) prometheus.Collector {
	return &clusterCollector{
		node:  node,
		peers: peers,
		tags:  tags,
		indexBytes: prometheus.NewDesc("lifeboat_cluster_index_bytes",
			"About how many bytes of memory this node's index of the keys it is a home of takes ([cluster] max_index_size bounds it).", nil, nil),
		refused: prometheus.NewDesc("lifeboat_cluster_index_refused_total",
			"Records announced to this node's index that it did not keep, by reason: full (the index at max_index_size), quota (the sender's records at their share of it), shape (neither a digest nor a tag), not_home (a key this node is not a home of), future (a tag record dated past this node's clock by more than max_clock_skew).",
			[]string{"reason"}, nil),
		peerTags: prometheus.NewDesc("lifeboat_cluster_peer_tags",
			"Cached tags answered from the peers' records: resolved from them while the registry could not answer, and not confirmed by it since (lifeboat status lists them).", nil, nil),
		members: prometheus.NewDesc("lifeboat_cluster_members",
			"Members of the cluster as this node sees them, by state (alive, suspect, dead, left).", []string{"state"}, nil),
		homedKeys: prometheus.NewDesc("lifeboat_cluster_homed_keys",
			"Keys (blob digests, tags) this node's index holds records of, as one of their homes.", nil, nil),
		lookups: prometheus.NewDesc("lifeboat_cluster_lookups_total",
			"Lookups of who holds a key, by result: found, not_found, failed (no home answered).", []string{"result"}, nil),
		peerBytes: prometheus.NewDesc("lifeboat_peer_bytes_total",
			"Bytes of blobs and manifests transferred between this node and its peers, by direction (in: from peers, out: to peers).", []string{"direction"}, nil),
		coalesced: prometheus.NewDesc("lifeboat_peer_coalesced_fills_total",
			"Blobs this node fetched through their home's fill from the registry, rather than from the registry itself.", nil, nil),
		rejects: prometheus.NewDesc("lifeboat_peer_rejected_total",
			"Blobs a peer sent with bytes that failed verification (rejected, not cached).", nil, nil),
		breaker: newBreakerDescs(),
		handshakeFailures: prometheus.NewDesc("lifeboat_cluster_handshake_failures_total",
			"Failed TLS handshakes with peers, and peer requests refused for the node they claim, by direction (in: to this node's peer listener, out: to a peer) "+
				"and reason (not_tls, no_certificate, unknown_authority, not_yet_valid, expired, bad_certificate, wrong_name, refused, other).",
			[]string{"direction", "reason"}, nil),
	}
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.members, c.homedKeys, c.lookups, c.indexBytes, c.refused, c.peerTags, c.peerBytes, c.coalesced, c.rejects, c.handshakeFailures} {
		ch <- d
	}
	c.breaker.describe(ch)
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.node.Stats()
	for _, s := range memberStates {
		ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, float64(st.Members[s]), string(s))
	}
	ch <- prometheus.MustNewConstMetric(c.homedKeys, prometheus.GaugeValue, float64(st.HomedKeys))
	ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(st.LookupsFound), "found")
	ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(st.LookupsNotFound), "not_found")
	ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(st.LookupsFailed), "failed")
	ch <- prometheus.MustNewConstMetric(c.indexBytes, prometheus.GaugeValue, float64(st.IndexBytes))
	for reason, n := range st.IndexRefused.Reasons() {
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(n), reason)
	}
	if tags, err := c.tags.PeerTags(context.Background()); err == nil {
		ch <- prometheus.MustNewConstMetric(c.peerTags, prometheus.GaugeValue, float64(len(tags)))
	}
	for _, f := range st.HandshakeFailures {
		ch <- prometheus.MustNewConstMetric(c.handshakeFailures, prometheus.CounterValue, float64(f.Count), f.Direction, f.Reason)
	}

	ps := c.peers.Stats()
	ch <- prometheus.MustNewConstMetric(c.peerBytes, prometheus.CounterValue, float64(ps.BytesIn), "in")
	ch <- prometheus.MustNewConstMetric(c.peerBytes, prometheus.CounterValue, float64(ps.BytesOut), "out")
	ch <- prometheus.MustNewConstMetric(c.coalesced, prometheus.CounterValue, float64(ps.CoalescedFills))
	ch <- prometheus.MustNewConstMetric(c.rejects, prometheus.CounterValue, float64(ps.Rejected))
	c.breaker.collect(ch, ps)
}

// breakerDescs are the series of the per-peer circuit breaker (peer.Source's).
type breakerDescs struct {
	down, trips, skips, probes *prometheus.Desc
}

func newBreakerDescs() breakerDescs {
	return breakerDescs{
		down: prometheus.NewDesc("lifeboat_peer_down",
			"Peers the circuit breaker holds down now: their HTTP failed or timed out, so no lookup or transfer is sent to them until a probe gets an answer.", nil, nil),
		trips: prometheus.NewDesc("lifeboat_peer_breaker_trips_total",
			"Times a peer was marked down by the circuit breaker.", nil, nil),
		skips: prometheus.NewDesc("lifeboat_peer_breaker_skips_total",
			"Requests to peers (lookups of a home, transfers) not sent because the peer was down.", nil, nil),
		probes: prometheus.NewDesc("lifeboat_peer_probes_total",
			"Probes of peers that are down (GET /v2/ on their peer listener).", nil, nil),
	}
}

func (d breakerDescs) describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{d.down, d.trips, d.skips, d.probes} {
		ch <- desc
	}
}

func (d breakerDescs) collect(ch chan<- prometheus.Metric, ps peer.Stats) {
	ch <- prometheus.MustNewConstMetric(d.down, prometheus.GaugeValue, float64(ps.PeersDown))
	ch <- prometheus.MustNewConstMetric(d.trips, prometheus.CounterValue, float64(ps.BreakerTrips))
	ch <- prometheus.MustNewConstMetric(d.skips, prometheus.CounterValue, float64(ps.BreakerSkips))
	ch <- prometheus.MustNewConstMetric(d.probes, prometheus.CounterValue, float64(ps.Probes))
}

// Lookups is the histogram of the cluster's lookup latency. Pass its Observe as
// cluster.Config.ObserveLookup.
type Lookups struct {
	duration prometheus.Histogram
}

// NewLookups registers lifeboat_cluster_lookup_duration_seconds with reg.
func NewLookups(reg prometheus.Registerer) *Lookups {
	l := &Lookups{duration: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "lifeboat_cluster_lookup_duration_seconds",
		Help: "Duration of lookups of who holds a key, asked of the key's homes (hedged), whatever their result.",
		// From 0.5 ms to about 1 s: a lookup is bounded by the lookup timeout (500 ms).
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12),
	})}
	reg.MustRegister(l.duration)
	return l
}

// Observe records one lookup; its result is counted by the collector from cluster.Stats.
func (l *Lookups) Observe(d time.Duration, _ bool, _ error) {
	l.duration.Observe(d.Seconds())
}

// GossipStats is what the gossip collector reads of the gossip port; *cluster.Node provides
// it.
type GossipStats interface {
	GossipStats() cluster.GossipStats
}

// gossipCollector reads the node's gossip counters at scrape time.
type gossipCollector struct {
	node                     GossipStats
	dropped, streams, ignore *prometheus.Desc
}

// NewGossipCollector returns a collector of what the gossip port drops: packets and streams
// that are not a member's, by reason, the inbound streams open, and the members ignored for
// peer traffic.
func NewGossipCollector(node GossipStats) prometheus.Collector {
	return &gossipCollector{
		node: node,
		dropped: prometheus.NewDesc("lifeboat_cluster_gossip_dropped_total",
			"Gossip packets and streams dropped as not from a member, by reason: label (not this cluster's label), decrypt (not this cluster's key), malformed, stream_limit (too many streams open), stream_idle (a stream that sent nothing).",
			[]string{"reason"}, nil),
		streams: prometheus.NewDesc("lifeboat_cluster_gossip_streams",
			"Inbound gossip streams (TCP) open.", nil, nil),
		ignore: prometheus.NewDesc("lifeboat_cluster_members_ignored_total",
			"Members not used for peer traffic because the peer address they advertise is not on their own address, counted once per member and metadata.", nil, nil),
	}
}

func (c *gossipCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.dropped, c.streams, c.ignore} {
		ch <- d
	}
}

func (c *gossipCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.node.GossipStats()
	for _, r := range cluster.GossipDropReasons {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Dropped[r]), r)
	}
	ch <- prometheus.MustNewConstMetric(c.streams, prometheus.GaugeValue, float64(st.Streams))
	ch <- prometheus.MustNewConstMetric(c.ignore, prometheus.CounterValue, float64(st.IgnoredMembers))
}
