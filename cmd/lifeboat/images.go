package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
)

func newImagesCommand() *cobra.Command {
	var (
		f        cacheFlags
		quiet    bool
		platform string
	)
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List the cached images",
		Long: `List the images in the cache: each cached ref, the digest it resolves to, its platforms, the
bytes of cached content it reaches, when it was last used, whether it is pinned, and whether it is
complete (everything a pull for this node's platform needs is cached, so it would pull during an
upstream outage). Listing does not count as a use of the images. With the cluster tier on, PEERS
names the other lifeboats that hold each image's manifest.

Works without the daemon too, reading the data root directly.`,
		Example: `  lifeboat images
  lifeboat images --quiet
  lifeboat images --json | jq '.images[] | select(.complete | not) | .ref'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.withCache(cmd, func(api cacheAPI) error {
				rep, err := api.Images(cmd.Context(), admin.ImagesRequest{Platform: platform})
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				switch {
				case f.json:
					return printJSON(out, rep)
				case quiet:
					for _, img := range rep.Images {
						fmt.Fprintln(out, img.Ref)
					}
					return nil
				}
				return printImages(out, rep, time.Now())
			})
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the refs only")
	cmd.Flags().StringVar(&platform, "platform", "", "judge COMPLETE for this platform (default: this node's)")
	f.register(cmd)
	return cmd
}

// printImages prints the images table.
func printImages(w io.Writer, rep admin.ImagesReport, now time.Time) error {
	if len(rep.Images) == 0 {
		_, err := fmt.Fprintln(w, "no images are cached")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "REF\tDIGEST\tPLATFORMS\tSIZE\tLAST USED\tPINNED\tCOMPLETE"
	if rep.Cluster {
		head += "\tPEERS"
	}
	fmt.Fprintln(tw, head)
	for _, img := range rep.Images {
		plats := "-"
		if len(img.Platforms) > 0 {
			plats = strings.Join(img.Platforms, ",")
		}
		complete := yesOrNo(img.Complete)
		if img.Error != "" {
			complete = "error"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s", img.Ref, abbrevDigest(img.Digest), plats, humanBytes(img.Size), humanAgo(img.LastUsed, now), yesOrNo(img.Pinned), complete)
		if rep.Cluster {
			fmt.Fprintf(tw, "\t%s", describePeers(img.Peers))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, img := range rep.Images {
		if img.Error != "" {
			fmt.Fprintf(w, "cannot inspect %s: %s\n", img.Ref, img.Error)
		}
	}
	return nil
}

func yesOrNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// abbrevDigest is "sha256:" and the first 12 hex digits.
func abbrevDigest(d digest.Digest) string {
	if d.Validate() != nil {
		return string(d)
	}
	enc := d.Encoded()
	return d.Algorithm().String() + ":" + enc[:min(len(enc), 12)]
}

// humanAgo says how long before now t was: "3 minutes ago", "-" for never.
func humanAgo(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return units.HumanDuration(d) + " ago"
}

// maxPeersShown is how many peers a row of the images table names.
const maxPeersShown = 3

// describePeers names the peers that hold an image: "node-b, node-c, +4 more"; "-" for none,
// "?" when the cluster could not tell in time.
func describePeers(peers []string) string {
	switch {
	case peers == nil:
		return "?"
	case len(peers) == 0:
		return "-"
	}
	s := strings.Join(peers[:min(len(peers), maxPeersShown)], ", ")
	if more := len(peers) - maxPeersShown; more > 0 {
		s += fmt.Sprintf(", +%d more", more)
	}
	return s
}
