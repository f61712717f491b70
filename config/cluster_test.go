package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestClusterDefaults(t *testing.T) {
	t.Parallel()
	c := Default()
	want := Cluster{GossipAddress: "0.0.0.0:7946", PeerAddress: "0.0.0.0:5102", SecretFile: "/etc/lifeboat/cluster.key", Replicas: 3, Coalesce: true,
		MaxIndexSize: 64 << 20, MaxClockSkew: Duration(2 * time.Minute)}
	if !clusterEqual(c.Cluster, want) {
		t.Errorf("[cluster] defaults = %+v, want %+v", c.Cluster, want)
	}
	if c.Cluster.Enabled() {
		t.Error("the cluster tier is on by default")
	}
	if c.Outage.Target != "upstream" {
		t.Errorf("outage.target default = %q, want upstream", c.Outage.Target)
	}
}

func clusterEqual(a, b Cluster) bool {
	return slices.Equal(a.Join, b.Join) && a.GossipAddress == b.GossipAddress && a.PeerAddress == b.PeerAddress &&
		a.AdvertiseAddress == b.AdvertiseAddress && a.NodeName == b.NodeName && a.SecretFile == b.SecretFile &&
		a.Replicas == b.Replicas && a.Coalesce == b.Coalesce && a.MaxIndexSize == b.MaxIndexSize && a.MaxClockSkew == b.MaxClockSkew
}

func TestParseCluster(t *testing.T) {
	t.Parallel()
	c := Default()
	err := Parse([]byte(`
[cluster]
join = ["lifeboat-peers.kube-system.svc.cluster.local:7946", "10.0.0.5:7946", "[fd00::1]:7946"]
gossip_address = "10.0.0.4:7000"
peer_address = ":5200"
advertise_address = "10.0.0.4"
node_name = "node-4.example_a"
secret_file = "/run/secrets/key"
replicas = 16
coalesce = false
max_index_size = "256MiB"
max_clock_skew = "30s"
[registry."registry.example.com"]
share_with_peers = false
[registry."ghcr.io"]
share_with_peers = true
[registry."quay.io"]
username = "u"
[outage]
mode = "blackhole"
target = "peers"
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	want := Cluster{
		Join:          []string{"lifeboat-peers.kube-system.svc.cluster.local:7946", "10.0.0.5:7946", "[fd00::1]:7946"},
		GossipAddress: "10.0.0.4:7000", PeerAddress: ":5200", AdvertiseAddress: "10.0.0.4", NodeName: "node-4.example_a",
		SecretFile: "/run/secrets/key", Replicas: 16, Coalesce: false, MaxIndexSize: 256 << 20, MaxClockSkew: Duration(30 * time.Second),
	}
	if !clusterEqual(c.Cluster, want) || !c.Cluster.Enabled() {
		t.Errorf("[cluster] = %+v, want %+v", c.Cluster, want)
	}
	if got := c.NotShared(); !slices.Equal(got, []string{"registry.example.com"}) {
		t.Errorf("NotShared = %v, want [registry.example.com]", got)
	}
	for host, shared := range map[string]bool{"registry.example.com": false, "ghcr.io": true, "quay.io": true, "docker.io": true} {
		if got := c.Registry[host].Shared(); got != shared {
			t.Errorf("%s shared = %v, want %v", host, got, shared)
		}
	}
	if spec := c.Outage.Spec(); spec.Target != "peers" {
		t.Errorf("outage spec target = %q, want peers", spec.Target)
	}
}

func TestValidateCluster(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		toml string
		want string // the error's text; "" for valid
	}{
		{name: "join without secret_file", toml: "[cluster]\njoin = [\"10.0.0.5:7946\"]\nsecret_file = \"\"", want: `line 3, column 15: cluster.secret_file: must be set when cluster.join is`},
		{name: "secret_file empty without join", toml: "[cluster]\nsecret_file = \"\""},
		{name: "join without port", toml: "[cluster]\njoin = [\"10.0.0.5:7946\", \"10.0.0.6\"]", want: `line 2, column 26: cluster.join: "10.0.0.6" is not host:port`},
		{name: "join without host", toml: "[cluster]\njoin = [\":7946\"]", want: `cluster.join: ":7946" has no host`},
		{name: "join port 0", toml: "[cluster]\njoin = [\"a:0\"]", want: `cluster.join: "a:0": the port must be a number from 1 to 65535`},
		{name: "join port too large", toml: "[cluster]\njoin = [\"a:65536\"]", want: `the port must be a number from 1 to 65535`},
		{name: "join named port", toml: "[cluster]\njoin = [\"a:gossip\"]", want: `the port must be a number`},
		{name: "gossip address not host:port", toml: "[cluster]\ngossip_address = \"0.0.0.0\"", want: `cluster.gossip_address: "0.0.0.0" is not host:port`},
		{name: "gossip address host name", toml: "[cluster]\ngossip_address = \"node-1:7946\"", want: `cluster.gossip_address: "node-1:7946": the host must be an IP address`},
		{name: "peer address bad port", toml: "[cluster]\npeer_address = \"0.0.0.0:x\"", want: `cluster.peer_address: "0.0.0.0:x": the port must be a number`},
		{name: "peer address port 0", toml: "[cluster]\npeer_address = \"127.0.0.1:0\""},
		{name: "advertise with port", toml: "[cluster]\nadvertise_address = \"10.0.0.5:7946\"", want: `cluster.advertise_address: "10.0.0.5:7946" is not an IP address`},
		{name: "advertise unspecified", toml: "[cluster]\nadvertise_address = \"0.0.0.0\"", want: `cluster.advertise_address: "0.0.0.0" is not an IP address`},
		{name: "advertise IPv6", toml: "[cluster]\nadvertise_address = \"fd00::5\""},
		{name: "node name with space", toml: "[cluster]\nnode_name = \"node 1\"", want: `cluster.node_name: "node 1": a node name is 1 to 128 letters`},
		{name: "node name starting with a dot", toml: "[cluster]\nnode_name = \".n\"", want: `cluster.node_name`},
		{name: "node name too long", toml: "[cluster]\nnode_name = \"" + strings.Repeat("n", 129) + "\"", want: `cluster.node_name`},
		{name: "node name of 128", toml: "[cluster]\nnode_name = \"" + strings.Repeat("n", 128) + "\""},
		{name: "replicas 0", toml: "[cluster]\nreplicas = 0", want: `line 2, column 12: cluster.replicas: 0 is not from 1 to 16`},
		{name: "replicas 17", toml: "[cluster]\nreplicas = 17", want: `cluster.replicas: 17 is not from 1 to 16`},
		{name: "replicas 1", toml: "[cluster]\nreplicas = 1"},
		{name: "replicas a string", toml: "[cluster]\nreplicas = \"3\"", want: `cluster.replicas: expected an integer, not a TOML string`},
		{name: "share_with_peers a string", toml: "[registry.\"ghcr.io\"]\nshare_with_peers = \"no\"", want: `expected true or false, not a TOML string`},
		{name: "unknown cluster key", toml: "[cluster]\nreplica = 3", want: `unknown key "cluster.replica"`},
		{name: "index size too small", toml: "[cluster]\nmax_index_size = \"512KiB\"", want: `line 2, column 18: cluster.max_index_size: must be at least 1MiB`},
		{name: "index size of 1MiB", toml: "[cluster]\nmax_index_size = \"1MiB\""},
		{name: "clock skew 0", toml: "[cluster]\nmax_clock_skew = \"0s\"", want: `cluster.max_clock_skew: 0s is not from 1s to 1h0m0s`},
		{name: "clock skew of a day", toml: "[cluster]\nmax_clock_skew = \"24h\"", want: `cluster.max_clock_skew: 24h0m0s is not from 1s to 1h0m0s`},
		{name: "clock skew of an hour", toml: "[cluster]\nmax_clock_skew = \"1h\""},
		{name: "outage target", toml: "[outage]\ntarget = \"registries\"", want: `outage.target: target "registries" is not "upstream", "peers" or "all"`},
		{name: "outage target all", toml: "[outage]\nmode = \"dns\"\ntarget = \"all\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			err := Parse([]byte(tt.toml), &c)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want one containing %q", err, tt.want)
			case tt.want != "" && !errors.Is(err, errdefs.ErrInvalidArgument) && !strings.Contains(err.Error(), "expected") && !strings.Contains(err.Error(), "unknown key"):
				t.Errorf("error %v is not ErrInvalidArgument", err)
			}
		})
	}
}

// TestClusterSetAfterTheFile: a value set after the file was read (by a flag) is reported
// without the file's line.
func TestClusterSetAfterTheFile(t *testing.T) {
	t.Parallel()
	c := Default()
	if err := Parse([]byte("[cluster]\nreplicas = 5\n"), &c); err != nil {
		t.Fatal(err)
	}
	c.Cluster.Replicas = 40
	err := c.Validate()
	var cerr *Error
	if !errors.As(err, &cerr) || cerr.Key != "cluster.replicas" || cerr.Line != 0 {
		t.Errorf("error %v, want one for cluster.replicas with no line", err)
	}
}
