// Package config is lifeboat's configuration: the TOML file, its defaults, and validation.
// Defaults live in Default and nowhere else; DESIGN.md's table of names and defaults is the
// contract this file keeps.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/docker/go-units"
	"github.com/pelletier/go-toml/v2"

	"github.com/lifeboat-dev/lifeboat/outage"
)

// DefaultPath is read when no --config is given; it is fine for it not to exist.
const DefaultPath = "/etc/lifeboat/config.toml"

// Config is the whole configuration file.
type Config struct {
	// Root is the data directory: the cache blobs, its index and the snapshots.
	Root string `toml:"root"`
	// Mirror is the registry mirror that containerd reaches through hosts.toml.
	Mirror Mirror `toml:"mirror"`
	// Plugin is the gRPC socket of the containerd proxy plugins.
	Plugin Plugin `toml:"plugin"`
	// Admin is the socket the lifeboat CLI talks to the daemon on.
	Admin Admin `toml:"admin"`
	// Metrics is the Prometheus endpoint.
	Metrics Metrics `toml:"metrics"`
	// Cache sizes the cache.
	Cache Cache `toml:"cache"`
	// Resolve is the tag resolution policy.
	Resolve Resolve `toml:"resolve"`
	// Registry holds per-registry upstream settings, keyed by registry host ("docker.io").
	Registry map[string]Registry `toml:"registry"`
	// Auth holds where registry credentials come from besides [registry] entries.
	Auth Auth `toml:"auth"`
	// Outage is an upstream outage simulated from start-up.
	Outage Outage `toml:"outage"`
	// Cluster is the cluster tier: lifeboats on other nodes serving each other. Off unless
	// Join is set.
	Cluster Cluster `toml:"cluster"`
	// Log sets the daemon's logging.
	Log Log `toml:"log"`

	// origin is where the values came from, for errors that name a value's line; nil when no
	// file set any.
	origin *origin
}

// Mirror configures the registry mirror listener.
type Mirror struct {
	// Address is the host:port the mirror listens on.
	Address string `toml:"address"`
	// Registries are mirrored besides those with a [registry."<name>"] table; a request for
	// any other registry is refused without contacting it. Registry hosts in normal form
	// (lower case, docker.io for Docker Hub), as in image references.
	Registries []string `toml:"registries"`
	// AnyRegistry mirrors every registry a request names, listed or not: lifeboat then
	// contacts whatever host a client of the mirror names (at most
	// endpoints.DefaultMaxOtherRegistries unlisted ones are kept at a time).
	AnyRegistry bool `toml:"any_registry"`
}

// DefaultRegistries are the registries mirrored when mirror.registries is not set.
var DefaultRegistries = []string{"docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io"}

// Plugin configures the containerd proxy plugins.
type Plugin struct {
	// Address is the unix socket path.
	Address string `toml:"address"`
	// ContentDelete is what a Delete from containerd's garbage collector does to a blob:
	// "release" (it stays cached, evictable by the size budget, still served offline) or
	// "remove".
	ContentDelete string `toml:"content_delete"`
}

// Admin configures the admin socket.
type Admin struct {
	// Address is the unix socket path; it is created with mode 0600.
	Address string `toml:"address"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Address is the host:port serving /metrics; empty disables it.
	Address string `toml:"address"`
	// Pprof serves Go's runtime profiles (net/http/pprof, under /debug/pprof/) on the metrics
	// address too. Off by default: like /metrics they have no authentication, and a CPU
	// profile costs the daemon CPU while it runs.
	Pprof bool `toml:"pprof"`
}

// Cache sizes the cache.
type Cache struct {
	// MaxSize is the budget for cached content, such as "20GiB". Empty: 80% of the root
	// filesystem's free space at first start.
	MaxSize Size `toml:"max_size"`
	// MaxBlobSize is the largest blob lifeboat downloads from an upstream: a larger one is
	// refused before a byte is written, or cut off as it arrives when the upstream does not
	// say its size. Must be positive.
	MaxBlobSize Size `toml:"max_blob_size"`
	// VerifyBeforeSend is the size up to which a blob being downloaded reaches clients only once
	// its digest verified: the answer's headers go at once, its body once the whole blob
	// arrived and matched, so that a bad download reaches no client as a single byte. Larger
	// blobs stream as they arrive, their last byte held back until they verified. "0": every
	// blob over 1 MiB streams.
	VerifyBeforeSend Size `toml:"verify_before_send"`
}

// Resolve is the tag resolution policy.
type Resolve struct {
	// Policy is "upstream-first" (revalidate tags when the upstream answers quickly) or
	// "cache-first" (trust a cached tag for TagMaxAge).
	Policy string `toml:"policy"`
	// TagMaxAge is how long cache-first trusts a cached tag without asking upstream.
	TagMaxAge Duration `toml:"tag_max_age"`
	// UpstreamTimeout is how long a tag revalidation may take before the cached answer is
	// served instead.
	UpstreamTimeout Duration `toml:"upstream_timeout"`
	// MaxFills is how many blob downloads from upstreams may run at once. A request that would
	// start another waits up to FillQueueTimeout for one to end, and is then answered 429.
	MaxFills int `toml:"max_fills"`
	// FillQueueTimeout is how long such a request waits. Must be positive.
	FillQueueTimeout Duration `toml:"fill_queue_timeout"`
	// MaxAbandonedFills is how many blob downloads may go on with no client reading them (they
	// go on so that the next pull finds the blob cached); past it, the ones abandoned longest
	// ago are cancelled. Must be positive.
	MaxAbandonedFills int `toml:"max_abandoned_fills"`
	// OnDenied is what a tag revalidation does when the registry, or its token service,
	// answers that access to the repository is denied (401, 403): "refuse" (answer as if the
	// tag were not cached) or "serve-stale" (serve the cached tag, as in an outage).
	OnDenied string `toml:"on_denied"`
}

// Registry is one upstream registry's settings.
type Registry struct {
	// Endpoints are tried in order; "http://" means plain HTTP.
	Endpoints []string `toml:"endpoints"`
	// Username and Password authenticate to every endpoint.
	Username string `toml:"username"`
	Password string `toml:"password"`
	// CAFile is a PEM bundle trusted for the endpoints' TLS certificates.
	CAFile string `toml:"ca_file"`
	// InsecureSkipVerify disables TLS certificate verification.
	InsecureSkipVerify bool `toml:"insecure_skip_verify"`
	// ShareWithPeers lets the registry's content cross nodes of the cluster: announced to,
	// served to and fetched from peers. Unset means true (see Shared); false keeps private
	// images, pulled with this node's credentials, on this node.
	ShareWithPeers *bool `toml:"share_with_peers"`
}

// Shared reports whether the registry's content may cross nodes of the cluster:
// share_with_peers, true when unset.
func (r Registry) Shared() bool { return r.ShareWithPeers == nil || *r.ShareWithPeers }

// NotShared lists the registries with share_with_peers = false, sorted.
func (c Config) NotShared() []string {
	var out []string
	for _, host := range slices.Sorted(maps.Keys(c.Registry)) {
		if !c.Registry[host].Shared() {
			out = append(out, host)
		}
	}
	return out
}

// Auth says where else credentials come from.
type Auth struct {
	// DockerConfig is a docker config.json with registry credentials.
	DockerConfig string `toml:"docker_config"`
}

// Outage is an outage simulated from start-up.
type Outage struct {
	// Mode is one of dns, refused, blackhole, reset, http-<status>, slow, flaky; empty is off.
	Mode string `toml:"mode"`
	// Registries limits the outage to these registries; empty means all.
	Registries []string `toml:"registries"`
	// For ends the outage after this long; zero means until stopped.
	For Duration `toml:"for"`
	// Target is the traffic the outage cuts: "upstream" (the registries), "peers" (the other
	// nodes of the cluster) or "all".
	Target string `toml:"target"`
}

// Cluster is the cluster tier: lifeboats on different nodes serving each other, so that a node
// that joins during a registry outage finds the images the others hold, and a cluster fetches
// each blob from the registry once. Off unless Join is set.
type Cluster struct {
	// Join lists host:port of nodes to join (static addresses, or DNS names such as a
	// Kubernetes headless Service), resolved again every 30 s: the addresses that are not an
	// alive member's are joined again. The tier is on when it is set; a first node may list its
	// own gossip address.
	Join []string `toml:"join"`
	// GossipAddress is the host:port memberlist binds, TCP and UDP; the host is an IP.
	GossipAddress string `toml:"gossip_address"`
	// PeerAddress is the host:port of the peer listener: the authenticated OCI pull API and
	// index requests for the other nodes.
	PeerAddress string `toml:"peer_address"`
	// AdvertiseAddress is the IP the other nodes reach this one at. Empty: the host of
	// GossipAddress when it is a specific IP, else the first non-loopback address.
	AdvertiseAddress string `toml:"advertise_address"`
	// NodeName is this node's unique member name. Empty: the host name.
	NodeName string `toml:"node_name"`
	// SecretFile holds the cluster key: 32 random bytes, base64 (as `openssl rand -base64 32`
	// prints), readable by its owner only. Required when Join is set.
	SecretFile string `toml:"secret_file"`
	// Replicas is how many home nodes index each key, from 1 to MaxReplicas.
	Replicas int `toml:"replicas"`
	// Coalesce sends a blob that no node holds through its first home, which fetches it from
	// the registry once for the whole cluster.
	Coalesce bool `toml:"coalesce"`
	// MaxIndexSize bounds the memory of the index this node keeps as a home of keys (who holds
	// what), at least MinIndexSize; each other node's records may take a quarter of it. Past
	// it, new records are refused and counted; records their holders refresh stay.
	MaxIndexSize Size `toml:"max_index_size"`
	// MaxClockSkew is how far past this node's clock the registry Date of a tag record another
	// node announces may be, from 1s to MaxClockSkewLimit; a record dated later is refused.
	MaxClockSkew Duration `toml:"max_clock_skew"`
}

// Bounds of Cluster.MaxIndexSize and Cluster.MaxClockSkew.
const (
	MinIndexSize      = 1 << 20
	MaxClockSkewLimit = time.Hour
)

// MaxReplicas bounds Cluster.Replicas.
const MaxReplicas = 16

// Enabled reports whether the cluster tier is on: Join is set.
func (c Cluster) Enabled() bool { return len(c.Join) > 0 }

// Log sets logging.
type Log struct {
	// Level is one of trace, debug, info, warn, error.
	Level string `toml:"level"`
	// Format is "text" or "json".
	Format string `toml:"format"`
}

// MirroredRegistries are the registries the mirror serves: mirror.registries and those with a
// [registry."<name>"] table, sorted. With mirror.any_registry it serves others too.
func (c Config) MirroredRegistries() []string {
	regs := slices.Concat(c.Mirror.Registries, slices.Collect(maps.Keys(c.Registry)))
	slices.Sort(regs)
	return slices.Compact(regs)
}

// Policies of Resolve.Policy.
const (
	PolicyUpstreamFirst = "upstream-first"
	PolicyCacheFirst    = "cache-first"
)

// Values of Resolve.OnDenied.
const (
	OnDeniedRefuse     = "refuse"
	OnDeniedServeStale = "serve-stale"
)

// Default is the configuration with nothing set.
func Default() Config {
	return Config{
		Root:    "/var/lib/lifeboat",
		Mirror:  Mirror{Address: "127.0.0.1:5100", Registries: slices.Clone(DefaultRegistries)},
		Plugin:  Plugin{Address: "/run/lifeboat/lifeboat.sock", ContentDelete: "release"},
		Admin:   Admin{Address: "/run/lifeboat/admin.sock"},
		Metrics: Metrics{Address: "127.0.0.1:5101"},
		Cache:   Cache{MaxBlobSize: 32 << 30, VerifyBeforeSend: 1 << 30},
		Resolve: Resolve{
			Policy:            PolicyUpstreamFirst,
			UpstreamTimeout:   Duration(time.Second),
			MaxFills:          64,
			FillQueueTimeout:  Duration(5 * time.Second),
			MaxAbandonedFills: 16,
			OnDenied:          OnDeniedRefuse,
		},
		Outage: Outage{Target: outage.TargetUpstream},
		Cluster: Cluster{
			GossipAddress: "0.0.0.0:7946",
			PeerAddress:   "0.0.0.0:5102",
			SecretFile:    "/etc/lifeboat/cluster.key",
			Replicas:      3,
			Coalesce:      true,
			// 64 MiB: see cluster.DefaultMaxIndexBytes.
			MaxIndexSize: 64 << 20,
			MaxClockSkew: Duration(2 * time.Minute),
		},
		Log: Log{Level: "info", Format: "text"},
	}
}

// Load reads the file at path over the defaults. When explicit is false and the file does not
// exist, the defaults are returned. Unknown keys and bad values are errors that name the file,
// the key and the line.
func Load(path string, explicit bool) (Config, error) {
	cfg := Default()
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !explicit {
			return cfg, cfg.Validate()
		}
		return cfg, fmt.Errorf("config file %s: %w", path, err)
	}
	if err := parse(path, b, &cfg); err != nil {
		if verr, ok := errors.AsType[*Error](err); ok && verr.File != "" {
			return cfg, err // it names the file
		}
		return cfg, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes TOML into cfg (keeping what the TOML leaves unset) and validates the result.
// A validation error names the key, and the line and column of a value that is still the one
// the TOML set; values the TOML does not set have no line.
func Parse(b []byte, cfg *Config) error {
	return parse("", b, cfg)
}

// parse is Parse for the configuration file at path ("" when there is none).
func parse(path string, b []byte, cfg *Config) error {
	if err := numericDuration(b); err != nil {
		return err
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		if serr, ok := errors.AsType[*toml.StrictMissingError](err); ok && len(serr.Errors) > 0 {
			e := serr.Errors[0]
			row, _ := e.Position()
			return fmt.Errorf("line %d: unknown key %q", row, strings.Join(e.Key(), "."))
		}
		if derr, ok := errors.AsType[*toml.DecodeError](err); ok {
			row, col := derr.Position()
			if key := derr.Key(); len(key) > 0 {
				return fmt.Errorf("line %d, column %d: %s: %s", row, col, keyName(key...), decodeMessage(derr.Error()))
			}
			return fmt.Errorf("line %d, column %d: %s", row, col, decodeMessage(derr.Error()))
		}
		return err
	}
	*cfg = withOrigin(*cfg, path, b)
	return cfg.Validate()
}

// Size is a byte count written as "20GiB", "500MB" or a plain number of bytes.
type Size int64

// UnmarshalText parses a size.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := units.RAMInBytes(string(b))
	if err != nil {
		return fmt.Errorf("invalid size %q: use a number with a unit such as 20GiB", b)
	}
	*s = Size(v)
	return nil
}

// MarshalText prints a size in binary units.
func (s Size) MarshalText() ([]byte, error) {
	return []byte(units.BytesSize(float64(s))), nil
}

// Duration is a time.Duration written as "1s", "10m".
type Duration time.Duration

// UnmarshalText parses a duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q: use a number with a unit such as 1s or 10m", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText prints a duration.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}
