package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containerd/platforms"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/plan"
)

// pullFlags are the flags of pull and warm.
type pullFlags struct {
	clientFlags
	platform string
	all      bool
}

func (f *pullFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.platform, "platform", platforms.DefaultString(), "the platform to fetch")
	cmd.Flags().BoolVar(&f.all, "all-platforms", false, "fetch every platform of a multi-platform image")
	f.clientFlags.register(cmd, true)
}

const pullLong = `Fetch images into the cache through the daemon, several at a time, so that they pull from
lifeboat even when their registry is down: the tag, the index, the manifest for this node's
platform (another with --platform, every one with --all-platforms), the config and the layers.
What is cached already is not fetched again, so a pull that was interrupted resumes where it
stopped when run again.

On a terminal, each image shows a live line with its progress, rate and time left; otherwise each
prints one line when it is done. Exits 1 if any image failed.`

func newPullCommand() *cobra.Command {
	var f pullFlags
	cmd := &cobra.Command{
		Use:   "pull REF...",
		Short: "Fetch images into the cache",
		Long:  pullLong,
		Example: `  lifeboat pull alpine:3.20 ghcr.io/org/app:v1
  lifeboat pull --platform linux/arm64 nginx:1.27
  lifeboat pull --all-platforms busybox`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPull(cmd, &f, args, "")
		},
	}
	f.register(cmd)
	return cmd
}

func newWarmCommand() *cobra.Command {
	var (
		f    pullFlags
		file string
	)
	cmd := &cobra.Command{
		Use:   "warm -f FILE",
		Short: "Fetch the images listed in a file into the cache",
		Long:  pullLong + "\n\nThe file lists one image a line; blank lines and what follows a # are ignored; - is stdin.",
		Example: `  lifeboat warm -f /etc/lifeboat/images.txt
  crictl images -o json | jq -r '.images[].repoTags[]' | lifeboat warm -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			refs, err := readImageList(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			return runPull(cmd, &f, refs, file)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the image list, one per line, # for comments (- for stdin) (required)")
	cmd.MarkFlagRequired("file")
	f.register(cmd)
	return cmd
}

// runPull checks the references, has the daemon pull them, and shows how it goes. from is the
// image list they were read from, if any.
func runPull(cmd *cobra.Command, f *pullFlags, refs []string, from string) error {
	req := admin.PullRequest{AllPlatforms: f.all}
	if f.all {
		if cmd.Flags().Changed("platform") {
			return fmt.Errorf("--platform and --all-platforms cannot be used together")
		}
	} else {
		if _, err := platforms.Parse(f.platform); err != nil {
			return fmt.Errorf("--platform %q is not a platform such as linux/amd64", f.platform)
		}
		req.Platform = f.platform
	}
	names, err := normalizeRefs(refs)
	if err != nil {
		if from != "" {
			return fmt.Errorf("%s: %w", from, err)
		}
		return err
	}
	req.Refs = names
	out := cmd.OutOrStdout()
	if len(names) == 0 {
		if f.json {
			return printJSON(out, admin.PullReport{Platform: req.Platform, Results: []admin.PullResult{}})
		}
		_, err := fmt.Fprintf(out, "no images in %s: nothing to pull\n", from)
		return err
	}
	var show func(admin.PullProgress)
	var display *pullDisplay
	if !f.json {
		width, live := terminalWidth(out)
		display = newPullDisplay(out, live)
		display.width = width
		show = display.update
	}
	rep, err := f.client().Pull(cmd.Context(), req, show)
	if display != nil {
		display.finish()
	}
	if err != nil && cmd.Context().Err() != nil {
		return errors.New("interrupted: the downloads already started finish in the daemon, and the same pull run again fetches only the rest")
	}
	if err != nil {
		return needDaemon(cmd, &f.clientFlags, err)
	}
	if f.json {
		if err := printJSON(out, rep); err != nil {
			return err
		}
	}
	if rep.Failed > 0 {
		return fmt.Errorf("%d of %d images failed to pull", rep.Failed, len(rep.Results))
	}
	return nil
}

// normalizeRefs normalizes image references and lists each once, or says which is malformed.
func normalizeRefs(refs []string) ([]string, error) {
	var names []string
	for _, ref := range refs {
		name, err := plan.NormalizeRef(ref)
		if err != nil {
			return nil, fmt.Errorf("%q is not an image reference such as alpine:3.20 or ghcr.io/org/app:v1", ref)
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// terminalWidth reports whether w is a terminal, and its width in columns if known.
func terminalWidth(w io.Writer) (int, bool) {
	f, ok := w.(*os.File)
	if !ok {
		return 0, false
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return 0, false
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0, true
	}
	return int(ws.Col), true
}

// pullDisplay shows the progress of a pull. On a terminal, the images being pulled each have a
// line redrawn in place (bytes so far of the total, rate, time left) below the lines of the
// images done; elsewhere only the lines of the images done are printed.
type pullDisplay struct {
	w      io.Writer
	live   bool
	width  int // of the terminal, to keep live lines to one screen line each; 0 if unknown
	now    func() time.Time
	active []*pullRow // in the order they started
	drawn  int        // lines of the live area on the screen
}

type pullRow struct {
	ref          string
	state        string
	bytes, total int64
	// since and sinceBytes are when the download started, and what was cached then.
	since      time.Time
	sinceBytes int64
}

func newPullDisplay(w io.Writer, live bool) *pullDisplay {
	return &pullDisplay{w: w, live: live, now: time.Now}
}

// update takes one progress report.
func (d *pullDisplay) update(p admin.PullProgress) {
	if p.Result != nil {
		d.clear()
		fmt.Fprintln(d.w, pullResultLine(*p.Result))
		d.active = slices.DeleteFunc(d.active, func(r *pullRow) bool { return r.ref == p.Ref })
		d.draw()
		return
	}
	if !d.live {
		return
	}
	i := slices.IndexFunc(d.active, func(r *pullRow) bool { return r.ref == p.Ref })
	if i < 0 {
		d.active = append(d.active, &pullRow{ref: p.Ref})
		i = len(d.active) - 1
	}
	row := d.active[i]
	if p.State == admin.PullPulling && row.state != admin.PullPulling {
		row.since, row.sinceBytes = d.now(), p.Bytes
	}
	row.state, row.bytes, row.total = p.State, p.Bytes, p.Total
	d.clear()
	d.draw()
}

// finish removes the live lines.
func (d *pullDisplay) finish() { d.clear() }

func (d *pullDisplay) clear() {
	if d.live && d.drawn > 0 {
		fmt.Fprintf(d.w, "\x1b[%dF\x1b[J", d.drawn) // to the start of the live area; erase below
		d.drawn = 0
	}
}

func (d *pullDisplay) draw() {
	if !d.live {
		return
	}
	for _, r := range d.active {
		line := d.rowLine(r)
		if d.width > 1 && len(line) >= d.width {
			line = line[:d.width-1]
		}
		fmt.Fprintln(d.w, line)
	}
	d.drawn = len(d.active)
}

// rowLine is the live line of an image: "REF  1.2 MiB / 3.4 MiB  1.1 MiB/s  ETA 2s".
func (d *pullDisplay) rowLine(r *pullRow) string {
	if r.state != admin.PullPulling {
		return fmt.Sprintf("%s  %s", r.ref, r.state)
	}
	line := fmt.Sprintf("%s  %s / %s", r.ref, humanBytes(r.bytes), humanBytes(r.total))
	elapsed := d.now().Sub(r.since)
	got := r.bytes - r.sinceBytes
	if elapsed < 500*time.Millisecond || got <= 0 {
		return line
	}
	rate := float64(got) / elapsed.Seconds()
	eta := time.Duration(float64(r.total-r.bytes) / rate * float64(time.Second))
	return fmt.Sprintf("%s  %s/s  ETA %s", line, humanBytes(int64(rate)), eta.Round(time.Second))
}

// pullResultLine is the line of an image done: "pulled REF (3.1 MiB in 2.4s)", "failed REF: why".
func pullResultLine(r admin.PullResult) string {
	if r.Error != "" {
		return fmt.Sprintf("failed %s: %s", r.Ref, strings.ReplaceAll(r.Error, "\n", " "))
	}
	line := fmt.Sprintf("pulled %s (%s in %.1fs", r.Ref, humanBytes(r.Bytes), r.Seconds)
	switch {
	case r.FetchedBytes == 0:
		line += ", all of it cached already"
	case r.CachedBytes > 0:
		line += fmt.Sprintf(", %s of it cached already", humanBytes(r.CachedBytes))
	}
	return line + ")"
}
