package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	)
	cmd := &cobra.Command{
		Use:   "containerd",
		Short: "Write hosts.toml files that send containerd's pulls through lifeboat",
		Long: `Write <hosts-dir>/<registry>/hosts.toml for each registry, with lifeboat's mirror first.

--fallback upstream (the default) keeps the registry as containerd's server, so that containerd
pulls directly when lifeboat is down or does not have an image. --fallback none makes lifeboat
the only way to the registry, for nodes that must pull only through it.

Files lifeboat did not write are left alone; running it again changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
				registries = defaultRegistries
			}
			out := cmd.OutOrStdout()
			for _, reg := range registries {
				if err := configureRegistry(out, hostsDir, reg, mirror, withFallback, dryRun); err != nil {
					return err
				}
			}
			if proxyPlugins {
				printProxyPlugins(out, socket)
			}
			fmt.Fprintf(out, "\nFor the Kubernetes CRI plugin, containerd's config must name the hosts directory:\n"+
				"  [plugins.\"io.containerd.cri.v1.images\".registry]\n    config_path = %q\n"+
				"(a single directory: through the transfer service a colon-separated list is not split).\n", hostsDir)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&hostsDir, "hosts-dir", "/etc/containerd/certs.d", "containerd's hosts directory")
	fl.StringSliceVar(&registries, "registry", nil, "registry to send through lifeboat (repeatable; default "+strings.Join(defaultRegistries, ", ")+")")
	fl.StringVar(&mirror, "mirror", "http://"+config.Default().Mirror.Address, "lifeboat's mirror address as containerd reaches it")
	fl.StringVar(&fallback, "fallback", "upstream", "upstream: containerd may go to the registry itself; none: only through lifeboat")
	fl.BoolVar(&proxyPlugins, "proxy-plugins", false, "also print the containerd config for lifeboat's proxy plugins")
	fl.StringVar(&socket, "socket", config.Default().Plugin.Address, "lifeboat's plugin socket, for --proxy-plugins")
	fl.BoolVar(&dryRun, "dry-run", false, "show what would change, change nothing")
	return cmd
}

func configureRegistry(out io.Writer, dir, reg, mirror string, fallback, dryRun bool) error {
	path := filepath.Join(dir, reg, hosts.FileName)
	want := hosts.Render(reg, mirror, fallback)
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		old = nil
	case err != nil:
		return err
	case bytes.Equal(old, want):
		fmt.Fprintf(out, "%s: unchanged\n", path)
		return nil
	case !hosts.Manages(old, mirror):
		fmt.Fprintf(out, "%s: left alone (it exists and does not point at %s; edit it by hand or remove it)\n", path, mirror)
		return nil
	}
	if dryRun {
		fmt.Fprintf(out, "--- %s\n+++ %s (would be written)\n", path, path)
		for _, l := range strings.Split(strings.TrimSuffix(string(old), "\n"), "\n") {
			if l != "" || len(old) > 0 {
				fmt.Fprintf(out, "-%s\n", l)
			}
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(want), "\n"), "\n") {
			fmt.Fprintf(out, "+%s\n", l)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".lifeboat-tmp"
	if err := os.WriteFile(tmp, want, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	verb := "written"
	if old != nil {
		verb = "updated"
	}
	fmt.Fprintf(out, "%s: %s\n", path, verb)
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
