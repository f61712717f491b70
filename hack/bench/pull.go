package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lifeboat-dev/lifeboat/hosts"
	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// pullResults holds what pullBench measured.
type pullResults struct {
	layers    int
	layerSize int64
	rounds    int

	// The cache warm: straight from the upstream, through the mirror into overlayfs, and through
	// lifeboat's snapshotter.
	direct, plain, snaps []time.Duration

	// The upstream blackholed: through lifeboat with its cache warm, in order (the first one
	// meets the outage fresh), and containerd alone falling back from a blackholed mirror.
	outage           []time.Duration
	fallback         time.Duration
	fallbackDeadline time.Duration
	fallbackFinished bool  // false: cut at fallbackDeadline
	fallbackErr      error // the pull finished, and failed

	// lifeboat stopped, hosts.toml as `lifeboat configure containerd` writes it (lifeboat, then
	// the upstream as server): containerd's connection to lifeboat is refused and it goes to
	// the upstream; alternated with the direct pull, the first party swapped each round.
	lbDown, lbDownDirect []time.Duration
}

// writeHosts writes the hosts.toml cfg describes into the hosts directory dir, and returns dir.
func writeHosts(dir string, cfg hosts.Config) (string, error) {
	return dir, cfg.Write(dir)
}

// stderrLog is a launch.Logger that writes to the benchmark's standard error.
type stderrLog struct{}

func (stderrLog) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// pullBench times `ctr image pull` of a multi-layer image, each pull starting with the image and
// its content removed from containerd, so that every blob comes over the network.
//
// With lifeboat's cache warm, rounds alternate (see order): straight from the upstream registry into
// overlayfs (the baseline), through lifeboat into overlayfs, and unpacked by lifeboat's
// snapshotter straight from its cache. Then, with lifeboat's upstream blackholed (`lifeboat
// outage start --mode blackhole`), rounds of pulls through lifeboat alone; and once, containerd
// without lifeboat: a hosts.toml whose mirror accepts connections and never answers, in front of
// the real upstream as server, cut at fallbackDeadline.
func pullBench(ctx context.Context, scratch, tools, lifeboat string, layers int, layerSize int64, rounds int, fallbackDeadline time.Duration) (pullResults, error) {
	res := pullResults{layers: layers, layerSize: layerSize, rounds: rounds, fallbackDeadline: fallbackDeadline}
	if os.Geteuid() != 0 {
		return res, fmt.Errorf("the pull benchmark runs containerd and needs root")
	}
	base := filepath.Join(scratch, "pull")
	reg, regAddr, err := startRegistry(base, tools)
	if err != nil {
		return res, err
	}
	defer reg.stop()
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		return res, err
	}
	ref, err := name.ParseReference(regAddr+"/library/pullbench:1", name.Insecure)
	if err != nil {
		return res, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return res, err
	}
	lbDir := filepath.Join(base, "lifeboat")
	lb, lbAddr, err := startLifeboat(lbDir, lifeboat, regAddr)
	if err != nil {
		return res, err
	}
	defer lb.stop()
	// containerd with overlayfs and lifeboat's snapshotter as a proxy plugin. startLifeboat puts
	// the plugin socket at lbDir/l.sock and the admin socket at lbDir/a.sock.
	ctd, err := launch.StartContainerd(launch.ContainerdOptions{
		Tools:       tools,
		Dir:         filepath.Join(base, "containerd"),
		LogLevel:    "warn",
		ExtraConfig: launch.SnapshotterConfig(filepath.Join(lbDir, "l.sock")),
	})
	if err != nil {
		return res, err
	}
	defer func() {
		if err := errors.Join(ctd.Stop(stderrLog{}), ctd.RemoveDir()); err != nil {
			stderrLog{}.Logf("%v", err)
		}
	}()
	// Through lifeboat alone: no fallback to the upstream, so a pull during the outage that
	// succeeds was served by lifeboat.
	mirrorHosts, err := writeHosts(filepath.Join(base, "hosts-mirror"), hosts.Config{Registry: "docker.io", Mirror: "http://" + lbAddr})
	if err != nil {
		return res, err
	}
	directHosts, err := writeHosts(filepath.Join(base, "hosts-direct"), hosts.Config{Registry: "docker.io", Upstream: "http://" + regAddr})
	if err != nil {
		return res, err
	}
	const image = "docker.io/library/pullbench:1"
	pull := func(ns, hostsDir string, extra ...string) (time.Duration, error) {
		args := append([]string{"images", "pull", "--hosts-dir", hostsDir}, extra...)
		in := ctd.WithNamespace(ns)
		start := time.Now()
		if _, err := in.RunCtr(ctx, append(args, image)...); err != nil {
			return 0, err
		}
		d := time.Since(start)
		_, err := in.RunCtr(ctx, "images", "rm", "--sync", image)
		return d, err
	}
	// Warm lifeboat's cache (and check both paths work) before measuring.
	if _, err := pull("warm", mirrorHosts); err != nil {
		return res, err
	}
	pullInto := func(into *[]time.Duration, ns, hostsDir string, extra ...string) func() error {
		return func() error {
			d, err := pull(ns, hostsDir, extra...)
			if err != nil {
				return err
			}
			*into = append(*into, d)
			return nil
		}
	}
	if err := alternate(rounds,
		pullInto(&res.direct, "direct", directHosts),
		pullInto(&res.plain, "plain", mirrorHosts),
		pullInto(&res.snaps, "snap", mirrorHosts, "--snapshotter", "lifeboat")); err != nil {
		return res, err
	}

	// The outage, through lifeboat.
	admin := "--admin-socket=" + filepath.Join(lbDir, "a.sock")
	if out, err := exec.CommandContext(ctx, lifeboat, "outage", "start", "--mode", "blackhole", admin).CombinedOutput(); err != nil {
		return res, fmt.Errorf("lifeboat outage start: %v\n%s", err, out)
	}
	for range rounds {
		if err := pullInto(&res.outage, "outage", mirrorHosts)(); err != nil {
			return res, fmt.Errorf("pull through lifeboat during its outage: %w", err)
		}
	}
	// Release the requests the blackhole holds, so that lifeboat stops promptly.
	if out, err := exec.CommandContext(ctx, lifeboat, "outage", "stop", admin).CombinedOutput(); err != nil {
		return res, fmt.Errorf("lifeboat outage stop: %v\n%s", err, out)
	}

	// lifeboat down: the fail-open hosts.toml sends containerd to the upstream at once.
	failOpenHosts, err := writeHosts(filepath.Join(base, "hosts-failopen"),
		hosts.Config{Registry: "docker.io", Mirror: "http://" + lbAddr, Fallback: true, Upstream: "http://" + regAddr})
	if err != nil {
		return res, err
	}
	lb.stop()
	if err := alternate(rounds, pullInto(&res.lbDown, "down", failOpenHosts), pullInto(&res.lbDownDirect, "down", directHosts)); err != nil {
		return res, fmt.Errorf("pull with lifeboat stopped: %w", err)
	}

	// containerd on its own: the mirror blackholed, the upstream up as server. The forwarder,
	// blackholed before its first connection, never dials its target.
	black, err := startForwarder(regAddr)
	if err != nil {
		return res, err
	}
	defer black.close()
	black.blackhole()
	fallbackHosts, err := writeHosts(filepath.Join(base, "hosts-fallback"),
		hosts.Config{Registry: "docker.io", Mirror: "http://" + black.addr(), Fallback: true, Upstream: "http://" + regAddr})
	if err != nil {
		return res, err
	}
	fctx, cancel := context.WithTimeout(ctx, fallbackDeadline)
	defer cancel()
	start := time.Now()
	_, err = ctd.WithNamespace("fallback").RunCtr(fctx, "images", "pull", "--hosts-dir", fallbackHosts, image)
	res.fallback = time.Since(start)
	switch {
	case fctx.Err() != nil: // cut at the deadline: ctr was killed, which cancels the pull
	case err != nil:
		res.fallbackFinished, res.fallbackErr = true, err
	default:
		res.fallbackFinished = true
	}
	return res, nil
}

// fallbackOutcome is how containerd's own fallback pull ended: succeeded, failed or
// cut_at_deadline.
func (r pullResults) fallbackOutcome() string {
	switch {
	case !r.fallbackFinished:
		return "cut_at_deadline"
	case r.fallbackErr != nil:
		return "failed"
	}
	return "succeeded"
}

func renderPull(b *strings.Builder, r pullResults) {
	fmt.Fprintf(b, "\n## containerd pull, %d × %d MiB layers (`ctr images pull` through hosts.toml)\n\n", r.layers, r.layerSize>>20)
	fmt.Fprintf(b, "Each pull starts with the image and its content removed from containerd, so every blob comes over\n"+
		"the network; medians of %d rounds with min–max in brackets, the parties of each table alternating,\n"+
		"in the order reversed every other round.\n\n", r.rounds)
	fmt.Fprintf(b, "### lifeboat's cache warm\n\n")
	fmt.Fprintf(b, "| pulled | pull time | ÷ straight from the upstream (lower is better) |\n|---|---:|---:|\n")
	ratio := func(ds []time.Duration) float64 { return median(ds).Seconds() / median(r.direct).Seconds() }
	fmt.Fprintf(b, "| straight from the upstream registry, into overlayfs (baseline) | %s | 1.00 |\n", durSpread(r.direct))
	fmt.Fprintf(b, "| through lifeboat, into overlayfs | %s | %.2f |\n", durSpread(r.plain), ratio(r.plain))
	fmt.Fprintf(b, "| through lifeboat, layers applied by lifeboat's snapshotter from its cache | %s | %.2f |\n", durSpread(r.snaps), ratio(r.snaps))
	fmt.Fprintf(b, "\nThrough lifeboat into overlayfs ÷ through lifeboat's snapshotter (higher is better): %.2f\n", median(r.plain).Seconds()/median(r.snaps).Seconds())

	fmt.Fprintf(b, "\n### lifeboat stopped\n\n")
	fmt.Fprintf(b, "hosts.toml as `lifeboat configure containerd` writes it (lifeboat first, the upstream as server), lifeboat\n"+
		"not running: containerd's connection is refused and it goes to the upstream. Medians of %d rounds\n"+
		"alternating with the straight pull, the first party swapped each round; min–max in brackets.\n\n", len(r.lbDown))
	fmt.Fprintf(b, "| pulled | pull time | ÷ straight from the upstream |\n|---|---:|---:|\n")
	fmt.Fprintf(b, "| fail-open hosts.toml, lifeboat stopped | %s | %.2f |\n| straight from the upstream (baseline) | %s | 1.00 |\n",
		durSpread(r.lbDown), median(r.lbDown).Seconds()/median(r.lbDownDirect).Seconds(), durSpread(r.lbDownDirect))

	fmt.Fprintf(b, "\n### The upstream blackholed\n\n")
	fmt.Fprintf(b, "| pulled | pull time |\n|---|---:|\n")
	fmt.Fprintf(b, "| through lifeboat, cache warm, `lifeboat outage start --mode blackhole`: the first pull | %s |\n", r.outage[0].Round(time.Millisecond))
	fmt.Fprintf(b, "| the same, median (min–max) of %d pulls one after another | %s |\n", len(r.outage), durSpread(r.outage))
	fallback := r.fallback.Round(time.Millisecond).String()
	switch r.fallbackOutcome() {
	case "cut_at_deadline":
		fallback = fmt.Sprintf("> %s (gave up)", fmtSec(r.fallbackDeadline))
	case "failed":
		fallback = fmt.Sprintf("failed after %s", fallback)
	}
	fmt.Fprintf(b, "| containerd alone: hosts.toml mirror blackholed, the upstream (up) as server | %s |\n", fallback)
	fmt.Fprintf(b, "\nThrough lifeboat, hosts.toml names only lifeboat, so these pulls were served from its cache with no\n"+
		"way around it. containerd alone: the mirror accepts TCP connections and never answers, and containerd\n"+
		"falls back to the server only once a request to the mirror has timed out (its transport waits 30 s\n"+
		"for a response), for the tag and then for each blob. ")
	switch r.fallbackOutcome() {
	case "cut_at_deadline":
		fmt.Fprintf(b, "That pull had not finished when it was\ncut at %s, so whether the fallback would have succeeded is not known from this run.\n", fmtSec(r.fallbackDeadline))
	case "failed":
		fmt.Fprintf(b, "That pull failed:\n\n```\n%s\n```\n", strings.TrimSpace(r.fallbackErr.Error()))
	default:
		fmt.Fprintf(b, "That pull succeeded through the fallback.\n")
	}
}

type pullJSON struct {
	Layers         int            `json:"layers"`
	LayerSizeBytes int64          `json:"layer_size_bytes"`
	Rounds         int            `json:"rounds"`
	Warm           pullWarmJSON   `json:"cache_warm"`
	Outage         pullOutageJSON `json:"upstream_blackholed"`
	LifeboatDown   pullDownJSON   `json:"lifeboat_stopped"`
}

type pullDownJSON struct {
	FailOpenSeconds []float64 `json:"failopen_hosts_seconds"`
	DirectSeconds   []float64 `json:"upstream_direct_seconds"`
	Ratio           float64   `json:"failopen_to_direct_ratio"` // of the medians
}

type pullWarmJSON struct {
	DirectSeconds       float64 `json:"upstream_direct_overlayfs_seconds"`
	PlainSeconds        float64 `json:"lifeboat_overlayfs_seconds"`
	SnapshotterSeconds  float64 `json:"lifeboat_snapshotter_seconds"`
	PlainToDirect       float64 `json:"lifeboat_overlayfs_to_upstream_direct_ratio"`
	SnapshotterToDirect float64 `json:"lifeboat_snapshotter_to_upstream_direct_ratio"`
	PlainToSnapshotter  float64 `json:"lifeboat_overlayfs_to_lifeboat_snapshotter_ratio"`
}

type pullOutageJSON struct {
	LifeboatSeconds         []float64 `json:"lifeboat_seconds"` // in order; the first met the outage fresh
	LifeboatFirstSeconds    float64   `json:"lifeboat_first_seconds"`
	LifeboatMedianSeconds   float64   `json:"lifeboat_median_seconds"`
	FallbackSeconds         float64   `json:"containerd_fallback_seconds"` // until it finished or was cut
	FallbackDeadlineSeconds float64   `json:"containerd_fallback_deadline_seconds"`
	FallbackOutcome         string    `json:"containerd_fallback_outcome"` // succeeded, failed or cut_at_deadline
}

func (r pullResults) json() pullJSON {
	ratio := func(a, b []time.Duration) float64 { return median(a).Seconds() / median(b).Seconds() }
	j := pullJSON{Layers: r.layers, LayerSizeBytes: r.layerSize, Rounds: r.rounds,
		Warm: pullWarmJSON{
			DirectSeconds: median(r.direct).Seconds(), PlainSeconds: median(r.plain).Seconds(), SnapshotterSeconds: median(r.snaps).Seconds(),
			PlainToDirect: ratio(r.plain, r.direct), SnapshotterToDirect: ratio(r.snaps, r.direct), PlainToSnapshotter: ratio(r.plain, r.snaps),
		},
		Outage: pullOutageJSON{
			LifeboatFirstSeconds: r.outage[0].Seconds(), LifeboatMedianSeconds: median(r.outage).Seconds(),
			FallbackSeconds: r.fallback.Seconds(), FallbackDeadlineSeconds: r.fallbackDeadline.Seconds(), FallbackOutcome: r.fallbackOutcome(),
		},
	}
	for _, d := range r.outage {
		j.Outage.LifeboatSeconds = append(j.Outage.LifeboatSeconds, d.Seconds())
	}
	j.LifeboatDown.Ratio = ratio(r.lbDown, r.lbDownDirect)
	for i := range r.lbDown {
		j.LifeboatDown.FailOpenSeconds = append(j.LifeboatDown.FailOpenSeconds, r.lbDown[i].Seconds())
		j.LifeboatDown.DirectSeconds = append(j.LifeboatDown.DirectSeconds, r.lbDownDirect[i].Seconds())
	}
	return j
}
