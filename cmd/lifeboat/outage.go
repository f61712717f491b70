package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/outage"
)

func newOutageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "outage",
		Short: "Simulate an upstream registry outage (start, stop, status)",
		Long: `Simulate an upstream registry outage inside lifeboat's upstream traffic, so that its health
tracking, circuit breaker and stale serving work exactly as in a real one. Modes: dns, refused,
blackhole, reset, http-<status> (http-503, http-429, ...), slow, flaky.

With --hosts-dir, the hosts.toml files lifeboat manages there are switched to lifeboat-only for the
length of the outage, so that containerd cannot go around lifeboat to the real upstream, and are
restored when it ends (stop, expiry, or the next daemon start after a crash).

With the cluster tier on, --target peers cuts this node's traffic to the other lifeboats instead
(index lookups and transfers), and --target all cuts both: "registry down, peers up" and
"everything down".`,
	}
	cmd.AddCommand(newOutageStartCommand(), newOutageStopCommand(), newOutageStatusCommand())
	return cmd
}

func newOutageStartCommand() *cobra.Command {
	var (
		f        clientFlags
		spec     outage.Spec
		rate     string
		hostsDir string
	)
	cmd := &cobra.Command{
		Use:   "start --mode MODE",
		Short: "Start (or replace) a simulated outage; returns once it is in force",
		Example: `  lifeboat outage start --mode blackhole --hosts-dir /etc/containerd/certs.d
  lifeboat outage start --mode http-503 --registry docker.io --for 10m
  lifeboat outage start --mode slow --latency 2s --rate 100KiB/s
  lifeboat outage start --mode flaky --fail-ratio 0.3 --seed 42
  lifeboat outage start --mode blackhole --target peers
  lifeboat outage start --mode blackhole --target all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rate != "" {
				r, err := outage.ParseRate(rate)
				if err != nil {
					return err
				}
				spec.Rate = r
			}
			if err := spec.Validate(); err != nil {
				return err
			}
			if hostsDir != "" {
				// The daemon resolves paths against its own working directory, not ours.
				abs, err := filepath.Abs(hostsDir)
				if err != nil {
					return err
				}
				hostsDir = abs
			}
			res, err := f.client().StartOutage(cmd.Context(), admin.OutageRequest{Spec: spec, HostsDir: hostsDir})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				return printJSON(out, res)
			}
			if res.Previous.Active {
				fmt.Fprintf(out, "replaced the outage that was running: %s\n", describeOutage(res.Previous))
			}
			fmt.Fprintf(out, "outage started: %s\n", describeOutage(res.Current))
			if len(res.HostsSwitched) > 0 {
				fmt.Fprintf(out, "hosts.toml switched to lifeboat-only for: %s\n", strings.Join(res.HostsSwitched, ", "))
			} else if hostsDir != "" {
				fmt.Fprintf(out, "no hosts.toml in %s points at this lifeboat: nothing switched\n", hostsDir)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&spec.Mode, "mode", "", "dns, refused, blackhole, reset, http-<status>, slow or flaky (required)")
	fl.StringSliceVar(&spec.Registries, "registry", nil, "limit the outage to this registry (repeatable; default: every registry)")
	fl.StringSliceVar(&spec.Repos, "repo", nil, "limit the outage to repositories matching this glob, e.g. 'library/*' (repeatable)")
	fl.DurationVar(&spec.For, "for", 0, "end the outage after this long (default: until stopped)")
	fl.DurationVar(&spec.Latency, "latency", 0, "slow: latency added to each upstream request")
	fl.StringVar(&rate, "rate", "", "slow: cap on upstream body bytes per second, e.g. 100KiB/s")
	fl.Float64Var(&spec.FailRatio, "fail-ratio", 0, "flaky: fraction of upstream requests that fail (default 0.3)")
	fl.StringVar(&spec.FailMode, "fail-mode", "", "flaky: the mode a failing request gets (default: a random one)")
	fl.Int64Var(&spec.Seed, "seed", 0, "flaky: random seed, to repeat a run")
	fl.StringVar(&spec.Target, "target", outage.TargetUpstream, "the traffic cut: upstream (the registries), peers (the other lifeboats of the cluster) or all")
	fl.StringVar(&hostsDir, "hosts-dir", "", "containerd's hosts directory: switch the hosts.toml files lifeboat manages to lifeboat-only for the outage")
	cmd.MarkFlagRequired("mode")
	f.register(cmd, true)
	return cmd
}

func newOutageStopCommand() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "End the simulated outage; returns once upstream traffic is normal and hosts.toml files are restored",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := f.client().StopOutage(cmd.Context())
			if errdefs.IsNotFound(err) {
				return errors.New("no outage is being simulated")
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				return printJSON(out, res)
			}
			fmt.Fprintf(out, "outage stopped: %s\n", describeOutage(res.Previous))
			if len(res.HostsRestored) > 0 {
				fmt.Fprintf(out, "hosts.toml restored for: %s\n", strings.Join(res.HostsRestored, ", "))
			}
			return nil
		},
	}
	f.register(cmd, true)
	return cmd
}

func newOutageStatusCommand() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the simulated outage, if any",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), st.Outage)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), describeOutage(st.Outage))
			return err
		},
	}
	f.register(cmd, true)
	return cmd
}

// describeOutage is one line: mode, scope, since, time left, requests affected.
func describeOutage(st outage.Status) string {
	if !st.Active && st.Spec.Mode == "" {
		return "none"
	}
	var b strings.Builder
	b.WriteString(st.Spec.Mode)
	scope := "every registry"
	if len(st.Spec.Registries) > 0 {
		scope = strings.Join(st.Spec.Registries, ", ")
	}
	if len(st.Spec.Repos) > 0 {
		scope += " (repositories " + strings.Join(st.Spec.Repos, ", ") + ")"
	}
	fmt.Fprintf(&b, " on %s", scope)
	switch st.Spec.Target {
	case outage.TargetPeers:
		b.WriteString(", cutting peers only")
	case outage.TargetAll:
		b.WriteString(", cutting registries and peers")
	}
	if !st.Since.IsZero() {
		fmt.Fprintf(&b, ", since %s", st.Since.Format(time.RFC3339))
	}
	if !st.Until.IsZero() && st.Active {
		fmt.Fprintf(&b, ", %s left", time.Until(st.Until).Round(time.Second))
	}
	fmt.Fprintf(&b, ", %d requests affected", st.Affected)
	if !st.Active {
		b.WriteString(" (ended)")
	}
	return b.String()
}
