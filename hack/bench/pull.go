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
	layers       int
	layerSize    int64
	plain, snaps []time.Duration
}

// ctrd is a containerd started for the benchmark, with its own root, state and sockets.
type ctrd struct {
	*daemon
	address string
	ctr     string
}

func (c *ctrd) run(ns string, args ...string) error {
	cmd := exec.Command(c.ctr, append([]string{"--address", c.address, "--namespace", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// startContainerd runs containerd with overlayfs and lifeboat's snapshotter as a proxy plugin
// (remote snapshot annotations exported, an unpack_config naming it), and nothing else that
// listens or writes outside dir.
func startContainerd(dir, tools, lifeboatSocket string) (*ctrd, error) {
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
	for c.run("default", "version") != nil {
		if time.Now().After(deadline) {
			d.stop()
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			return nil, fmt.Errorf("containerd did not come up:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c, nil
}

// pullBench times `ctr image pull` of a multi-layer image with lifeboat's cache warm: unpacked
// by containerd into overlayfs, fetching every layer through the mirror, against unpacked by
// lifeboat's snapshotter straight from its cache. Rounds alternate; each pull starts with the
// image and its content removed from containerd.
func pullBench(ctx context.Context, scratch, tools, lifeboat string, layers int, layerSize int64, rounds int) (pullResults, error) {
	res := pullResults{layers: layers, layerSize: layerSize}
	if os.Geteuid() != 0 {
		return res, fmt.Errorf("the pull benchmark runs containerd and needs root")
	}
	reg, regAddr, err := startRegistry(filepath.Join(scratch, "pull"), tools)
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
	lbDir := filepath.Join(scratch, "pull", "lifeboat")
	lb, lbAddr, err := startLifeboat(lbDir, lifeboat, regAddr)
	if err != nil {
		return res, err
	}
	defer lb.stop()
	// startLifeboat puts the plugin socket at lbDir/l.sock.
	ctd, err := startContainerd(filepath.Join(scratch, "pull", "containerd"), tools, filepath.Join(lbDir, "l.sock"))
	if err != nil {
		return res, err
	}
	defer ctd.stop()
	hosts := filepath.Join(scratch, "pull", "hosts", "docker.io")
	if err := os.MkdirAll(hosts, 0o755); err != nil {
		return res, err
	}
	toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", lbAddr, lbAddr)
	if err := os.WriteFile(filepath.Join(hosts, "hosts.toml"), []byte(toml), 0o644); err != nil {
		return res, err
	}
	const image = "docker.io/library/pullbench:1"
	pull := func(ns string, extra ...string) (time.Duration, error) {
		args := append([]string{"images", "pull", "--hosts-dir", filepath.Dir(hosts)}, extra...)
		start := time.Now()
		if err := ctd.run(ns, append(args, image)...); err != nil {
			return 0, err
		}
		d := time.Since(start)
		return d, ctd.run(ns, "images", "rm", "--sync", image)
	}
	// Warm lifeboat's cache (and check both paths work) before measuring.
	if _, err := pull("warm"); err != nil {
		return res, err
	}
	for range rounds {
		d, err := pull("plain")
		if err != nil {
			return res, err
		}
		res.plain = append(res.plain, d)
		d, err = pull("snap", "--snapshotter", "lifeboat")
		if err != nil {
			return res, err
		}
		res.snaps = append(res.snaps, d)
	}
	return res, nil
}

func renderPull(b *strings.Builder, r pullResults) {
	fmt.Fprintf(b, "\n## containerd pull with the cache warm, %d × %d MiB layers (`ctr images pull` through hosts.toml)\n\n", r.layers, r.layerSize>>20)
	fmt.Fprintf(b, "| unpacked by | median pull time |\n|---|---:|\n")
	fmt.Fprintf(b, "| containerd into overlayfs, layers fetched through the mirror (baseline) | %s |\n", median(r.plain).Round(time.Millisecond))
	fmt.Fprintf(b, "| lifeboat's snapshotter, layers applied from its cache | %s |\n", median(r.snaps).Round(time.Millisecond))
	fmt.Fprintf(b, "\nRatio (baseline time / snapshotter time, higher is better): %.2f\n", median(r.plain).Seconds()/median(r.snaps).Seconds())
}
