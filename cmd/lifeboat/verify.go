package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
)

func newVerifyCommand() *cobra.Command {
	var (
		f      cacheFlags
		repair bool
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every cached blob against its digest",
		Long: `Read every cached blob and check it against its digest. Exits 1 if a blob is corrupt or
missing. With --repair, corrupt blobs are moved to the quarantine directory of the data root and
they and the missing ones are dropped from the index, so that the next pull fetches them again;
it still exits 1, since the cache was damaged.

Works without the daemon too, on the data root directly.`,
		Example: `  lifeboat verify
  lifeboat verify --repair`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.withCache(cmd, func(api cacheAPI) error {
				rep, err := api.Verify(cmd.Context(), admin.VerifyRequest{Repair: repair})
				if err != nil {
					return err
				}
				if f.json {
					err = printJSON(cmd.OutOrStdout(), rep)
				} else {
					err = printVerify(cmd.OutOrStdout(), rep)
				}
				if err != nil {
					return err
				}
				return verifyError(rep)
			})
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "quarantine corrupt blobs and drop them and missing ones from the index")
	f.register(cmd)
	return cmd
}

// printVerify prints what verify found.
func printVerify(w io.Writer, rep cache.VerifyReport) error {
	fmt.Fprintf(w, "checked %s (%s): %d corrupt, %d missing\n", countNoun(rep.Checked, "blob"), humanBytes(rep.Bytes), len(rep.Corrupt), len(rep.Missing))
	for _, d := range rep.Corrupt {
		fmt.Fprintf(w, "corrupt %s\n", d)
	}
	for _, d := range rep.Missing {
		fmt.Fprintf(w, "missing %s\n", d)
	}
	if rep.Repaired && len(rep.Corrupt)+len(rep.Missing) > 0 {
		_, err := fmt.Fprintln(w, "repaired: corrupt blobs are quarantined and dropped from the index with the missing ones; the next pull fetches them again")
		return err
	}
	return nil
}

// verifyError is the error verify exits with: nil when every blob is sound.
func verifyError(rep cache.VerifyReport) error {
	bad := len(rep.Corrupt) + len(rep.Missing)
	switch {
	case bad == 0:
		return nil
	case rep.Repaired:
		return fmt.Errorf("found %d corrupt and %d missing blobs, and repaired the cache", len(rep.Corrupt), len(rep.Missing))
	}
	return fmt.Errorf("found %d corrupt and %d missing blobs; lifeboat verify --repair removes them so that they are fetched again", len(rep.Corrupt), len(rep.Missing))
}
