package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
)

// Defaults of `lifeboat drill`: containerd's own socket, and the namespace of Kubernetes' images.
const (
	defaultContainerdAddress   = "/run/containerd/containerd.sock"
	defaultContainerdNamespace = "k8s.io"
)

func newDrillCommand() *cobra.Command {
	var (
		f                                  clientFlags
		address, namespace, file, platform string
		fix                                bool
	)
	cmd := &cobra.Command{
		Use:   "drill",
		Short: "Check whether this node's images would pull through lifeboat during a registry outage",
		Long: `Check, for every image containerd has (or every image listed in a file), whether lifeboat
alone could serve a complete pull of it for this node's platform if every upstream registry were
down: the tag as lifeboat has it cached, the index, the platform's manifest, the config and every
layer. The check reads lifeboat's cache only: no upstream registry is contacted and the traffic of
the node is not affected.

Exits 0 when every image would pull, 1 otherwise. With --fix, lifeboat first fetches what is
missing from the upstreams (they must be up) and the table shows the state afterwards.

With the cluster tier on, SERVED BY says what could serve each image while the registry is down:
"this node", "peer <name>" (another lifeboat holds its manifest), or "nothing".`,
		Example: `  lifeboat drill
  lifeboat drill --namespace default --platform linux/arm64
  lifeboat drill --images images.txt --fix
  lifeboat drill --json | jq '.results[] | select(.ready | not) | .ref'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := platforms.Parse(platform); err != nil {
				return fmt.Errorf("--platform %q is not a platform such as linux/amd64", platform)
			}
			ctx := cmd.Context()
			var (
				refs  []string
				where string
				err   error
			)
			if file != "" {
				refs, err = readImageList(cmd.InOrStdin(), file)
				where = file
			} else {
				refs, err = containerdImages(ctx, address, namespace)
				where = fmt.Sprintf("containerd namespace %s", namespace)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(refs) == 0 {
				if f.json {
					return printJSON(out, admin.DrillReport{Platform: platform, Results: []admin.DrillResult{}})
				}
				_, err := fmt.Fprintf(out, "no images in %s: nothing to drill\n", where)
				return err
			}
			rep, err := f.client().Drill(ctx, admin.DrillRequest{Refs: refs, Platform: platform, Fix: fix})
			if err != nil {
				return err
			}
			if f.json {
				err = printJSON(out, rep)
			} else {
				err = printDrill(out, rep)
			}
			if err != nil {
				return err
			}
			if rep.Ready < rep.Total {
				return fmt.Errorf("%d of %d images would not pull during an outage", rep.Total-rep.Ready, rep.Total)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&address, "containerd-address", defaultContainerdAddress, "containerd's socket, to list the images to check")
	fl.StringVarP(&namespace, "namespace", "n", defaultContainerdNamespace, "the containerd namespace whose images are checked")
	fl.StringVar(&file, "images", "", "check the images listed in this file instead, one per line, # for comments (- for stdin)")
	fl.StringVar(&platform, "platform", platforms.DefaultString(), "the platform pulls are for")
	fl.BoolVar(&fix, "fix", false, "fetch what is missing from the upstreams first (they must be up)")
	f.register(cmd, true)
	return cmd
}

// readImageList reads image references, one a line; blank lines and what follows a # are
// ignored, and repeated references are listed once.
func readImageList(stdin io.Reader, path string) ([]string, error) {
	r := stdin
	if path != "-" {
		file, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("cannot read the image list: %w", err)
		}
		defer file.Close()
		r = file
	}
	var refs []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" && !slices.Contains(refs, line) {
			refs = append(refs, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the image list %s: %w", path, err)
	}
	return refs, nil
}

// containerdImages lists the images of a containerd namespace that are pulled by name.
func containerdImages(ctx context.Context, address, namespace string) ([]string, error) {
	if !strings.Contains(address, "://") {
		if _, err := os.Stat(address); err != nil {
			return nil, fmt.Errorf("containerd is not running at %s (no socket there; set --containerd-address, or list the images with --images)", address)
		}
	}
	c, err := client.New(address, client.WithDefaultNamespace(namespace), client.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("cannot connect to containerd at %s: %w", address, err)
	}
	defer c.Close()
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	imgs, err := c.ImageService().List(lctx)
	if err != nil {
		return nil, fmt.Errorf("cannot list the images of containerd at %s: %w", address, err)
	}
	return pullableNames(imgs), nil
}

// pullableNames returns the names of imgs that a pull could ask for, sorted. It leaves out
// image IDs ("sha256:..." names that CRI adds), names that are not registry references (ctr
// import can make those), and a "repo@digest" name when a "repo:tag" name of the same image is
// listed (CRI keeps both for every image it pulls).
func pullableNames(imgs []images.Image) []string {
	tagged := map[string]bool{} // "repo@digest" of every tagged name
	for _, img := range imgs {
		named, err := reference.ParseNormalizedNamed(img.Name)
		if err != nil {
			continue
		}
		if _, ok := named.(reference.Tagged); ok {
			tagged[named.Name()+"@"+img.Target.Digest.String()] = true
		}
	}
	var names []string
	for _, img := range imgs {
		if strings.HasPrefix(img.Name, "sha256:") {
			continue
		}
		named, err := reference.ParseNormalizedNamed(img.Name)
		if err != nil {
			continue
		}
		if c, ok := named.(reference.Canonical); ok {
			if _, isTagged := named.(reference.Tagged); !isTagged && tagged[named.Name()+"@"+c.Digest().String()] {
				continue
			}
		}
		names = append(names, img.Name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// maxMissingShown is how many missing items a row of the table shows.
const maxMissingShown = 2

var longDigest = regexp.MustCompile(`(sha256:[0-9a-f]{12})[0-9a-f]{52}`)

// printDrill prints the drill table and its summary.
func printDrill(w io.Writer, rep admin.DrillReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "IMAGE\tREADY\tMISSING\tBYTES MISSING"
	if rep.Cluster {
		head += "\tSERVED BY"
	}
	fmt.Fprintln(tw, head)
	for _, r := range rep.Results {
		ready, missing, bytes := "yes", "-", "-"
		switch {
		case r.Error != "":
			ready, missing = "error", r.Error
		case !r.Ready:
			ready = "no"
			shown := r.Missing[:min(len(r.Missing), maxMissingShown)]
			missing = longDigest.ReplaceAllString(strings.Join(shown, ", "), "$1…")
			if more := len(r.Missing) - len(shown); more > 0 {
				missing += fmt.Sprintf(", +%d more", more)
			}
			bytes = humanBytes(r.MissingBytes)
			if r.Partial {
				bytes = "unknown"
				if r.MissingBytes > 0 {
					bytes = humanBytes(r.MissingBytes) + "+"
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s", r.Ref, ready, missing, bytes)
		if rep.Cluster {
			fmt.Fprintf(tw, "\t%s", r.ServedBy)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rep.Results {
		if r.FixError != "" {
			fmt.Fprintf(w, "could not fetch what %s is missing: %s\n", r.Ref, r.FixError)
		}
	}
	_, err := fmt.Fprintf(w, "%d of %d images would pull during an outage\n", rep.Ready, rep.Total)
	if err != nil || !rep.Cluster {
		return err
	}
	fromPeers := 0
	for _, r := range rep.Results {
		if len(r.Peers) > 0 {
			fromPeers++
		}
	}
	_, err = fmt.Fprintf(w, "%d more a peer holds (it would pull from the cluster while the registry is down)\n", fromPeers)
	return err
}
