package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
)

func newGCCommand() *cobra.Command {
	var (
		f      cacheFlags
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Evict least recently used images now, down to the cache's low watermark",
		Long: `Run an eviction pass now, as lifeboat does on its own once the cache passes its high
watermark: least recently used images first, until the cache is down to its low watermark (85% of
the budget). Pinned images, what they reach, and blobs in use are kept. Blobs no image reaches
(after lifeboat rm) are evicted by their own last use.

Works without the daemon too, on the data root directly.`,
		Example: `  lifeboat gc --dry-run
  lifeboat gc --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.withCache(cmd, func(api cacheAPI) error {
				rep, err := api.GC(cmd.Context(), admin.GCRequest{DryRun: dryRun})
				if err != nil {
					return err
				}
				if f.json {
					return printJSON(cmd.OutOrStdout(), rep)
				}
				return printGC(cmd.OutOrStdout(), rep)
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be evicted, and evict nothing")
	f.register(cmd)
	return cmd
}

// printGC says what an eviction pass removed, or would remove.
func printGC(w io.Writer, rep admin.GCReport) error {
	if len(rep.Refs) == 0 && len(rep.Blobs) == 0 {
		_, err := fmt.Fprintf(w, "nothing to evict: the cache holds %s, within its target of %s (budget %s)\n",
			humanBytes(rep.UsedBytes), humanBytes(rep.TargetBytes), humanBytes(rep.BudgetBytes))
		return err
	}
	verb, freed, holds := "evicted", "freed", "holds"
	if rep.DryRun {
		verb, freed, holds = "would evict", "would free", "would hold"
	}
	for _, ref := range rep.Refs {
		fmt.Fprintf(w, "%s %s\n", verb, ref)
	}
	fmt.Fprintf(w, "%s %s in %s (%s)\n", freed, humanBytes(rep.Bytes), countNoun(len(rep.Blobs), "blob"), countNoun(len(rep.Refs), "image"))
	used := rep.UsedBytes
	if rep.DryRun {
		used -= rep.Bytes
	}
	_, err := fmt.Fprintf(w, "the cache %s %s of its %s budget (target %s)\n", holds, humanBytes(used), humanBytes(rep.BudgetBytes), humanBytes(rep.TargetBytes))
	if err == nil && used > rep.TargetBytes {
		_, err = fmt.Fprintln(w, "it stays above the target: the rest is pinned or in use")
	}
	return err
}

// countNoun is "1 blob", "3 blobs".
func countNoun(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
