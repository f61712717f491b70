package daemon

import (
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

func TestAdvertiseAddress(t *testing.T) {
	t.Parallel()
	cidr := func(s string) net.Addr {
		ip, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		return n
	}
	machine := []net.Addr{cidr("127.0.0.1/8"), cidr("::1/128"), cidr("fe80::1/64"), cidr("fd00::7/64"), cidr("10.1.2.3/16"), cidr("192.168.0.9/24")}
	tests := []struct {
		name      string
		cluster   config.Cluster
		addrs     []net.Addr
		want, err string
	}{
		{name: "set", cluster: config.Cluster{AdvertiseAddress: "10.9.9.9", GossipAddress: "127.0.0.2:7946"}, addrs: machine, want: "10.9.9.9"},
		{name: "gossip on a specific IP", cluster: config.Cluster{GossipAddress: "127.0.0.2:7946"}, addrs: machine, want: "127.0.0.2"},
		{name: "gossip on an IPv6", cluster: config.Cluster{GossipAddress: "[fd00::9]:7946"}, addrs: machine, want: "fd00::9"},
		{name: "gossip on every address", cluster: config.Cluster{GossipAddress: "0.0.0.0:7946"}, addrs: machine, want: "10.1.2.3"},
		{name: "gossip with no host", cluster: config.Cluster{GossipAddress: ":7946"}, addrs: machine, want: "10.1.2.3"},
		{name: "IPv6 only", cluster: config.Cluster{GossipAddress: "[::]:7946"}, addrs: []net.Addr{cidr("::1/128"), cidr("fe80::1/64"), cidr("fd00::7/64")}, want: "fd00::7"},
		{name: "loopback only", cluster: config.Cluster{GossipAddress: "0.0.0.0:7946"}, addrs: []net.Addr{cidr("127.0.0.1/8"), cidr("::1/128")}, err: "set [cluster] advertise_address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := advertiseAddress(tt.cluster, func() ([]net.Addr, error) { return tt.addrs, nil })
			switch {
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("error %v, want one with %q", err, tt.err)
			case tt.err == "" && (err != nil || got != tt.want):
				t.Errorf("%q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := advertiseAddress(config.Cluster{GossipAddress: "0.0.0.0:7946"}, func() ([]net.Addr, error) { return nil, errors.New("no netlink") }); err == nil || !strings.Contains(err.Error(), "no netlink") {
		t.Errorf("listing failed: %v", err)
	}
}

func TestSplitTagRef(t *testing.T) {
	t.Parallel()
	for name, want := range map[string][]string{
		"docker.io/library/alpine:3.20":             {"docker.io", "library/alpine", "3.20"},
		"localhost:5000/app:v1":                     {"localhost:5000", "app", "v1"},
		"registry.example.com:5000/a/b/c:latest":    {"registry.example.com:5000", "a/b/c", "latest"},
		"docker.io/library/alpine@sha256:" + hex64:  nil,
		"localhost:5000/app":                        nil,
		"docker.io/library/alpine:":                 nil,
		"nohost:1":                                  nil,
		"docker.io/library/alpine:3.20@sha256:abcd": nil,
	} {
		r, repo, tag, ok := splitTagRef(name)
		if got := []string{r, repo, tag}; (want == nil && ok) || (want != nil && (!ok || !slices.Equal(got, want))) {
			t.Errorf("splitTagRef(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

var hex64 = strings.Repeat("a", 64)

// TestLocalRecords: the records a node announces are the blobs linked to shared registries'
// repositories, each once, and the tags of shared registries with their digest and the time
// the registry last confirmed them; nothing of a registry with share_with_peers = false, nor
// tags resolved from the peers' records.
func TestLocalRecords(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store, err := cache.Open(ctx, t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	shared, both, private := digest.FromString("shared"), digest.FromString("both"), digest.FromString("private")
	for _, l := range []struct {
		repo string
		dgst digest.Digest
	}{
		{"docker.io/library/alpine", shared}, {"docker.io/library/alpine", both}, {"localhost:5000/app", both},
		{"private.example.com/team/app", private}, {"private.example.com/team/app", both},
	} {
		if err := store.Link(ctx, l.repo, l.dgst); err != nil {
			t.Fatal(err)
		}
	}
	desc := func(d digest.Digest) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: d, Size: 10}
	}
	registryDate := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for name, d := range map[string]digest.Digest{
		"docker.io/library/alpine:3.20":             shared,
		"docker.io/library/alpine@" + both.String(): both,
		"private.example.com/team/app:v1":           private,
	} {
		if err := store.SetRefAt(ctx, name, desc(d), "https://x", registryDate); err != nil {
			t.Fatal(err)
		}
	}
	// A tag resolved from the peers' records during an outage is theirs, not this node's
	// revalidation: it is not announced (a forged record would spread as this node's own).
	if err := store.SetRefAt(ctx, "docker.io/library/alpine:edge", desc(both), resolver.PeersEndpoint, registryDate.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	no := false
	local := localRecords(store, map[string]config.Registry{"private.example.com": {ShareWithPeers: &no}})

	var got []cluster.Record
	if err := local(ctx, func(r cluster.Record) bool { got = append(got, r); return true }); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, r := range got {
		keys = append(keys, r.Key)
	}
	slices.Sort(keys)
	want := []string{cluster.BlobKey(shared), cluster.BlobKey(both), cluster.TagKey("docker.io", "library/alpine", "3.20")}
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Fatalf("records %v, want %v", keys, want)
	}
	for _, r := range got {
		// The registry's Date, not this node's clock: other nodes weigh it against theirs.
		if r.Key == cluster.TagKey("docker.io", "library/alpine", "3.20") && (r.Digest != shared || !r.Date.Equal(registryDate)) {
			t.Errorf("tag record %+v, want digest %s at the registry's %s", r, shared, registryDate)
		}
		if strings.HasPrefix(r.Key, "sha256:") && (r.Digest != "" || !r.Date.IsZero()) {
			t.Errorf("blob record %+v carries a tag's fields", r)
		}
	}

	// yield returning false stops the walk.
	n := 0
	if err := local(ctx, func(cluster.Record) bool { n++; return false }); err != nil || n != 1 {
		t.Errorf("stopped walk: %d records, %v", n, err)
	}
}

// TestListenAllClaimsThePeerAddress: with join set, the peer address is claimed with the
// others, before anything is created; when it is taken, nothing stays claimed.
func TestListenAllClaimsThePeerAddress(t *testing.T) {
	cfg := listenConfig(t)
	cfg.Cluster.Join = []string{"127.0.0.1:7946"}

	cfg.Cluster.PeerAddress = "127.0.0.1:0"
	var undo undoList
	lns, err := listenAll(cfg, false, &undo)
	if err != nil {
		t.Fatal(err)
	}
	if lns.peer == nil {
		t.Fatal("no peer listener with join set")
	}
	peerAddr := lns.peer.Addr().String()
	undo.run()
	if ln, err := net.Listen("tcp", peerAddr); err != nil {
		t.Errorf("the peer address is still claimed after undo: %v", err)
	} else {
		ln.Close()
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	mirror, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Mirror.Address = mirror.Addr().String()
	mirror.Close()
	cfg.Cluster.PeerAddress = taken.Addr().String()
	undo = nil
	if _, err := listenAll(cfg, false, &undo); err == nil || !strings.Contains(err.Error(), "cannot listen for cluster peers on "+cfg.Cluster.PeerAddress) {
		t.Fatalf("peer address taken: %v", err)
	}
	undo.run()
	if ln, err := net.Listen("tcp", cfg.Mirror.Address); err != nil {
		t.Errorf("the mirror address stayed claimed after the peer address failed: %v", err)
	} else {
		ln.Close()
	}

	// Without join, no peer listener, whatever peer_address says.
	cfg.Cluster.Join, cfg.Cluster.PeerAddress = nil, taken.Addr().String()
	undo = nil
	lns, err = listenAll(cfg, false, &undo)
	if err != nil || lns.peer != nil {
		t.Errorf("without join: peer listener %v, err %v", lns, err)
	}
	undo.run()
}

// listenConfig is a configuration whose addresses listenAll can claim: free ports, sockets in
// a fresh directory.
func listenConfig(t *testing.T) config.Config {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Mirror.Address, cfg.Metrics.Address = "127.0.0.1:0", ""
	cfg.Plugin.Address, cfg.Admin.Address = filepath.Join(dir, "p.sock"), filepath.Join(dir, "a.sock")
	return cfg
}
