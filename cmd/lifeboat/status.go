package main

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newStatusCommand() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's cache, upstream health and outage simulation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				return printJSON(out, st)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "version\t%s\n", st.Version)
			fmt.Fprintf(tw, "uptime\t%s\n", st.Uptime)
			fmt.Fprintf(tw, "root\t%s\n", st.Root)
			pct := 0.0
			if st.Cache.BudgetBytes > 0 {
				pct = 100 * float64(st.Cache.UsedBytes) / float64(st.Cache.BudgetBytes)
			}
			fmt.Fprintf(tw, "cache\t%s of %s (%.0f%%), %d blobs evicted\n", humanBytes(st.Cache.UsedBytes), humanBytes(st.Cache.BudgetBytes), pct, st.Cache.Evictions)
			fmt.Fprintf(tw, "outage\t%s\n", describeOutage(st.Outage))
			names := make([]string, 0, len(st.Listeners))
			for k := range st.Listeners {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				fmt.Fprintf(tw, "%s\t%s\n", k, st.Listeners[k])
			}
			tw.Flush()
			if len(st.Endpoints) > 0 {
				fmt.Fprintln(out)
				tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "REGISTRY\tENDPOINT\tSTATE\tSINCE\tLAST ERROR")
				for _, e := range st.Endpoints {
					state := "up"
					if !e.Up {
						state = "down"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Registry, e.Endpoint, state, e.Since.Format(time.RFC3339), strings.ReplaceAll(e.LastError, "\n", " "))
				}
				tw.Flush()
			}
			return nil
		},
	}
	f.register(cmd, true)
	return cmd
}
