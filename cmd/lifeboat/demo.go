package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// What the demo sets up. The registry name is under .test, a top-level domain that never
// resolves, so that nothing the demo does can reach a real registry.
const (
	demoRegistry   = "registry.demo.test"
	demoRepository = "demo/app"
	demoTag        = "1.0" // pulled before the outage
	demoNewTag     = "2.0" // pushed upstream, never pulled before the outage
	demoLayers     = 3
	demoLayerSize  = 4 << 20
	// demoUpstreamTimeout is the demo's [resolve] upstream_timeout, shorter than the default
	// (1s) so that the tour is quick.
	demoUpstreamTimeout = 500 * time.Millisecond
	// demoPullTimeout bounds one pull, so that a broken step fails the demo instead of hanging it.
	demoPullTimeout = 30 * time.Second
	// demoRecoveryTimeout bounds the wait for lifeboat to see the upstream back after the outage.
	demoRecoveryTimeout = 10 * time.Second
	// demoHeaderCache is the mirror's answer header saying where an answer came from.
	demoHeaderCache = "X-Lifeboat-Cache"
)

type demoFlags struct {
	json     bool
	keep     bool
	logLevel string
}

func newDemoCommand() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Tour lifeboat in one process: pull through it, simulate a registry outage, pull again",
		Long: `Run a self-contained tour of lifeboat that needs no containerd, no root and no network.

In this one process, on 127.0.0.1 only, the demo starts a registry with a generated image, then
lifeboat (cache, resolver and registry mirror, wired as "lifeboat serve" wires them) on a fresh
temporary root, and pulls through the mirror with containerd's own registry client:

  1. a cold pull, that lifeboat fetches from the registry and caches;
  2. a warm pull, served from the cache after one tag check;
  3. a pull of the same image during a simulated blackhole outage: served from the cache;
  4. a pull of an image lifeboat never cached, during the outage: it fails at once;
  5. the cached image again during the outage, once lifeboat has marked the registry down;
  6. a pull after the outage, when lifeboat checks tags with the registry again.

It prints what happened, with timings and lifeboat's X-Lifeboat-Cache answers, then removes its
temporary directory (--keep keeps it). It exits 0 when every step behaved as expected, 1 if one
did not, so it doubles as a self-test.

--json prints one object instead: ok (bool), problems (sentences), registry, upstream, mirror,
root, kept, upstreamTimeout, images (ref, digest, size, layers), durationMs, and steps, each with
number, name, ref, outage (the mode in force, if any), expect ("pull" or "fail"), ok, pulled,
durationMs, bytes (received from the mirror), upstream (requests and bytes that reached the
registry), answers (kind "tag", "manifest" or "blob", HTTP status, cache, count), error (the
client's), lifeboatSays (the mirror's error message) and note.`,
		Example: `  lifeboat demo
  lifeboat demo --json | jq '.steps[] | {name, ok, durationMs}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := setupLogging(config.Log{Level: f.logLevel, Format: "text"}); err != nil {
				return fmt.Errorf("--log-level %q is not one of trace, debug, info, warn, error", f.logLevel)
			}
			out := cmd.OutOrStdout()
			progress := out
			if f.json {
				progress = io.Discard
			}
			rep, err := runDemo(cmd.Context(), progress, f.keep)
			if err != nil {
				return err
			}
			if f.json {
				if err := printJSON(out, rep); err != nil {
					return err
				}
			}
			if !rep.OK {
				return fmt.Errorf("the demo did not behave as expected (run it with --keep --log-level debug to look closer): %s", strings.Join(rep.Problems, "; "))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.json, "json", false, "print the steps as JSON")
	fl.BoolVar(&f.keep, "keep", false, "keep the temporary directory (lifeboat's cache and the pulled content) and say where it is")
	fl.StringVar(&f.logLevel, "log-level", "error", "level of lifeboat's own log, on stderr: trace, debug, info, warn, error")
	return cmd
}

// demoReport is what the demo did; `lifeboat demo --json` prints it.
type demoReport struct {
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
	Root            string      `json:"root"`
	Kept            bool        `json:"kept"`
	UpstreamTimeout string      `json:"upstreamTimeout"`
	Images          []demoImage `json:"images"`
	Steps           []demoStep  `json:"steps"`
	DurationMs      float64     `json:"durationMs"`
}

// demoImage is an image pushed to the upstream registry.
type demoImage struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	// Size counts the manifest, the config and the layers.
	Size   int64 `json:"size"`
	Layers int   `json:"layers"`
}

// demoStep is one pull of the tour.
type demoStep struct {
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
	// Bytes is the body bytes the client received from the mirror.
	Bytes int64 `json:"bytes"`
	// Upstream is what reached the upstream registry during the step.
	Upstream demoTraffic `json:"upstream"`
	// Answers are the mirror's answers, grouped.
	Answers []demoAnswer `json:"answers"`
	// Error is the client's error, for a failed pull.
	Error string `json:"error,omitempty"`
	// LifeboatSays is the message of the mirror's error answer, for a failed pull.
	LifeboatSays string `json:"lifeboatSays,omitempty"`
	// Note says what the step shows, or what went wrong.
	Note string `json:"note,omitempty"`

	summary string        // the step's short name in the summary table
	took    time.Duration // DurationMs
}

// demoTraffic counts requests and response body bytes.
type demoTraffic struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
}

// demoAnswer counts the mirror's answers of one kind, status and X-Lifeboat-Cache value.
type demoAnswer struct {
	// Kind is "tag" (a manifest by tag), "manifest" (by digest) or "blob".
	Kind   string `json:"kind"`
	Status int    `json:"status"`
	Cache  string `json:"cache,omitempty"`
	Count  int    `json:"count"`
}

// demoExpect is how a step should behave.
type demoExpect struct {
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

// demo is one run of the tour.
type demo struct {
	out      io.Writer
	dir      string
	rep      *demoReport
	upstream *demoCountingHandler
	rec      *demoRecorder
	client   *http.Client // the pulls' client, recording the mirror's answers
	plain    *http.Client // the same without recording
	mirror   string       // host:port
	res      *resolver.Resolver
	sim      *outage.Simulator
}

// runDemo runs the tour, writing its progress and summary to out. The error is for a demo that
// could not run; one that ran reports its verdict in the report.
func runDemo(ctx context.Context, out io.Writer, keep bool) (rep demoReport, err error) {
	start := time.Now()
	dir, err := os.MkdirTemp("", "lifeboat-demo-")
	if err != nil {
		return rep, fmt.Errorf("cannot create the demo's temporary directory: %w", err)
	}
	rep = demoReport{Registry: demoRegistry, Root: dir, Kept: keep, UpstreamTimeout: demoUpstreamTimeout.String()}
	d := &demo{out: out, dir: dir, rep: &rep}
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

	ref := demoRegistry + "/" + demoRepository + ":" + demoTag
	newRef := demoRegistry + "/" + demoRepository + ":" + demoNewTag
	say := func(s string) func() string { return func() string { return s } }

	d.step(ctx, "cold pull", "Cold pull of "+ref+": lifeboat has nothing cached yet.", ref, demoExpect{
		pull: true, tag: resolver.Miss,
		note: say("lifeboat fetched the image from the registry, streaming it to the client while caching it"),
	})
	d.step(ctx, "warm pull", "Warm pull of the same image into a new, empty content store, as on a node that never had it.", ref, demoExpect{
		pull: true, tag: resolver.Revalidated, cached: true,
		note: say("One quick tag check with the registry; every manifest and blob came from the cache"),
	})

	if ctx.Err() != nil {
		return rep, ctx.Err() // reported as an interruption
	}
	if _, err := d.sim.Start(ctx, outage.Spec{Mode: outage.ModeBlackhole}); err != nil {
		return rep, fmt.Errorf("cannot start the simulated outage: %w", err)
	}
	fmt.Fprintln(out, "Outage: blackhole started. From now on lifeboat's requests to the registry get no answer at all,")
	fmt.Fprintln(out, "as when a route drops the packets: each waits until its deadline. (This is `lifeboat outage start --mode blackhole`.)")
	fmt.Fprintln(out)
	d.step(ctx, "outage: cached image", "Pull of the cached image during the outage.", ref, demoExpect{
		pull: true, tag: resolver.Stale, cached: true, quiet: true,
		note: say("The tag check waited upstream_timeout (" + rep.UpstreamTimeout + ") for the registry, then lifeboat answered from its cache"),
	})
	d.step(ctx, "outage: never-pulled image", "Pull of "+newRef+", which lifeboat never cached, during the outage.", newRef, demoExpect{
		quiet: true, namesOutage: true,
		note: say("lifeboat cannot serve what it never cached: it says so with a 404 after at most one upstream_timeout, so containerd moves on instead of hanging"),
	})
	d.step(ctx, "outage: cached image again", "Pull of the cached image again, still during the outage.", ref, demoExpect{
		pull: true, tag: resolver.Stale, cached: true, quiet: true,
		note: d.breakerNote,
	})

	up, err := d.endOutage(ctx)
	if err != nil {
		return rep, err
	}
	fmt.Fprintf(out, "Outage stopped. lifeboat probed the registry at once and saw it up again %s later.\n\n", demoTime(up))
	d.step(ctx, "after the outage", "Pull after the outage.", ref, demoExpect{
		pull: true, tag: resolver.Revalidated, cached: true,
		note: say("The registry is back: lifeboat checks tags with it again, and the content still comes from the cache"),
	})

	if ctx.Err() != nil {
		return rep, ctx.Err() // reported as an interruption
	}
	rep.OK = len(rep.Problems) == 0
	took := time.Since(start)
	rep.DurationMs = demoMs(took)
	d.summarize(took)
	if keep {
		fmt.Fprintf(out, "Kept %s: lifeboat's cache is in root/, each pull's containerd content store in pulls/.\n", dir)
	}
	return rep, nil
}

// demoCheck says how step s did not behave as want says, in sentences; none if it did.
func demoCheck(s demoStep, want demoExpect) []string {
	var problems []string
	switch {
	case want.pull && !s.Pulled:
		problems = append(problems, "the pull failed: "+s.Error)
	case !want.pull && s.Pulled:
		problems = append(problems, "the pull succeeded, but lifeboat cannot have had the image")
	}
	if want.tag != "" && !demoAllTags(s.Answers, want.tag) {
		problems = append(problems, fmt.Sprintf("lifeboat answered the tag %s, want %s", demoDescribeTag(s.Answers), want.tag))
	}
	if want.cached && !demoFromCache(s.Answers) {
		problems = append(problems, "lifeboat did not answer every manifest and blob from its cache: "+demoDescribeAnswers(s.Answers))
	}
	if want.quiet && s.Upstream.Requests > 0 {
		problems = append(problems, fmt.Sprintf("%s reached the registry during the outage", demoPlural(s.Upstream.Requests, "request")))
	}
	if want.namesOutage && (s.Outage == "" || !strings.Contains(s.LifeboatSays, "simulated outage: "+s.Outage)) {
		problems = append(problems, "lifeboat's answer does not name the simulated outage: "+demoOrNone(s.LifeboatSays))
	}
	return problems
}

// breakerNote says whether lifeboat has stopped waiting on the registry.
func (d *demo) breakerNote() string {
	for _, ep := range d.res.Endpoints() {
		if !ep.Up {
			if ep.Failures == 1 {
				return "The registry answered nothing while lifeboat's first request waited, so lifeboat marked the registry down and stopped waiting on it: the cache answered at once"
			}
			return fmt.Sprintf("After %d failed requests lifeboat marked the registry down and stopped waiting on it: the cache answered at once", ep.Failures)
		}
	}
	return "Served from the cache again"
}

// startUpstream serves an in-memory registry on a free loopback port and pushes the demo's
// images to it.
func (d *demo) startUpstream(ctx context.Context) (stop func(), err error) {
	d.upstream = &demoCountingHandler{h: registry.New(registry.Logger(stdlog.New(io.Discard, "", 0)))}
	addr, stop, err := demoServe(d.upstream)
	if err != nil {
		return nil, fmt.Errorf("cannot start the demo registry: %w", err)
	}
	d.rep.Upstream = "http://" + addr
	// A fixed seed: the same images, and digests, on every run.
	rng := rand.NewSource(1)
	for _, img := range []struct {
		tag          string
		layers, size int64
	}{{demoTag, demoLayers, demoLayerSize}, {demoNewTag, 1, 1 << 20}} {
		im, err := random.Image(img.size, img.layers, random.WithSource(rng))
		if err != nil {
			stop()
			return nil, fmt.Errorf("cannot generate the demo image: %w", err)
		}
		info, err := demoPush(ctx, addr, img.tag, im)
		if err != nil {
			stop()
			return nil, fmt.Errorf("cannot push the demo image to the demo registry: %w", err)
		}
		d.rep.Images = append(d.rep.Images, info)
	}
	return stop, nil
}

func demoPush(ctx context.Context, addr, tag string, img v1.Image) (demoImage, error) {
	ref, err := name.ParseReference(addr+"/"+demoRepository+":"+tag, name.Insecure)
	if err != nil {
		return demoImage{}, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return demoImage{}, err
	}
	m, err := img.Manifest()
	if err != nil {
		return demoImage{}, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return demoImage{}, err
	}
	dgst, err := img.Digest()
	if err != nil {
		return demoImage{}, err
	}
	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return demoImage{
		Ref: demoRegistry + "/" + demoRepository + ":" + tag, Digest: dgst.String(), Size: size, Layers: len(m.Layers),
	}, nil
}

// startLifeboat opens a cache on a fresh root and serves the registry mirror over it, with the
// demo registry as the only endpoint of demoRegistry and the outage simulator in the upstream
// transport, as `lifeboat serve` does.
func (d *demo) startLifeboat(ctx context.Context) (stop func(), err error) {
	cfg := config.Default()
	cfg.Root = filepath.Join(d.dir, "root")
	cfg.Resolve.UpstreamTimeout = config.Duration(demoUpstreamTimeout)
	cfg.Registry = map[string]config.Registry{demoRegistry: {Endpoints: []string{d.rep.Upstream}}}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("demo configuration: %w", err)
	}
	store, err := cache.Open(ctx, cfg.Root, cache.Options{MaxSize: int64(cfg.Cache.MaxSize)})
	if err != nil {
		return nil, fmt.Errorf("cannot open the cache in %s: %w", cfg.Root, err)
	}
	d.sim = outage.New()
	res, err := newResolver(store, cfg, d.sim, nil)
	if err != nil {
		store.Close()
		return nil, err
	}
	d.res = res
	// As the daemon's admin service does: when an outage ends, probe the upstreams at once.
	d.sim.Subscribe(func(st outage.Status) {
		if !st.Active {
			res.ProbeNow()
		}
	})
	addr, stopMirror, err := demoServe(mirror.New(mirror.FromResolver(res), mirror.Options{}))
	if err != nil {
		res.Close()
		store.Close()
		return nil, fmt.Errorf("cannot start the registry mirror: %w", err)
	}
	d.mirror = addr
	d.rep.Mirror = "http://" + addr

	base := http.DefaultTransport.(*http.Transport).Clone()
	base.Proxy = nil // loopback only
	d.rec = &demoRecorder{base: base}
	d.client = &http.Client{Transport: d.rec}
	d.plain = &http.Client{Transport: base}
	return func() {
		if d.sim.Status().Active {
			_, _ = d.sim.Stop(context.WithoutCancel(ctx)) // releases blackholed requests
		}
		base.CloseIdleConnections()
		stopMirror()
		res.Close()
		store.Close()
	}, nil
}

func (d *demo) describeSetup() {
	r := d.rep
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  registry\tan OCI registry (go-containerregistry, in memory) on %s, standing in for %s\n", r.Upstream, r.Registry)
	img := r.Images[0]
	fmt.Fprintf(tw, "  images\t%s: %d random layers, %s, %s\n", img.Ref, img.Layers, humanBytes(img.Size), demoDigest(img.Digest))
	fmt.Fprintf(tw, "  \t%s: pushed to the registry too, never pulled before the outage\n", r.Images[1].Ref)
	fmt.Fprintf(tw, "  lifeboat\tcache, resolver and registry mirror on %s, wired as `lifeboat serve` wires them, root %s\n", r.Mirror, filepath.Join(r.Root, "root"))
	fmt.Fprintf(tw, "  \tupstream_timeout = %s (default 1s): how long a tag check may wait on the registry before the cache answers\n", r.UpstreamTimeout)
	fmt.Fprintf(tw, "  client\tcontainerd's own registry client (core/remotes/docker: ctr, nerdctl and the CRI plugin use it),\n")
	fmt.Fprintf(tw, "  \tpointed at the mirror only, like hosts.toml with `--fallback none`; each pull fills a new, empty content store\n")
	tw.Flush()
	fmt.Fprintln(d.out)
}

// step pulls ref through the mirror and records how it went against want. Once ctx is done
// (the demo was interrupted) it does nothing.
func (d *demo) step(ctx context.Context, summary, title, ref string, want demoExpect) {
	if ctx.Err() != nil {
		return
	}
	s := demoStep{Number: len(d.rep.Steps) + 1, Name: summary, Ref: ref, Expect: "pull", summary: summary}
	if !want.pull {
		s.Expect = "fail"
	}
	if st := d.sim.Status(); st.Active {
		s.Outage = st.Spec.Mode
	}
	fmt.Fprintf(d.out, "%d. %s\n", s.Number, title)

	d.rec.take()
	before := d.upstream.traffic()
	start := time.Now()
	err := d.pull(ctx, ref, filepath.Join(d.dir, "pulls", strconv.Itoa(s.Number)))
	s.took = time.Since(start)
	s.DurationMs = demoMs(s.took)
	s.Upstream = d.upstream.traffic().minus(before)
	answers, received := d.rec.take()
	if ctx.Err() != nil {
		return
	}
	s.Answers = demoGroup(answers)
	s.Bytes = received
	s.Pulled = err == nil
	if err != nil {
		s.Error = err.Error()
		// A HEAD answer has no body, so containerd's error cannot say why; lifeboat's GET
		// answer to the same request does (containerd does the same for a HEAD 403).
		s.LifeboatSays = d.whyNot(ctx, ref)
	}
	problems := demoCheck(s, want)
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

func (d *demo) describeStep(s demoStep) {
	var what string
	if s.Pulled {
		what = fmt.Sprintf("pulled %s in %s", humanBytes(s.Bytes), demoTime(s.took))
	} else {
		what = fmt.Sprintf("failed in %s", demoTime(s.took))
		if s.Expect == "fail" {
			what += ", as it should"
		}
	}
	fmt.Fprintf(d.out, "   %s; lifeboat answered %s; %s.\n", what, demoDescribeAnswers(s.Answers), demoDescribeUpstream(s))
	if s.Error != "" {
		fmt.Fprintf(d.out, "   containerd says: %s\n", s.Error)
		fmt.Fprintf(d.out, "   lifeboat says:   %s\n", demoOrNone(s.LifeboatSays))
	}
	fmt.Fprintf(d.out, "   %s.\n\n", s.Note)
}

func (d *demo) summarize(took time.Duration) {
	out := d.out
	fmt.Fprintln(out, "Summary")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tRESULT\tTIME\tREACHED THE REGISTRY\tLIFEBOAT ANSWERED")
	for _, s := range d.rep.Steps {
		result := "pulled " + humanBytes(s.Bytes)
		if !s.Pulled {
			result = "failed"
		}
		verdict := "ok"
		if !s.OK {
			verdict = "NOT OK"
		}
		fmt.Fprintf(tw, "%d %s\t%s %s\t%s\t%s\t%s\n", s.Number, s.summary, verdict, result, demoTime(s.took), demoUpstreamCell(s.Upstream), demoDescribeAnswers(s.Answers))
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
		verdict = fmt.Sprintf("%d of %d steps did NOT behave as expected", demoCountNotOK(d.rep.Steps), len(d.rep.Steps))
	}
	fmt.Fprintf(out, "Demo finished in %s: %s.\n", demoTime(took), verdict)
}

// endOutage stops the outage and waits until lifeboat sees the upstream up again; it returns
// how long that took.
func (d *demo) endOutage(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if _, err := d.sim.Stop(ctx); err != nil {
		return 0, fmt.Errorf("cannot stop the simulated outage: %w", err)
	}
	if ctx.Err() != nil {
		return 0, ctx.Err() // reported as an interruption
	}
	ctx, cancel := context.WithTimeout(ctx, demoRecoveryTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		allUp := true
		for _, ep := range d.res.Endpoints() {
			allUp = allUp && ep.Up
		}
		if allUp {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("lifeboat did not see the demo registry up again within %s of the outage's end", demoRecoveryTimeout)
		case <-tick.C:
		}
	}
}

// pull pulls ref through the mirror with containerd's resolver and fetcher, into a new
// containerd content store in dir.
func (d *demo) pull(ctx context.Context, ref, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, demoPullTimeout)
	defer cancel()
	r := docker.NewResolver(docker.ResolverOptions{Hosts: d.hosts})
	resolved, desc, err := r.Resolve(ctx, ref)
	if err != nil {
		return err
	}
	fetcher, err := r.Fetcher(ctx, resolved)
	if err != nil {
		return err
	}
	cs, err := local.NewStore(dir)
	if err != nil {
		return err
	}
	// FetchHandler verifies every blob against its digest as it writes it.
	return images.Dispatch(ctx, images.Handlers(remotes.FetchHandler(cs, fetcher), images.ChildrenHandler(cs)), nil, desc)
}

// hosts is containerd's host configuration for every registry: the mirror alone.
func (d *demo) hosts(string) ([]docker.RegistryHost, error) {
	return []docker.RegistryHost{{
		Client: d.client, Host: d.mirror, Scheme: "http", Path: "/v2",
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
	}}, nil
}

// whyNot asks the mirror for ref's manifest with a GET and returns the message of its error
// answer.
func (d *demo) whyNot(ctx context.Context, ref string) string {
	repoTag := strings.TrimPrefix(ref, demoRegistry+"/")
	repo, tag, _ := strings.Cut(repoTag, ":")
	u := "http://" + d.mirror + "/v2/" + repo + "/manifests/" + tag + "?ns=" + url.QueryEscape(demoRegistry)
	ctx, cancel := context.WithTimeout(ctx, demoPullTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return ""
	}
	req.Header.Set("Accept", strings.Join([]string{ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2ManifestList}, ", "))
	resp, err := d.plain.Do(req)
	if err != nil {
		return "(no answer: " + err.Error() + ")"
	}
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &body) != nil || len(body.Errors) == 0 {
		return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return fmt.Sprintf("%d %s: %s", resp.StatusCode, body.Errors[0].Code, body.Errors[0].Message)
}

// demoServe serves h on a free port of 127.0.0.1 until stop is called. stop closes the
// connections at once: the demo stops its servers when no request is left, and Shutdown would
// wait for connections a client opened but never used.
func demoServe(h http.Handler) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // ends with http.ErrServerClosed
	}()
	return ln.Addr().String(), func() {
		_ = srv.Close()
		<-done
	}, nil
}

// demoCountingHandler counts the requests h serves and the body bytes it writes.
type demoCountingHandler struct {
	h               http.Handler
	requests, bytes atomic.Int64
}

func (c *demoCountingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.requests.Add(1)
	c.h.ServeHTTP(&demoCountingWriter{ResponseWriter: w, n: &c.bytes}, r)
}

func (c *demoCountingHandler) traffic() demoTraffic {
	return demoTraffic{Requests: c.requests.Load(), Bytes: c.bytes.Load()}
}

func (t demoTraffic) minus(u demoTraffic) demoTraffic {
	return demoTraffic{Requests: t.Requests - u.Requests, Bytes: t.Bytes - u.Bytes}
}

type demoCountingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *demoCountingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// demoRecorder is the pulls' HTTP transport: it records the mirror's answers, as a client
// sees them, and counts the body bytes received.
type demoRecorder struct {
	base  http.RoundTripper
	bytes atomic.Int64

	mu      sync.Mutex
	answers []demoRecorded
}

type demoRecorded struct {
	kind   string
	status int
	cache  string
}

func (r *demoRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.answers = append(r.answers, demoRecorded{kind: demoRequestKind(req.URL.Path), status: resp.StatusCode, cache: resp.Header.Get(demoHeaderCache)})
	r.mu.Unlock()
	resp.Body = &demoCountingBody{ReadCloser: resp.Body, n: &r.bytes}
	return resp, nil
}

// take returns the answers and bytes recorded since the last take, and forgets them.
func (r *demoRecorder) take() ([]demoRecorded, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.answers
	r.answers = nil
	return a, r.bytes.Swap(0)
}

type demoCountingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *demoCountingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// demoRequestKind classifies a registry API path: "tag", "manifest" (by digest), "blob", or "other".
func demoRequestKind(path string) string {
	switch {
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.Contains(path, "/manifests/"):
		ref := path[strings.LastIndex(path, "/")+1:]
		if _, err := digest.Parse(ref); err == nil {
			return "manifest"
		}
		return "tag"
	}
	return "other"
}

var demoKindOrder = []string{"tag", "manifest", "blob", "other"}

// demoGroup counts the answers by kind, status and cache value, tags first.
func demoGroup(as []demoRecorded) []demoAnswer {
	out := []demoAnswer{}
	for _, a := range as {
		i := slices.IndexFunc(out, func(g demoAnswer) bool {
			return g.Kind == a.kind && g.Status == a.status && g.Cache == a.cache
		})
		if i < 0 {
			out = append(out, demoAnswer{Kind: a.kind, Status: a.status, Cache: a.cache})
			i = len(out) - 1
		}
		out[i].Count++
	}
	slices.SortStableFunc(out, func(a, b demoAnswer) int {
		return slices.Index(demoKindOrder, a.Kind) - slices.Index(demoKindOrder, b.Kind)
	})
	return out
}

// demoAllTags reports whether there was a tag answer and every one carried want.
func demoAllTags(as []demoAnswer, want resolver.CacheStatus) bool {
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

// demoFromCache reports whether there were manifest and blob answers and every one was a hit.
func demoFromCache(as []demoAnswer) bool {
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

// demoDescribeTag says how the tag was answered: "stale", "404 not found", "never".
func demoDescribeTag(as []demoAnswer) string {
	var parts []string
	for _, a := range as {
		if a.Kind == "tag" {
			parts = append(parts, strings.TrimPrefix(demoDescribeAnswers([]demoAnswer{a}), a.Kind+" "))
		}
	}
	if len(parts) == 0 {
		return "never"
	}
	return strings.Join(parts, ", ")
}

// demoDescribeAnswers says "tag miss, manifest hit, 4 blobs miss".
func demoDescribeAnswers(as []demoAnswer) string {
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

func demoDescribeUpstream(s demoStep) string {
	switch {
	case s.Upstream.Requests == 0 && s.Outage != "":
		return "nothing reached the registry"
	case s.Upstream.Requests == 0:
		return "lifeboat did not ask the registry"
	case s.Upstream.Bytes == 0:
		return fmt.Sprintf("the registry got %s and sent no content", demoPlural(s.Upstream.Requests, "request"))
	}
	return fmt.Sprintf("the registry got %s and sent %s", demoPlural(s.Upstream.Requests, "request"), humanBytes(s.Upstream.Bytes))
}

func demoUpstreamCell(t demoTraffic) string {
	if t.Requests == 0 {
		return "nothing"
	}
	return fmt.Sprintf("%s, %s", demoPlural(t.Requests, "request"), humanBytes(t.Bytes))
}

func demoPlural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func demoCountNotOK(steps []demoStep) int {
	n := 0
	for _, s := range steps {
		if !s.OK {
			n++
		}
	}
	return n
}

func demoDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

func demoOrNone(s string) string {
	if s == "" {
		return "(nothing)"
	}
	return s
}

// demoMs is d in milliseconds, to a tenth.
func demoMs(d time.Duration) float64 {
	return float64(d.Round(100*time.Microsecond)) / float64(time.Millisecond)
}

// demoTime prints a time for people: "38ms", "1.24s".
func demoTime(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}
