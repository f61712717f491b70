package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/peer"
)

type fakeNode cluster.Stats

func (f fakeNode) Stats() cluster.Stats { return cluster.Stats(f) }

type fakeTags []cache.Ref

func (f fakeTags) PeerTags(context.Context) ([]cache.Ref, error) { return f, nil }

type fakePeers peer.Stats

func (f fakePeers) Stats() peer.Stats { return peer.Stats(f) }

func TestClusterCollector(t *testing.T) {
	node := fakeNode{
		Members:   map[cluster.MemberState]int{cluster.Alive: 3, cluster.Dead: 1},
		HomedKeys: 42, IndexEntries: 99, IndexBytes: 4096,
		IndexRefused: cluster.Refused{Full: 1, Quota: 2, Shape: 3, NotHome: 4, Future: 5},
		LookupsFound: 7, LookupsNotFound: 2, LookupsFailed: 1,
	}
	tags := fakeTags{{Name: "r.io/app:v"}, {Name: "r.io/app:w"}}
	peers := fakePeers{BytesIn: 1000, BytesOut: 2000, CoalescedFills: 3, Rejected: 4, PeerAnswers: 5}
	want := `
# HELP lifeboat_cluster_homed_keys Keys (blob digests, tags) this node's index holds records of, as one of their homes.
# TYPE lifeboat_cluster_homed_keys gauge
lifeboat_cluster_homed_keys 42
# HELP lifeboat_cluster_index_bytes About how many bytes of memory this node's index of the keys it is a home of takes ([cluster] max_index_size bounds it).
# TYPE lifeboat_cluster_index_bytes gauge
lifeboat_cluster_index_bytes 4096
# HELP lifeboat_cluster_index_refused_total Records announced to this node's index that it did not keep, by reason: full (the index at max_index_size), quota (the sender's records at their share of it), shape (neither a digest nor a tag), not_home (a key this node is not a home of), future (a tag record dated past this node's clock by more than max_clock_skew).
# TYPE lifeboat_cluster_index_refused_total counter
lifeboat_cluster_index_refused_total{reason="full"} 1
lifeboat_cluster_index_refused_total{reason="future"} 5
lifeboat_cluster_index_refused_total{reason="not_home"} 4
lifeboat_cluster_index_refused_total{reason="quota"} 2
lifeboat_cluster_index_refused_total{reason="shape"} 3
# HELP lifeboat_cluster_lookups_total Lookups of who holds a key, by result: found, not_found, failed (no home answered).
# TYPE lifeboat_cluster_lookups_total counter
lifeboat_cluster_lookups_total{result="failed"} 1
lifeboat_cluster_lookups_total{result="found"} 7
lifeboat_cluster_lookups_total{result="not_found"} 2
# HELP lifeboat_cluster_members Members of the cluster as this node sees them, by state (alive, suspect, dead, left).
# TYPE lifeboat_cluster_members gauge
lifeboat_cluster_members{state="alive"} 3
lifeboat_cluster_members{state="dead"} 1
lifeboat_cluster_members{state="left"} 0
lifeboat_cluster_members{state="suspect"} 0
# HELP lifeboat_cluster_peer_tags Cached tags answered from the peers' records: resolved from them while the registry could not answer, and not confirmed by it since (lifeboat status lists them).
# TYPE lifeboat_cluster_peer_tags gauge
lifeboat_cluster_peer_tags 2
# HELP lifeboat_peer_bytes_total Bytes of blobs and manifests transferred between this node and its peers, by direction (in: from peers, out: to peers).
# TYPE lifeboat_peer_bytes_total counter
lifeboat_peer_bytes_total{direction="in"} 1000
lifeboat_peer_bytes_total{direction="out"} 2000
# HELP lifeboat_peer_coalesced_fills_total Blobs this node fetched through their home's fill from the registry, rather than from the registry itself.
# TYPE lifeboat_peer_coalesced_fills_total counter
lifeboat_peer_coalesced_fills_total 3
# HELP lifeboat_peer_rejected_total Blobs a peer sent with bytes that failed verification (rejected, not cached).
# TYPE lifeboat_peer_rejected_total counter
lifeboat_peer_rejected_total 4
`
	if err := testutil.CollectAndCompare(NewClusterCollector(node, peers, tags), strings.NewReader(want),
		"lifeboat_cluster_homed_keys", "lifeboat_cluster_index_bytes", "lifeboat_cluster_index_refused_total", "lifeboat_cluster_lookups_total",
		"lifeboat_cluster_members", "lifeboat_cluster_peer_tags",
		"lifeboat_peer_bytes_total", "lifeboat_peer_coalesced_fills_total", "lifeboat_peer_rejected_total"); err != nil {
		t.Fatal(err)
	}
}

func TestBreakerSeries(t *testing.T) {
	peers := fakePeers{PeersDown: 2, BreakerTrips: 5, BreakerSkips: 40, Probes: 9}
	want := `
# HELP lifeboat_peer_breaker_skips_total Requests to peers (lookups of a home, transfers) not sent because the peer was down.
# TYPE lifeboat_peer_breaker_skips_total counter
lifeboat_peer_breaker_skips_total 40
# HELP lifeboat_peer_breaker_trips_total Times a peer was marked down by the circuit breaker.
# TYPE lifeboat_peer_breaker_trips_total counter
lifeboat_peer_breaker_trips_total 5
# HELP lifeboat_peer_down Peers the circuit breaker holds down now: their HTTP failed or timed out, so no lookup or transfer is sent to them until a probe gets an answer.
# TYPE lifeboat_peer_down gauge
lifeboat_peer_down 2
# HELP lifeboat_peer_probes_total Probes of peers that are down (GET /v2/ on their peer listener).
# TYPE lifeboat_peer_probes_total counter
lifeboat_peer_probes_total 9
`
	if err := testutil.CollectAndCompare(NewClusterCollector(fakeNode{}, peers, fakeTags{}), strings.NewReader(want),
		"lifeboat_peer_down", "lifeboat_peer_breaker_trips_total", "lifeboat_peer_breaker_skips_total", "lifeboat_peer_probes_total"); err != nil {
		t.Fatal(err)
	}
}

func TestClusterHandshakeFailures(t *testing.T) {
	node := fakeNode{HandshakeFailures: []cluster.HandshakeFailures{
		{Direction: cluster.DirectionIn, Reason: cluster.ReasonNotYetValid, Count: 3},
		{Direction: cluster.DirectionIn, Reason: cluster.ReasonUnknownAuthority},
		{Direction: cluster.DirectionOut, Reason: cluster.ReasonRefused, Count: 1},
	}}
	want := `
# HELP lifeboat_cluster_handshake_failures_total Failed TLS handshakes with peers, and peer requests refused for the node they claim, by direction (in: to this node's peer listener, out: to a peer) and reason (not_tls, no_certificate, unknown_authority, not_yet_valid, expired, bad_certificate, wrong_name, refused, other).
# TYPE lifeboat_cluster_handshake_failures_total counter
lifeboat_cluster_handshake_failures_total{direction="in",reason="not_yet_valid"} 3
lifeboat_cluster_handshake_failures_total{direction="in",reason="unknown_authority"} 0
lifeboat_cluster_handshake_failures_total{direction="out",reason="refused"} 1
`
	if err := testutil.CollectAndCompare(NewClusterCollector(node, fakePeers{}, fakeTags{}), strings.NewReader(want), "lifeboat_cluster_handshake_failures_total"); err != nil {
		t.Fatal(err)
	}
}

func TestLookups(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := NewLookups(reg)
	l.Observe(3*time.Millisecond, true, nil)
	l.Observe(700*time.Millisecond, false, nil)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "lifeboat_cluster_lookup_duration_seconds" {
		t.Fatalf("gathered %v", mfs)
	}
	h := mfs[0].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() < 0.703-1e-9 || h.GetSampleSum() > 0.703+1e-9 {
		t.Errorf("count %d sum %v, want 2 and 0.703", h.GetSampleCount(), h.GetSampleSum())
	}
	// 3 ms falls in the 4 ms bucket, not the 2 ms one.
	for _, b := range h.GetBucket() {
		switch b.GetUpperBound() {
		case 0.002:
			if b.GetCumulativeCount() != 0 {
				t.Errorf("bucket le=0.002 has %d", b.GetCumulativeCount())
			}
		case 0.004:
			if b.GetCumulativeCount() != 1 {
				t.Errorf("bucket le=0.004 has %d, want 1", b.GetCumulativeCount())
			}
		}
	}
}

type fakeGossip cluster.GossipStats

func (f fakeGossip) GossipStats() cluster.GossipStats { return cluster.GossipStats(f) }

// Every drop reason is reported, 0 included, so that a rule on one has a series to compare.
func TestGossipCollector(t *testing.T) {
	node := fakeGossip{Dropped: map[string]int64{"label": 5000, "stream_limit": 20}, Streams: 7, IgnoredMembers: 1}
	want := `
# HELP lifeboat_cluster_gossip_dropped_total Gossip packets and streams dropped as not from a member, by reason: label (not this cluster's label), decrypt (not this cluster's key), malformed, stream_limit (too many streams open), stream_idle (a stream that sent nothing).
# TYPE lifeboat_cluster_gossip_dropped_total counter
lifeboat_cluster_gossip_dropped_total{reason="decrypt"} 0
lifeboat_cluster_gossip_dropped_total{reason="label"} 5000
lifeboat_cluster_gossip_dropped_total{reason="malformed"} 0
lifeboat_cluster_gossip_dropped_total{reason="stream_idle"} 0
lifeboat_cluster_gossip_dropped_total{reason="stream_limit"} 20
# HELP lifeboat_cluster_gossip_streams Inbound gossip streams (TCP) open.
# TYPE lifeboat_cluster_gossip_streams gauge
lifeboat_cluster_gossip_streams 7
# HELP lifeboat_cluster_members_ignored_total Members not used for peer traffic because the peer address they advertise is not on their own address, counted once per member and metadata.
# TYPE lifeboat_cluster_members_ignored_total counter
lifeboat_cluster_members_ignored_total 1
`
	if err := testutil.CollectAndCompare(NewGossipCollector(node), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
