package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/errmsg"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/outage"
)

// Validate checks the values the types alone do not, and that the files the configuration
// names can be used: a ca_file must be readable and hold a PEM certificate, a docker_config
// that exists must be readable. The error, an *Error, is for the first value at fault; it
// names the key and, for a value that is still the one a configuration file set (see Parse),
// the file and the line.
func (c Config) Validate() error {
	if c.Root == "" {
		return c.invalid("root", -1, func(c Config) any { return c.Root }, errors.New("must not be empty"))
	}
	switch c.Resolve.Policy {
	case PolicyUpstreamFirst, PolicyCacheFirst:
	default:
		return c.invalid("resolve.policy", -1, func(c Config) any { return c.Resolve.Policy },
			fmt.Errorf("%q is not %q or %q", c.Resolve.Policy, PolicyUpstreamFirst, PolicyCacheFirst))
	}
	if c.Resolve.UpstreamTimeout <= 0 {
		return c.invalid("resolve.upstream_timeout", -1, func(c Config) any { return c.Resolve.UpstreamTimeout },
			errors.New("must be positive"))
	}
	if c.Resolve.TagMaxAge < 0 {
		return c.invalid("resolve.tag_max_age", -1, func(c Config) any { return c.Resolve.TagMaxAge },
			errors.New("must not be negative"))
	}
	if c.Resolve.MaxFills <= 0 {
		return c.invalid("resolve.max_fills", -1, func(c Config) any { return c.Resolve.MaxFills },
			errors.New("must be positive"))
	}
	if c.Resolve.FillQueueTimeout <= 0 {
		return c.invalid("resolve.fill_queue_timeout", -1, func(c Config) any { return c.Resolve.FillQueueTimeout },
			errors.New("must be positive"))
	}
	if c.Resolve.MaxAbandonedFills <= 0 {
		return c.invalid("resolve.max_abandoned_fills", -1, func(c Config) any { return c.Resolve.MaxAbandonedFills },
			errors.New("must be positive"))
	}
	if c.Cache.VerifyBeforeSend < 0 {
		return c.invalid("cache.verify_before_send", -1, func(c Config) any { return c.Cache.VerifyBeforeSend },
			errors.New("must not be negative"))
	}
	if c.Cache.MaxBlobSize <= 0 {
		return c.invalid("cache.max_blob_size", -1, func(c Config) any { return c.Cache.MaxBlobSize },
			errors.New("must be positive"))
	}
	switch c.Resolve.OnDenied {
	case OnDeniedRefuse, OnDeniedServeStale:
	default:
		return c.invalid("resolve.on_denied", -1, func(c Config) any { return c.Resolve.OnDenied },
			fmt.Errorf("%q is not %q or %q", c.Resolve.OnDenied, OnDeniedRefuse, OnDeniedServeStale))
	}
	if c.Cache.MaxSize < 0 {
		return c.invalid("cache.max_size", -1, func(c Config) any { return c.Cache.MaxSize },
			errors.New("must not be negative"))
	}
	switch c.Plugin.ContentDelete {
	case "release", "remove":
	default:
		return c.invalid("plugin.content_delete", -1, func(c Config) any { return c.Plugin.ContentDelete },
			fmt.Errorf("%q is not \"release\" or \"remove\"", c.Plugin.ContentDelete))
	}
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "warning", "error", "fatal", "panic":
	default:
		return c.invalid("log.level", -1, func(c Config) any { return c.Log.Level },
			fmt.Errorf("%q is not one of trace, debug, info, warn, error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return c.invalid("log.format", -1, func(c Config) any { return c.Log.Format },
			fmt.Errorf("%q is not \"text\" or \"json\"", c.Log.Format))
	}
	if err := c.validateRegistries(); err != nil {
		return err
	}
	if c.Auth.DockerConfig != "" {
		if err := checkDockerConfig(c.Auth.DockerConfig); err != nil {
			return c.invalid("auth.docker_config", -1, func(c Config) any { return c.Auth.DockerConfig }, err)
		}
	}
	if err := c.validateOutage(); err != nil {
		return err
	}
	return c.validateCluster()
}

// validateRegistries checks mirror.registries and the [registry."<name>"] tables, in the order
// of their names.
func (c Config) validateRegistries() error {
	for i, name := range c.Mirror.Registries {
		if err := checkRegistryName(name); err != nil {
			return c.invalid("mirror.registries", i, func(c Config) any { return c.Mirror.Registries }, err)
		}
	}
	for _, host := range slices.Sorted(maps.Keys(c.Registry)) {
		if err := checkRegistryName(host); err != nil {
			return c.invalid(keyName("registry", host), -1, func(c Config) any { return slices.Sorted(maps.Keys(c.Registry)) }, err)
		}
		r := c.Registry[host]
		for i, e := range r.Endpoints {
			if !strings.HasPrefix(e, "https://") && !strings.HasPrefix(e, "http://") {
				return c.invalid(keyName("registry", host, "endpoints"), i, func(c Config) any { return c.Registry[host].Endpoints },
					fmt.Errorf("%q must start with https:// or http://", e))
			}
		}
		if r.CAFile != "" {
			if err := checkCAFile(r.CAFile); err != nil {
				return c.invalid(keyName("registry", host, "ca_file"), -1, func(c Config) any { return c.Registry[host].CAFile }, err)
			}
		}
	}
	return nil
}

// checkRegistryName checks that name is a registry host[:port] as image references write it,
// which is how the mirror and the resolver look registries up.
func checkRegistryName(name string) error {
	norm, ok := oci.NormalizeHost(name)
	switch {
	case !ok:
		return fmt.Errorf("%q is not a registry host[:port]", name)
	case norm != name:
		return fmt.Errorf("%q is written %q in image references: write that", name, norm)
	}
	return nil
}

// validateOutage checks [outage] as `lifeboat serve` will start it, with the outage package's
// own rules: outage.mode names a mode outage knows.
func (c Config) validateOutage() error {
	o := c.Outage
	getMode := func(c Config) any { return c.Outage.Mode }
	if o.Mode != "" {
		if err := (outage.Spec{Mode: o.Mode}).Validate(); err != nil {
			return c.invalid("outage.mode", -1, getMode, outageError(err))
		}
	}
	for i, r := range o.Registries {
		if err := (outage.Spec{Mode: outage.ModeDNS, Registries: []string{r}}).Validate(); err != nil {
			return c.invalid("outage.registries", i, func(c Config) any { return c.Outage.Registries }, outageError(err))
		}
	}
	if err := outage.ValidateTarget(o.Target); err != nil {
		return c.invalid("outage.target", -1, func(c Config) any { return c.Outage.Target }, outageError(err))
	}
	if o.For < 0 {
		return c.invalid("outage.for", -1, func(c Config) any { return c.Outage.For }, errors.New("must not be negative"))
	}
	if o.Mode != "" {
		// Whatever else Spec refuses of the whole.
		if err := o.Spec().Validate(); err != nil {
			return c.invalid("outage.mode", -1, getMode, outageError(err))
		}
	}
	return nil
}

// Spec is the outage [outage] asks `lifeboat serve` to simulate from start-up, when Mode is set.
func (o Outage) Spec() outage.Spec {
	return outage.Spec{Mode: o.Mode, Registries: o.Registries, For: time.Duration(o.For), Target: o.Target}
}

// nodeName is what a member name may be: host-name characters, 1 to 128 of them, starting
// with a letter or a digit (memberlist sends it in every message).
var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// validateCluster checks [cluster]. Its values are checked whether or not join is set, so a
// mistake shows before the tier is turned on; secret_file is required only with join.
func (c Config) validateCluster() error {
	cl := c.Cluster
	for i, j := range cl.Join {
		if err := checkHostPort(j, false); err != nil {
			return c.invalid("cluster.join", i, func(c Config) any { return c.Cluster.Join }, err)
		}
	}
	if err := checkHostPort(cl.GossipAddress, true); err != nil {
		return c.invalid("cluster.gossip_address", -1, func(c Config) any { return c.Cluster.GossipAddress }, err)
	}
	if host, _, _ := net.SplitHostPort(cl.GossipAddress); host != "" && net.ParseIP(host) == nil {
		return c.invalid("cluster.gossip_address", -1, func(c Config) any { return c.Cluster.GossipAddress },
			fmt.Errorf("%q: the host must be an IP address (memberlist binds it), such as 0.0.0.0", cl.GossipAddress))
	}
	if err := checkHostPort(cl.PeerAddress, true); err != nil {
		return c.invalid("cluster.peer_address", -1, func(c Config) any { return c.Cluster.PeerAddress }, err)
	}
	if a := cl.AdvertiseAddress; a != "" {
		if ip := net.ParseIP(a); ip == nil || ip.IsUnspecified() {
			return c.invalid("cluster.advertise_address", -1, func(c Config) any { return c.Cluster.AdvertiseAddress },
				fmt.Errorf("%q is not an IP address other nodes can reach (no port: the ports are gossip_address's and peer_address's)", a))
		}
	}
	if n := cl.NodeName; n != "" && !nodeName.MatchString(n) {
		return c.invalid("cluster.node_name", -1, func(c Config) any { return c.Cluster.NodeName },
			fmt.Errorf("%q: a node name is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or a digit", oci.Clip(n)))
	}
	if cl.Replicas < 1 || cl.Replicas > MaxReplicas {
		return c.invalid("cluster.replicas", -1, func(c Config) any { return c.Cluster.Replicas },
			fmt.Errorf("%d is not from 1 to %d", cl.Replicas, MaxReplicas))
	}
	if cl.MaxIndexSize < MinIndexSize {
		return c.invalid("cluster.max_index_size", -1, func(c Config) any { return c.Cluster.MaxIndexSize },
			errors.New("must be at least 1MiB: a home's index smaller than that would refuse an ordinary cluster's records"))
	}
	if d := time.Duration(cl.MaxClockSkew); d < time.Second || d > MaxClockSkewLimit {
		return c.invalid("cluster.max_clock_skew", -1, func(c Config) any { return c.Cluster.MaxClockSkew },
			fmt.Errorf("%s is not from 1s to %s: past that, a forged tag record dated ahead would win outages for as long", d, MaxClockSkewLimit))
	}
	if cl.Enabled() && cl.SecretFile == "" {
		return c.invalid("cluster.secret_file", -1, func(c Config) any { return c.Cluster.SecretFile },
			errors.New("must be set when cluster.join is: the cluster key authenticates and encrypts everything between nodes"))
	}
	return nil
}

// checkHostPort checks that addr is host:port with a port from 1 to 65535 (from 0 with
// listen, where 0 asks for any free port). The host may be empty only with listen.
func checkHostPort(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", oci.Clip(addr))
	}
	if host == "" && !listen {
		return fmt.Errorf("%q has no host: write host:port, such as 10.0.0.5:7946", oci.Clip(addr))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !listen) {
		return fmt.Errorf("%q: the port must be a number from 1 to 65535", oci.Clip(addr))
	}
	return nil
}

// outageError is an error of outage.Spec.Validate without its errdefs suffix, which *Error adds
// back as a wrapped error.
func outageError(err error) error {
	return errors.New(errmsg.Sentence(err))
}

// checkCAFile checks that path can be read and holds at least one PEM certificate, as the
// upstream client will need when it first reaches the registry.
func checkCAFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return readError(err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return fmt.Errorf("%s holds no PEM certificate", path)
	}
	return nil
}

// checkDockerConfig checks that the docker config.json at path, if it exists, can be read. A
// missing file is fine: it means no credentials, and `docker login` may write it later.
func checkDockerConfig(path string) error {
	if path == "~" || strings.HasPrefix(path, "~/") {
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("cannot expand %s: %v", path, err)
		}
		path = filepath.Join(home, strings.TrimPrefix(path, "~"))
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return readError(err)
	}
	defer f.Close()
	// Reading finds a directory, which opens fine.
	if _, err := f.Read(make([]byte, 1)); err != nil && !errors.Is(err, io.EOF) {
		return readError(err)
	}
	return nil
}

// readError says why a file cannot be read: "cannot read /etc/ca.pem: no such file or directory".
func readError(err error) error {
	var perr *fs.PathError
	if errors.As(err, &perr) {
		return fmt.Errorf("cannot read %s: %v", perr.Path, perr.Err)
	}
	return fmt.Errorf("cannot read it: %v", err)
}
