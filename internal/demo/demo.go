// Package demo is `lifeboat demo`: a self-contained tour that starts a registry and a lifeboat
// (assembled by package daemon, as `lifeboat serve` assembles it) in one process, pulls through
// the mirror with containerd's own registry client before, during and after a simulated
// outage, and reports each step against what it should have done.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/internal/daemon"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// What the demo sets up. The registry name is under .test, a top-level domain that never
// resolves, so that nothing the demo does can reach a real registry.
const (
	Registry   = "registry.demo.test"
	repository = "demo/app"
	cachedTag  = "1.0" // pulled before the outage
	newTag     = "2.0" // pushed upstream, never pulled before the outage
	layerCount = 3
	layerSize  = 4 << 20
	// UpstreamTimeout is the demo's [resolve] upstream_timeout, shorter than the default
	// (1s) so that the tour is quick.
	UpstreamTimeout = 500 * time.Millisecond
	// pullTimeout bounds one pull, so that a broken step fails the demo instead of hanging it.
	pullTimeout = 30 * time.Second
	// recoveryTimeout bounds the wait for lifeboat to see the upstream back after the outage.
	recoveryTimeout = 10 * time.Second
)

// Report is what the demo did; `lifeboat demo --json` prints it.
type Report struct {
	// OK is true when every step behaved as expected; Problems says why not.
	OK       bool     `json:"ok"`
	Problems []string `json:"problems,omitempty"`
	// Registry is the registry name the images are pulled by; Upstream the registry serving it.
	Registry string `json:"registry"`
	Upstream string `json:"upstream"`
	// Mirror is lifeboat's registry mirror.
	Mirror string `json:"mirror"`
	// Root is the temporary directory: lifeboat's root in root/, the pulls' content stores in
	// pulls/. It is removed at the end unless Kept.
	Root            string  `json:"root"`
	Kept            bool    `json:"kept"`
	UpstreamTimeout string  `json:"upstreamTimeout"`
	Images          []Image `json:"images"`
	Steps           []Step  `json:"steps"`
	DurationMs      float64 `json:"durationMs"`
}

// Image is an image pushed to the upstream registry.
type Image struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	// Size counts the manifest, the config and the layers.
	Size   int64 `json:"size"`
	Layers int   `json:"layers"`
}

// Step is one pull of the tour.
type Step struct {
	Number int    `json:"number"`
	Name   string `json:"name"`
	Ref    string `json:"ref"`
	// Outage is the simulated outage mode in force during the step, if any.
	Outage string `json:"outage,omitempty"`
	// Expect is "pull" (the pull should succeed) or "fail".
	Expect string `json:"expect"`
	// OK is true when the step behaved as expected.
	OK     bool `json:"ok"`
	Pulled bool `json:"pulled"`
	// DurationMs is the time the pull took, resolution included.
	DurationMs float64 `json:"durationMs"`
	// RegistryDown says lifeboat had marked the registry down when the step began, so that it
	// did not wait on the registry before answering.
	RegistryDown bool `json:"registryDown"`
	// Bytes is the body bytes the client received from the mirror.
	Bytes int64 `json:"bytes"`
	// Upstream is what reached the upstream registry during the step.
	Upstream Traffic `json:"upstream"`
	// Answers are the mirror's answers, grouped.
	Answers []Answer `json:"answers"`
	// Error is the client's error, for a failed pull.
	Error string `json:"error,omitempty"`
	// LifeboatSays is the message of the mirror's error answer, for a failed pull.
	LifeboatSays string `json:"lifeboatSays,omitempty"`
	// Note says what the step shows, or what went wrong.
	Note string `json:"note,omitempty"`

	summary string        // the step's short name in the summary table
	took    time.Duration // DurationMs
}

// Traffic counts requests and response body bytes.
type Traffic struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
}

// Answer counts the mirror's answers of one kind, status and X-Lifeboat-Cache value.
type Answer struct {
	// Kind is "tag" (a manifest by tag), "manifest" (by digest) or "blob".
	Kind   string `json:"kind"`
	Status int    `json:"status"`
	Cache  string `json:"cache,omitempty"`
	Count  int    `json:"count"`
}

// expect is how a step should behave.
type expect struct {
	pull bool
	// tag is the X-Lifeboat-Cache every tag answer should carry ("" for a failed pull).
	tag resolver.CacheStatus
	// cached: every manifest and blob is answered from the cache.
	cached bool
	// quiet: no request reaches the upstream registry.
	quiet bool
	// namesOutage: lifeboat's error names the simulated outage.
	namesOutage bool
	// note says, after the step, what it showed.
	note func() string
}

// tour is one run of the demo.
type tour struct {
	out      io.Writer
	dir      string
	rep      *Report
	upstream *countingHandler
	rec      *recorder
	client   *http.Client // the pulls' client, recording the mirror's answers
	plain    *http.Client // the same without recording
	mirror   string       // host:port
	lb       *daemon.Daemon
	version  string
}

// Options are the demo's settings.
type Options struct {
	// Keep keeps the temporary directory (lifeboat's cache and the pulled content).
	Keep bool
	// Version is lifeboat's version, sent to the registry in the User-Agent.
	Version string
}

// Run runs the tour, writing its progress and summary to out. The error is for a demo that
// could not run; one that ran reports its verdict in the report.
func Run(ctx context.Context, out io.Writer, opts Options) (rep Report, err error) {
	keep := opts.Keep
	start := time.Now()
	dir, err := os.MkdirTemp("", "lifeboat-demo-")
	if err != nil {
		return rep, fmt.Errorf("cannot create the demo's temporary directory: %w", err)
	}
	rep = Report{Registry: Registry, Root: dir, Kept: keep, UpstreamTimeout: UpstreamTimeout.String()}
	d := &tour{out: out, dir: dir, rep: &rep, version: opts.Version}
	var cleanup []func()
	defer func() {
		for _, fn := range slices.Backward(cleanup) {
			fn()
		}
		if !keep {
			if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
				err = fmt.Errorf("cannot remove the demo's temporary directory: %w", rerr)
			}
		}
		if ctx.Err() != nil {
			err = errors.New("the demo was interrupted")
		}
	}()

	fmt.Fprintln(out, "lifeboat demo: pull an image through lifeboat, lose the registry, pull again.")
	fmt.Fprintln(out, "Everything runs in this process on 127.0.0.1: nothing is installed, nothing leaves this machine.")
	fmt.Fprintln(out)

	stopUpstream, err := d.startUpstream(ctx)
	if err != nil {
		return rep, err
	}
	cleanup = append(cleanup, stopUpstream)
	stopLifeboat, err := d.startLifeboat(ctx)
	if err != nil {
		return rep, err
	}
	cleanup = append(cleanup, stopLifeboat)
	d.describeSetup()

	ref := Registry + "/" + repository + ":" + cachedTag
	newRef := Registry + "/" + repository + ":" + newTag
	say := func(s string) func() string { return func() string { return s } }

	d.step(ctx, "cold pull", "Cold pull of "+ref+": lifeboat has nothing cached yet.", ref, expect{
		pull: true, tag: resolver.Miss,
		note: say("lifeboat fetched the image from the registry, streaming it to the client while caching it"),
	})
	d.step(ctx, "warm pull", "Warm pull of the same image into a new, empty content store, as on a node that never had it.", ref, expect{
		pull: true, tag: resolver.Revalidated, cached: true,
		note: say("One quick tag check with the registry; every manifest and blob came from the cache"),
	})

	if ctx.Err() != nil {
		return rep, ctx.Err() // reported as an interruption
	}
	if _, err := d.lb.Admin.StartOutage(ctx, admin.OutageRequest{Spec: outage.Spec{Mode: outage.ModeBlackhole}}); err != nil {
		return rep, fmt.Errorf("cannot start the simulated outage: %w", err)
	}
	fmt.Fprintln(out, "Outage: blackhole started. From now on lifeboat's requests to the registry get no answer at all,")
	fmt.Fprintln(out, "as when a route drops the packets: each waits until its deadline. (This is `lifeboat outage start --mode blackhole`.)")
	fmt.Fprintln(out)
	d.step(ctx, "outage: cached image", "Pull of the cached image during the outage.", ref, expect{
		pull: true, tag: resolver.Stale, cached: true, quiet: true,
		note: say("The tag check waited upstream_timeout (" + rep.UpstreamTimeout + ") for the registry, then lifeboat answered from its cache"),
	})
	d.step(ctx, "outage: never-pulled image", "Pull of "+newRef+", which lifeboat never cached, during the outage.", newRef, expect{
		quiet: true, namesOutage: true,
		note: say("lifeboat cannot serve what it never cached: it says so with a 404 after at most one upstream_timeout, so containerd moves on instead of hanging"),
	})
	d.step(ctx, "outage: cached image again", "Pull of the cached image again, still during the outage.", ref, expect{
		pull: true, tag: resolver.Stale, cached: true, quiet: true,
		note: d.breakerNote,
	})

	up, err := d.endOutage(ctx)
	if err != nil {
		return rep, err
	}
	fmt.Fprintf(out, "Outage stopped. lifeboat probed the registry at once and saw it up again %s later.\n\n", humanTime(up))
	d.step(ctx, "after the outage", "Pull after the outage.", ref, expect{
		pull: true, tag: resolver.Revalidated, cached: true,
		note: say("The registry is back: lifeboat checks tags with it again, and the content still comes from the cache"),
	})

	if ctx.Err() != nil {
		return rep, ctx.Err() // reported as an interruption
	}
	rep.OK = len(rep.Problems) == 0
	took := time.Since(start)
	rep.DurationMs = ms(took)
	d.summarize(took)
	if keep {
		fmt.Fprintf(out, "Kept %s: lifeboat's cache is in root/, each pull's containerd content store in pulls/.\n", dir)
	}
	return rep, nil
}

// check says how step s did not behave as want says, in sentences; none if it did.
func check(s Step, want expect) []string {
	var problems []string
	switch {
	case want.pull && !s.Pulled:
		problems = append(problems, "the pull failed: "+s.Error)
	case !want.pull && s.Pulled:
		problems = append(problems, "the pull succeeded, but lifeboat cannot have had the image")
	}
	if want.tag != "" && !allTags(s.Answers, want.tag) {
		problems = append(problems, fmt.Sprintf("lifeboat answered the tag %s, want %s", describeTag(s.Answers), want.tag))
	}
	if want.cached && !fromCache(s.Answers) {
		problems = append(problems, "lifeboat did not answer every manifest and blob from its cache: "+describeAnswers(s.Answers))
	}
	if want.quiet && s.Upstream.Requests > 0 {
		problems = append(problems, fmt.Sprintf("%s reached the registry during the outage", plural(s.Upstream.Requests, "request")))
	}
	if want.namesOutage && (s.Outage == "" || !strings.Contains(s.LifeboatSays, "simulated outage: "+s.Outage)) {
		problems = append(problems, "lifeboat's answer does not name the simulated outage: "+orNone(s.LifeboatSays))
	}
	return problems
}

// registryDown says whether lifeboat has marked an endpoint of the registry down.
func (d *tour) registryDown() bool {
	for _, ep := range d.lb.Resolver.Endpoints() {
		if !ep.Up {
			return true
		}
	}
	return false
}

// breakerNote says whether lifeboat has stopped waiting on the registry.
func (d *tour) breakerNote() string {
	for _, ep := range d.lb.Resolver.Endpoints() {
		if !ep.Up {
			if ep.Failures == 1 {
				return "The registry answered nothing while lifeboat's first request waited, so lifeboat marked the registry down and stopped waiting on it: the cache answered at once"
			}
			return fmt.Sprintf("After %d failed requests lifeboat marked the registry down and stopped waiting on it: the cache answered at once", ep.Failures)
		}
	}
	return "Served from the cache again"
}

// step pulls ref through the mirror and records how it went against want. Once ctx is done
// (the demo was interrupted) it does nothing.
func (d *tour) step(ctx context.Context, summary, title, ref string, want expect) {
	if ctx.Err() != nil {
		return
	}
	s := Step{Number: len(d.rep.Steps) + 1, Name: summary, Ref: ref, Expect: "pull", summary: summary}
	if !want.pull {
		s.Expect = "fail"
	}
	if st := d.lb.Outage.Status(); st.Active {
		s.Outage = st.Spec.Mode
	}
	fmt.Fprintf(d.out, "%d. %s\n", s.Number, title)
	s.RegistryDown = d.registryDown()

	d.rec.take()
	before := d.upstream.traffic()
	start := time.Now()
	err := d.pull(ctx, ref, filepath.Join(d.dir, "pulls", strconv.Itoa(s.Number)))
	s.took = time.Since(start)
	s.DurationMs = ms(s.took)
	s.Upstream = d.upstream.traffic().minus(before)
	answers, received := d.rec.take()
	if ctx.Err() != nil {
		return
	}
	s.Answers = group(answers)
	s.Bytes = received
	s.Pulled = err == nil
	if err != nil {
		s.Error = err.Error()
		// A HEAD answer has no body, so containerd's error cannot say why; lifeboat's GET
		// answer to the same request does (containerd does the same for a HEAD 403).
		s.LifeboatSays = d.whyNot(ctx, ref)
	}
	problems := check(s, want)
	s.OK = len(problems) == 0
	for _, p := range problems {
		d.rep.Problems = append(d.rep.Problems, fmt.Sprintf("step %d (%s): %s", s.Number, s.Name, p))
	}
	if want.note != nil {
		s.Note = want.note()
	}
	if !s.OK {
		s.Note = "NOT AS EXPECTED: " + strings.Join(problems, "; ")
	}
	d.rep.Steps = append(d.rep.Steps, s)
	d.describeStep(s)
}

// endOutage stops the outage and waits until lifeboat sees the upstream up again; it returns
// how long that took.
func (d *tour) endOutage(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if _, err := d.lb.Admin.StopOutage(ctx); err != nil {
		return 0, fmt.Errorf("cannot stop the simulated outage: %w", err)
	}
	if ctx.Err() != nil {
		return 0, ctx.Err() // reported as an interruption
	}
	ctx, cancel := context.WithTimeout(ctx, recoveryTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		allUp := true
		for _, ep := range d.lb.Resolver.Endpoints() {
			allUp = allUp && ep.Up
		}
		if allUp {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("lifeboat did not see the demo registry up again within %s of the outage's end", recoveryTimeout)
		case <-tick.C:
		}
	}
}
