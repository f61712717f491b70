package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

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
	return cmd
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
