package demo

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/size"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

func (d *tour) describeSetup() {
	r := d.rep
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  registry\tan OCI registry (go-containerregistry, in memory) on %s, standing in for %s\n", r.Upstream, r.Registry)
	img := r.Images[0]
	fmt.Fprintf(tw, "  images\t%s: %d random layers, %s, %s\n", img.Ref, img.Layers, size.Format(img.Size), shortDigest(img.Digest))
	fmt.Fprintf(tw, "  \t%s: pushed to the registry too, never pulled before the outage\n", r.Images[1].Ref)
	fmt.Fprintf(tw, "  lifeboat\tcache, resolver and registry mirror on %s, wired as `lifeboat serve` wires them, root %s\n", r.Mirror, filepath.Join(r.Root, "root"))
	fmt.Fprintf(tw, "  \tupstream_timeout = %s (default 1s): how long a tag check may wait on the registry before the cache answers\n", r.UpstreamTimeout)
	fmt.Fprintf(tw, "  client\tcontainerd's own registry client (core/remotes/docker: ctr, nerdctl and the CRI plugin use it),\n")
	fmt.Fprintf(tw, "  \tpointed at the mirror only, like hosts.toml with `--fallback none`; each pull fills a new, empty content store\n")
	tw.Flush()
	fmt.Fprintln(d.out)
}

func (d *tour) describeStep(s Step) {
	var what string
	if s.Pulled {
		what = fmt.Sprintf("pulled %s in %s", size.Format(s.Bytes), humanTime(s.took))
	} else {
		what = fmt.Sprintf("failed in %s", humanTime(s.took))
		if s.Expect == "fail" {
			what += ", as it should"
		}
	}
	fmt.Fprintf(d.out, "   %s; lifeboat answered %s; %s.\n", what, describeAnswers(s.Answers), describeUpstream(s))
	if s.Error != "" {
		fmt.Fprintf(d.out, "   containerd says: %s\n", s.Error)
		fmt.Fprintf(d.out, "   lifeboat says:   %s\n", orNone(s.LifeboatSays))
	}
	fmt.Fprintf(d.out, "   %s.\n\n", s.Note)
}

func (d *tour) summarize(took time.Duration) {
	out := d.out
	fmt.Fprintln(out, "Summary")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tRESULT\tTIME\tREACHED THE REGISTRY\tLIFEBOAT ANSWERED")
	for _, s := range d.rep.Steps {
		result := "pulled " + size.Format(s.Bytes)
		if !s.Pulled {
			result = "failed"
		}
		verdict := "ok"
		if !s.OK {
			verdict = "NOT OK"
		}
		fmt.Fprintf(tw, "%d %s\t%s %s\t%s\t%s\t%s\n", s.Number, s.summary, verdict, result, humanTime(s.took), upstreamCell(s.Upstream), describeAnswers(s.Answers))
	}
	tw.Flush()
	fmt.Fprintln(out)
	fmt.Fprintln(out, "What this means: while the registry was unreachable, lifeboat kept serving the image it had")
	fmt.Fprintln(out, "cached, after one upstream_timeout on the tag check at worst and at once after it marked the registry")
	fmt.Fprintln(out, "down. An image it never cached failed at once (after one upstream_timeout at most), with the reason, instead of hanging")
	fmt.Fprintln(out, "the pull, and once the registry was back lifeboat checked tags with it again.")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "Next steps:")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  lifeboat serve\trun the daemon (`make run` in the source tree)")
	fmt.Fprintln(tw, "  lifeboat configure containerd --dry-run\tsee the hosts.toml files that point containerd at lifeboat")
	fmt.Fprintln(tw, "  docs/outage-drill.md\tthe same drill on a real node, with ctr and `lifeboat outage start`")
	tw.Flush()
	fmt.Fprintln(out)
	verdict := "every step behaved as expected"
	if !d.rep.OK {
		verdict = fmt.Sprintf("%d of %d steps did NOT behave as expected", countNotOK(d.rep.Steps), len(d.rep.Steps))
	}
	fmt.Fprintf(out, "Demo finished in %s: %s.\n", humanTime(took), verdict)
}

var kindOrder = []string{"tag", "manifest", "blob", "other"}

// group counts the answers by kind, status and cache value, tags first.
func group(as []recorded) []Answer {
	out := []Answer{}
	for _, a := range as {
		i := slices.IndexFunc(out, func(g Answer) bool {
			return g.Kind == a.kind && g.Status == a.status && g.Cache == a.cache
		})
		if i < 0 {
			out = append(out, Answer{Kind: a.kind, Status: a.status, Cache: a.cache})
			i = len(out) - 1
		}
		out[i].Count++
	}
	slices.SortStableFunc(out, func(a, b Answer) int {
		return slices.Index(kindOrder, a.Kind) - slices.Index(kindOrder, b.Kind)
	})
	return out
}

// allTags reports whether there was a tag answer and every one carried want.
func allTags(as []Answer, want resolver.CacheStatus) bool {
	seen := false
	for _, a := range as {
		if a.Kind == "tag" {
			if a.Cache != string(want) {
				return false
			}
			seen = true
		}
	}
	return seen
}

// fromCache reports whether there were manifest and blob answers and every one was a hit.
func fromCache(as []Answer) bool {
	seen := false
	for _, a := range as {
		if a.Kind == "manifest" || a.Kind == "blob" {
			if a.Cache != string(resolver.Hit) {
				return false
			}
			seen = true
		}
	}
	return seen
}

// describeTag says how the tag was answered: "stale", "404 not found", "never".
func describeTag(as []Answer) string {
	var parts []string
	for _, a := range as {
		if a.Kind == "tag" {
			parts = append(parts, strings.TrimPrefix(describeAnswers([]Answer{a}), a.Kind+" "))
		}
	}
	if len(parts) == 0 {
		return "never"
	}
	return strings.Join(parts, ", ")
}

// describeAnswers says "tag miss, manifest hit, 4 blobs miss".
func describeAnswers(as []Answer) string {
	if len(as) == 0 {
		return "nothing"
	}
	parts := make([]string, 0, len(as))
	for _, a := range as {
		what := a.Kind
		if a.Count > 1 {
			what = fmt.Sprintf("%d %ss", a.Count, a.Kind)
		}
		how := a.Cache
		if how == "" || a.Status >= 300 {
			how = strings.TrimSpace(fmt.Sprintf("%d %s", a.Status, strings.ToLower(http.StatusText(a.Status))))
		}
		parts = append(parts, what+" "+how)
	}
	return strings.Join(parts, ", ")
}

func describeUpstream(s Step) string {
	switch {
	case s.Upstream.Requests == 0 && s.Outage != "":
		return "nothing reached the registry"
	case s.Upstream.Requests == 0:
		return "lifeboat did not ask the registry"
	case s.Upstream.Bytes == 0:
		return fmt.Sprintf("the registry got %s and sent no content", plural(s.Upstream.Requests, "request"))
	}
	return fmt.Sprintf("the registry got %s and sent %s", plural(s.Upstream.Requests, "request"), size.Format(s.Upstream.Bytes))
}

func upstreamCell(t Traffic) string {
	if t.Requests == 0 {
		return "nothing"
	}
	return fmt.Sprintf("%s, %s", plural(t.Requests, "request"), size.Format(t.Bytes))
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func countNotOK(steps []Step) int {
	n := 0
	for _, s := range steps {
		if !s.OK {
			n++
		}
	}
	return n
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

func orNone(s string) string {
	if s == "" {
		return "(nothing)"
	}
	return s
}

// ms is d in milliseconds, to a tenth.
func ms(d time.Duration) float64 {
	return float64(d.Round(100*time.Microsecond)) / float64(time.Millisecond)
}

// humanTime prints a time for people: "38ms", "1.24s".
func humanTime(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}
