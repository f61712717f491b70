package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
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
}

// ctrd is a containerd started for the benchmark, with its own root, state and sockets.
type ctrd struct {
	*daemon
	address string
	ctr     string
}

// run runs ctr in namespace ns; it is killed when ctx ends.
func (c *ctrd) run(ctx context.Context, ns string, args ...string) error {
	cmd := exec.CommandContext(ctx, c.ctr, append([]string{"--address", c.address, "--namespace", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// startContainerd runs containerd with overlayfs and lifeboat's snapshotter as a proxy plugin
// (remote snapshot annotations exported, an unpack_config naming it), and nothing else that
// listens or writes outside dir.
func startContainerd(ctx context.Context, dir, tools, lifeboatSocket string) (*ctrd, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	address := filepath.Join(dir, "c.sock")
	platform := "linux/" + runtime.GOARCH
	cfg := fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs", "io.containerd.server.v1.grpc-tcp",
  "io.containerd.server.v1.debug", "io.containerd.server.v1.metrics", "io.containerd.image-verifier.v1.bindir",
  "io.containerd.monitor.container.v1.restart", "io.containerd.mount-handler.v1.erofs"]

[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""

[proxy_plugins.lifeboat]
  type = "snapshot"
  address = %[5]q
  [proxy_plugins.lifeboat.exports]
    enable_remote_snapshot_annotations = "true"

[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[6]q
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[6]q
    snapshotter = "lifeboat"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), address, address+".ttrpc", lifeboatSocket, platform)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	d, err := startDaemon(dir, filepath.Join(tools, "containerd"), []string{"--config", filepath.Join(dir, "config.toml")},
		[]string{"PATH=" + tools + ":" + os.Getenv("PATH")})
	if err != nil {
		return nil, err
	}
	c := &ctrd{daemon: d, address: address, ctr: filepath.Join(tools, "ctr")}
	deadline := time.Now().Add(30 * time.Second)
	for c.run(ctx, "default", "version") != nil {
		if time.Now().After(deadline) {
			d.stop()
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			return nil, fmt.Errorf("containerd did not come up:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c, nil
}

// writeHosts writes toml as the docker.io hosts.toml of a new hosts directory dir, and returns dir.
func writeHosts(dir, toml string) (string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "docker.io"), 0o755); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "docker.io", "hosts.toml"), []byte(toml), 0o644)
}

// pullBench times `ctr image pull` of a multi-layer image, each pull starting with the image and
// its content removed from containerd, so that every blob comes over the network.
//
// With lifeboat's cache warm, rounds alternate: straight from the upstream registry into
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
	// startLifeboat puts the plugin socket at lbDir/l.sock and the admin socket at lbDir/a.sock.
	ctd, err := startContainerd(ctx, filepath.Join(base, "containerd"), tools, filepath.Join(lbDir, "l.sock"))
	if err != nil {
		return res, err
	}
	defer ctd.stop()
	// Through lifeboat alone: no fallback to the upstream, so a pull during the outage that
	// succeeds was served by lifeboat.
	mirrorHosts, err := writeHosts(filepath.Join(base, "hosts-mirror"),
		fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", lbAddr, lbAddr))
	if err != nil {
		return res, err
	}
	directHosts, err := writeHosts(filepath.Join(base, "hosts-direct"), fmt.Sprintf("server = \"http://%s\"\n", regAddr))
	if err != nil {
		return res, err
	}
	const image = "docker.io/library/pullbench:1"
	pull := func(ns, hosts string, extra ...string) (time.Duration, error) {
		args := append([]string{"images", "pull", "--hosts-dir", hosts}, extra...)
		start := time.Now()
		if err := ctd.run(ctx, ns, append(args, image)...); err != nil {
			return 0, err
		}
		d := time.Since(start)
		return d, ctd.run(ctx, ns, "images", "rm", "--sync", image)
	}
	// Warm lifeboat's cache (and check both paths work) before measuring.
	if _, err := pull("warm", mirrorHosts); err != nil {
		return res, err
	}
	for range rounds {
		d, err := pull("direct", directHosts)
		if err != nil {
			return res, err
		}
		res.direct = append(res.direct, d)
		d, err = pull("plain", mirrorHosts)
		if err != nil {
			return res, err
		}
		res.plain = append(res.plain, d)
		d, err = pull("snap", mirrorHosts, "--snapshotter", "lifeboat")
		if err != nil {
			return res, err
		}
		res.snaps = append(res.snaps, d)
	}

	// The outage, through lifeboat.
	admin := "--admin-socket=" + filepath.Join(lbDir, "a.sock")
	if out, err := exec.CommandContext(ctx, lifeboat, "outage", "start", "--mode", "blackhole", admin).CombinedOutput(); err != nil {
		return res, fmt.Errorf("lifeboat outage start: %v\n%s", err, out)
	}
	for range rounds {
		d, err := pull("outage", mirrorHosts)
		if err != nil {
			return res, fmt.Errorf("pull through lifeboat during its outage: %w", err)
		}
		res.outage = append(res.outage, d)
	}
	// Release the requests the blackhole holds, so that lifeboat stops promptly.
	if out, err := exec.CommandContext(ctx, lifeboat, "outage", "stop", admin).CombinedOutput(); err != nil {
		return res, fmt.Errorf("lifeboat outage stop: %v\n%s", err, out)
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
		fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", regAddr, black.addr()))
	if err != nil {
		return res, err
	}
	fctx, cancel := context.WithTimeout(ctx, fallbackDeadline)
	defer cancel()
	start := time.Now()
	err = ctd.run(fctx, "fallback", "images", "pull", "--hosts-dir", fallbackHosts, image)
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
		"the network; medians of %d alternating rounds.\n\n", r.rounds)
	fmt.Fprintf(b, "### lifeboat's cache warm\n\n")
	fmt.Fprintf(b, "| pulled | median pull time | ÷ straight from the upstream (lower is better) |\n|---|---:|---:|\n")
	ratio := func(ds []time.Duration) float64 { return median(ds).Seconds() / median(r.direct).Seconds() }
	fmt.Fprintf(b, "| straight from the upstream registry, into overlayfs (baseline) | %s | 1.00 |\n", median(r.direct).Round(time.Millisecond))
	fmt.Fprintf(b, "| through lifeboat, into overlayfs | %s | %.2f |\n", median(r.plain).Round(time.Millisecond), ratio(r.plain))
	fmt.Fprintf(b, "| through lifeboat, layers applied by lifeboat's snapshotter from its cache | %s | %.2f |\n", median(r.snaps).Round(time.Millisecond), ratio(r.snaps))
	fmt.Fprintf(b, "\nThrough lifeboat into overlayfs ÷ through lifeboat's snapshotter (higher is better): %.2f\n", median(r.plain).Seconds()/median(r.snaps).Seconds())

	fmt.Fprintf(b, "\n### The upstream blackholed\n\n")
	fmt.Fprintf(b, "| pulled | pull time |\n|---|---:|\n")
	fmt.Fprintf(b, "| through lifeboat, cache warm, `lifeboat outage start --mode blackhole`: the first pull | %s |\n", r.outage[0].Round(time.Millisecond))
	fmt.Fprintf(b, "| the same, median of %d pulls one after another | %s |\n", len(r.outage), median(r.outage).Round(time.Millisecond))
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
	return j
}
