package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/daemon"
	"github.com/lifeboat-dev/lifeboat/outage"
)

// shutdownGrace bounds how long in-flight requests may take to finish on SIGTERM.
const shutdownGrace = 10 * time.Second

type serveFlags struct {
	configPath     string
	root           string
	listen         string
	socket         string
	adminSocket    string
	metricsAddress string
	logLevel       string
	logFormat      string
	simulate       string
}

func newServeCommand() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the lifeboat daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadServeConfig(cmd, f)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, shutdownGrace)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.configPath, "config", config.DefaultPath, "configuration file")
	fl.StringVar(&f.root, "root", "", "data directory (default from config: /var/lib/lifeboat)")
	fl.StringVar(&f.listen, "listen", "", "registry mirror address (default 127.0.0.1:5100)")
	fl.StringVar(&f.socket, "socket", "", "containerd proxy plugin socket (default /run/lifeboat/lifeboat.sock)")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "admin socket for the lifeboat CLI (default /run/lifeboat/admin.sock)")
	fl.StringVar(&f.metricsAddress, "metrics-address", "", "Prometheus metrics address, empty string to disable (default 127.0.0.1:5101)")
	fl.StringVar(&f.logLevel, "log-level", "", "log level: trace, debug, info, warn, error (default info)")
	fl.StringVar(&f.logFormat, "log-format", "", "log format: text or json (default text)")
	fl.StringVar(&f.simulate, "simulate-outage", "", "start with a simulated upstream outage of this `mode` (dns, refused, blackhole, reset, http-<status>, slow, flaky)")
	registerClusterFlags(fl)
	return cmd
}

// The serve flags of [cluster]: --cluster-<key with dashes>, each with its variable
// LIFEBOAT_CLUSTER_<KEY>.
const (
	flagClusterJoin      = "cluster-join"
	flagClusterGossip    = "cluster-gossip-address"
	flagClusterPeer      = "cluster-peer-address"
	flagClusterAdvertise = "cluster-advertise-address"
	flagClusterNodeName  = "cluster-node-name"
	flagClusterSecret    = "cluster-secret-file"
	flagClusterReplicas  = "cluster-replicas"
	flagClusterCoalesce  = "cluster-coalesce"
)

func registerClusterFlags(fl *pflag.FlagSet) {
	fl.String(flagClusterJoin, "", "join the cluster of lifeboats through these `host:port`s, comma-separated; turns the cluster tier on")
	fl.String(flagClusterGossip, "", "cluster membership (gossip) address, TCP and UDP (default 0.0.0.0:7946)")
	fl.String(flagClusterPeer, "", "address of the peer listener the other lifeboats pull from (default 0.0.0.0:5102)")
	fl.String(flagClusterAdvertise, "", "the IP the other lifeboats reach this one at (default: the gossip address's IP, else the first non-loopback address)")
	fl.String(flagClusterNodeName, "", "this node's unique member name (default: the host name)")
	fl.String(flagClusterSecret, "", "the cluster key file, 32 random bytes in base64 (default /etc/lifeboat/cluster.key)")
	fl.Int(flagClusterReplicas, 0, "how many home nodes index each key, 1 to 16 (default 3)")
	fl.Bool(flagClusterCoalesce, true, "fetch a blob no node holds through its home, once for the whole cluster")
}

// applyClusterFlags sets the [cluster] keys that a flag, or else its variable, sets. A flag
// wins over its variable; a variable set to "" counts as unset.
func applyClusterFlags(cmd *cobra.Command, c *config.Cluster) error {
	value := func(name string) (string, string, bool) {
		if fl := cmd.Flags().Lookup(name); fl != nil && fl.Changed {
			return fl.Value.String(), "--" + name, true
		}
		v, ok := serveEnv(name)
		return v, envName(name), ok
	}
	str := func(name string, dst *string) {
		if v, _, ok := value(name); ok {
			*dst = v
		}
	}
	if v, _, ok := value(flagClusterJoin); ok {
		c.Join = nil
		for j := range strings.SplitSeq(v, ",") {
			if j = strings.TrimSpace(j); j != "" {
				c.Join = append(c.Join, j)
			}
		}
	}
	str(flagClusterGossip, &c.GossipAddress)
	str(flagClusterPeer, &c.PeerAddress)
	str(flagClusterAdvertise, &c.AdvertiseAddress)
	str(flagClusterNodeName, &c.NodeName)
	str(flagClusterSecret, &c.SecretFile)
	if v, where, ok := value(flagClusterReplicas); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%s %q is not a number of replicas (1 to %d)", where, v, config.MaxReplicas)
		}
		c.Replicas = n
	}
	if v, where, ok := value(flagClusterCoalesce); ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%s %q is not true or false", where, v)
		}
		c.Coalesce = b
	}
	return nil
}

// loadServeConfig reads the config file and applies the flags that were set on top of it.
//
// Each flag also has an environment variable, LIFEBOAT_ and the flag's name in capitals with
// underscores (LIFEBOAT_ROOT, LIFEBOAT_LISTEN, LIFEBOAT_CONFIG, ...): a flag wins over its
// variable, which wins over the config file, which wins over the defaults. A variable set to
// "" counts as unset (as a template that fills in nothing leaves it), except
// LIFEBOAT_METRICS_ADDRESS, where "" turns metrics off as it does in the file.
func loadServeConfig(cmd *cobra.Command, f serveFlags) (config.Config, error) {
	explicit := cmd.Flags().Changed("config")
	if v, ok := serveEnv("config"); ok && !explicit {
		f.configPath, explicit = v, true
	}
	cfg, err := config.Load(f.configPath, explicit)
	if err != nil {
		return cfg, err
	}
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		} else if ev, ok := serveEnv(name); ok {
			*dst = ev
		}
	}
	set("root", &cfg.Root, f.root)
	set("listen", &cfg.Mirror.Address, f.listen)
	set("socket", &cfg.Plugin.Address, f.socket)
	set("admin-socket", &cfg.Admin.Address, f.adminSocket)
	set("metrics-address", &cfg.Metrics.Address, f.metricsAddress)
	set("log-level", &cfg.Log.Level, f.logLevel)
	set("log-format", &cfg.Log.Format, f.logFormat)
	set("simulate-outage", &cfg.Outage.Mode, f.simulate)
	if err := applyClusterFlags(cmd, &cfg.Cluster); err != nil {
		return cfg, err
	}
	if err := checkOutageMode(cmd, cfg.Outage.Mode, f.configPath); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// checkOutageMode refuses an outage mode that is not one, in a sentence naming where it was
// set: --simulate-outage, its environment variable, or [outage] mode in the file at path.
func checkOutageMode(cmd *cobra.Command, mode, path string) error {
	if mode == "" || (outage.Spec{Mode: mode}).Validate() == nil {
		return nil
	}
	what := fmt.Sprintf("outage.mode %q in %s", mode, path)
	if cmd.Flags().Changed("simulate-outage") {
		what = fmt.Sprintf("--simulate-outage %q", mode)
	} else if _, ok := serveEnv("simulate-outage"); ok {
		what = fmt.Sprintf("%s=%q", envName("simulate-outage"), mode)
	}
	return fmt.Errorf("%s is not an outage mode; the modes are %s", what, outage.ListModes(" and "))
}

// serveEnv returns the value of the environment variable of the serve flag name, and whether
// it counts as set: an empty value does not, but for metrics-address.
func serveEnv(name string) (string, bool) {
	v, ok := os.LookupEnv(envName(name))
	if v == "" && name != "metrics-address" {
		return "", false
	}
	return v, ok
}

// envName is the environment variable of a serve flag: "metrics-address" → LIFEBOAT_METRICS_ADDRESS.
func envName(flag string) string {
	return "LIFEBOAT_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// serve runs the daemon until ctx is cancelled (SIGINT or SIGTERM), then stops it as
// daemon.Daemon.Run does, letting requests in flight finish for up to grace.
func serve(ctx context.Context, cfg config.Config, grace time.Duration) error {
	if err := daemon.SetupLogging(cfg.Log); err != nil {
		return err
	}
	d, err := daemon.New(ctx, cfg, daemon.Options{Version: version, Grace: grace})
	if err != nil {
		return err
	}
	return d.Run(ctx)
}
