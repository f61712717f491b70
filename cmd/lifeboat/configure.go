package main

import (
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/containerd/platforms"
	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/hosts"
)

// defaultRegistries are configured when no --registry is given.
var defaultRegistries = []string{"docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io"}

func newConfigureCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "configure",
		Short: "Point other software at lifeboat",
	}
	cmd.AddCommand(newConfigureContainerdCommand())
	return cmd
}

func newConfigureContainerdCommand() *cobra.Command {
	var (
		hostsDir     string
		registries   []string
		mirror       string
		fallback     string
		proxyPlugins bool
		dryRun       bool
		socket       string
		cfgFile      configFile
	)
	cmd := &cobra.Command{
		Use:   "containerd",
		Short: "Write hosts.toml files that send containerd's pulls through lifeboat",
		Long: `Write <hosts-dir>/<registry>/hosts.toml for each registry, with lifeboat's mirror first.

--fallback upstream (the default) keeps the registry as containerd's server, so that containerd
pulls directly when lifeboat is down or does not have an image. --fallback none makes lifeboat
the only way to the registry, for nodes that must pull only through it.

lifeboat replaces only the hosts.toml files it wrote (they have a line beginning with
"` + hosts.Marker + `"), whatever they point at. A file without that line is never replaced: the
command names it, configures the other registries, and exits non-zero. Running it again changes
nothing. --dry-run prints a unified diff of each file it would write.

While an outage drill started with --hosts-dir has a registry's hosts.toml switched, the command
changes nothing and exits non-zero: the drill puts the original file back when it ends, which
would undo what it wrote. Run "lifeboat outage stop", then this command again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The mirror and the socket are the configuration's, as serve listens on them,
			// unless a flag says otherwise.
			cfg, err := cfgFile.load(cmd)
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("mirror") {
				mirror = reachable(cfg.Mirror.Address)
			}
			if !cmd.Flags().Changed("socket") {
				socket = cfg.Plugin.Address
			}
			var withFallback bool
			switch fallback {
			case "upstream":
				withFallback = true
			case "none":
			default:
				return fmt.Errorf("--fallback %q: use upstream or none", fallback)
			}
			if !strings.HasPrefix(mirror, "http://") && !strings.HasPrefix(mirror, "https://") {
				mirror = "http://" + mirror
			}
			if len(registries) == 0 {
				if cmd.Flags().Changed("registry") {
					return fmt.Errorf("--registry is empty: name a registry, such as docker.io")
				}
				registries = defaultRegistries
			}
			// Every registry is planned before any file is written: a bad name, or a drill
			// holding a file, changes nothing.
			changes, err := planRegistries(hostsDir, registries, mirror, withFallback)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var skipped []string
			for _, c := range changes {
				if err := configureRegistry(out, c, mirror, dryRun); err != nil {
					return err
				}
				if c.Action == hosts.Skip {
					skipped = append(skipped, c.Path)
				}
			}
			if proxyPlugins {
				printProxyPlugins(out, socket)
			}
			fmt.Fprintf(out, "\nFor the Kubernetes CRI plugin, containerd's config must name the hosts directory:\n"+
				"  [plugins.\"io.containerd.cri.v1.images\".registry]\n    config_path = %q\n"+
				"(a single directory: through the transfer service a colon-separated list is not split).\n", hostsDir)
			if len(skipped) > 0 {
				return fmt.Errorf("%d of %d registries not configured, as lifeboat does not replace a hosts.toml it did not write: %s (see above)",
					len(skipped), len(registries), strings.Join(skipped, ", "))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&hostsDir, "hosts-dir", "/etc/containerd/certs.d", "containerd's hosts directory")
	fl.StringSliceVar(&registries, "registry", nil, "registry to send through lifeboat (repeatable; default "+strings.Join(defaultRegistries, ", ")+")")
	fl.StringVar(&mirror, "mirror", "http://"+config.Default().Mirror.Address, "lifeboat's mirror address as containerd reaches it (default: [mirror] address from --config)")
	fl.StringVar(&fallback, "fallback", "upstream", "upstream: containerd may go to the registry itself; none: only through lifeboat")
	fl.BoolVar(&proxyPlugins, "proxy-plugins", false, "also print the containerd config for lifeboat's proxy plugins")
	fl.StringVar(&socket, "socket", config.Default().Plugin.Address, "lifeboat's plugin socket, for --proxy-plugins (default: [plugin] address from --config)")
	cfgFile.register(cmd, "configuration file to take the mirror address and the plugin socket from (env LIFEBOAT_CONFIG)")
	fl.BoolVar(&dryRun, "dry-run", false, "show what would change, change nothing")
	return cmd
}

// reachable is the URL containerd reaches a mirror listening on addr at: a mirror listening on
// every address (":5100", "0.0.0.0:5100") is reached on loopback.
func reachable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// planRegistries plans the hosts.toml of each registry under dir. It fails, with one sentence,
// on a name that is not a registry's and when an outage drill holds any of the files.
func planRegistries(dir string, registries []string, mirror string, fallback bool) ([]hosts.Change, error) {
	var changes []hosts.Change
	var held []string
	for _, reg := range registries {
		c, err := hosts.Plan(dir, reg, mirror, fallback)
		if err != nil {
			return nil, fmt.Errorf("--registry %w", err)
		}
		if c.Action == hosts.Held {
			held = append(held, c.Path)
		}
		changes = append(changes, c)
	}
	if len(held) > 0 {
		return nil, fmt.Errorf("nothing was changed: an outage drill has switched %s until it ends, when it puts the originals back; "+
			"run \"lifeboat outage stop\" first, then this command again", strings.Join(held, ", "))
	}
	return changes, nil
}

// configureRegistry writes (or with dryRun, prints the diff of) the hosts.toml of one registry
// as planned and reports what it did.
func configureRegistry(out io.Writer, c hosts.Change, mirror string, dryRun bool) error {
	switch c.Action {
	case hosts.Unchanged:
		fmt.Fprintf(out, "%s: unchanged\n", c.Path)
		return nil
	case hosts.Skip:
		also := ""
		if hosts.Manages(c.Current, mirror) {
			also = fmt.Sprintf(" (it already sends pulls to %s)", mirror)
		}
		fmt.Fprintf(out, "%s: left alone: lifeboat did not write it%s, as it has no line beginning with %q; "+
			"to let lifeboat manage it, remove the file or add that line at its top, then run this again\n",
			c.Path, also, hosts.Marker)
		return nil
	}
	if dryRun {
		fmt.Fprint(out, c.Diff())
		return nil
	}
	if err := c.Apply(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: %s\n", c.Path, c.Action)
	return nil
}

func printProxyPlugins(out io.Writer, socket string) {
	fmt.Fprintf(out, `
Add to containerd's config (version 3) for lifeboat's proxy plugins:

disabled_plugins = ["io.containerd.content.v1.content"]   # only with the content plugin

[proxy_plugins.lifeboat]
  type = "snapshot"
  address = %[1]q
  [proxy_plugins.lifeboat.exports]
    enable_remote_snapshot_annotations = "true"

[proxy_plugins.lifeboat-content]        # any name but "content"
  type = "content"
  address = %[1]q

# For the transfer service (ctr image pull, and the CRI plugin since containerd 2.1) to unpack
# with lifeboat's snapshotter, and send it the layer labels it applies cached layers with.
# A configured unpack_config replaces containerd's default one: keep overlayfs listed.
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[2]q
  snapshotter = "overlayfs"
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[2]q
  snapshotter = "lifeboat"

Then pull with --snapshotter lifeboat, or set the CRI plugin's snapshotter to "lifeboat".
`, socket, platforms.DefaultString())
}
