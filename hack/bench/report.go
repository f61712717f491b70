package main

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// report gathers every measurement of a run; markdown and json render the same figures.
type report struct {
	env      environment
	size     int64
	rounds   int
	jsonName string // the JSON report's file name, for the markdown one to point at; "" for none
	cache    []result
	mirror   mirrorResults
	anchors  anchorResults
	cold     coldResults
	claims   claimResults
	pull     *pullResults // nil when not run as root
	cluster  *clusterResults
	ran      map[string]bool // the sections run (-only); pull and cluster: when not nil
}

// environment says how the run was started, on what machine, with which versions.
type environment struct {
	Command         string  `json:"command"`
	MakeTarget      string  `json:"make_target,omitempty"` // "bench" when started by make
	AsRoot          bool    `json:"as_root"`
	Date            string  `json:"date"`
	TotalRunSeconds float64 `json:"total_run_seconds"`
	CPU             string  `json:"cpu"`
	CPUs            int     `json:"cpus"`
	MemoryMiB       int64   `json:"memory_mib"`
	Kernel          string  `json:"kernel"`
	GoVersion       string  `json:"go_version"`
	Containerd      string  `json:"containerd_version"`
	Registry        string  `json:"registry_version"`
	Lifeboat        string  `json:"lifeboat_version"`
}

func describeEnvironment(start time.Time, tools string) environment {
	env := environment{
		Command:    commandLine(),
		AsRoot:     os.Geteuid() == 0,
		Date:       start.UTC().Format(time.RFC3339),
		CPU:        machine(),
		CPUs:       runtime.NumCPU(),
		MemoryMiB:  memTotal() >> 20,
		Kernel:     kernel(),
		GoVersion:  strings.TrimPrefix(runtime.Version(), "go"),
		Containerd: moduleVersion(filepath.Join(tools, "containerd")),
		Registry:   moduleVersion(filepath.Join(tools, "registry")),
		Lifeboat:   lifeboatVersion(),
	}
	// make sets MAKELEVEL for its recipes, and only the bench target runs this program.
	if os.Getenv("MAKELEVEL") != "" {
		env.MakeTarget = "bench"
	}
	return env
}

// commandLine is the go run command that started the benchmark, with paths under the working
// directory made relative so that the report does not depend on where the checkout is.
func commandLine() string {
	wd, _ := os.Getwd()
	args := []string{"go", "run", "./hack/bench"}
	for _, a := range os.Args[1:] {
		if rel, err := filepath.Rel(wd, a); err == nil && filepath.IsAbs(a) && !strings.HasPrefix(rel, "..") {
			a = rel
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}

// moduleVersion is the main module version a Go binary was built at (what `go version -m`
// shows, and what hack/tools.sh pins), or "unknown".
func moduleVersion(bin string) string {
	info, err := buildinfo.ReadFile(bin)
	if err != nil || info.Main.Version == "" {
		return "unknown"
	}
	return info.Main.Version
}

// lifeboatVersion describes the checkout the way the Makefile's VERSION does: the benchmark
// builds lifeboat without stamping a version, and GOFLAGS may turn off VCS stamping.
func lifeboatVersion() string {
	out, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func machine() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// memTotal is the machine's memory in bytes, or 0 if /proc/meminfo cannot be read.
func memTotal() int64 { return procKB("/proc/meminfo", "MemTotal:") }

// procKB reads the "<field> N kB" line of a /proc file, in bytes; 0 if it cannot.
func procKB(path, field string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func kernel() string {
	out, err := exec.Command("uname", "-sr").Output()
	if err != nil {
		return runtime.GOOS
	}
	return strings.TrimSpace(string(out))
}

func (r report) markdown() string {
	var b strings.Builder
	e := r.env
	fmt.Fprintf(&b, "# lifeboat benchmarks\n\n")
	who := "as root"
	if !e.AsRoot {
		who = "not as root"
	}
	if e.MakeTarget != "" {
		fmt.Fprintf(&b, "Produced by `make %s`, which ran `%s` (%s),", e.MakeTarget, e.Command, who)
	} else {
		fmt.Fprintf(&b, "Produced by `%s` (%s),", e.Command, who)
	}
	fmt.Fprintf(&b, " on %s; the whole run took %s.", e.Date[:len("2006-01-02")], (time.Duration(e.TotalRunSeconds * float64(time.Second))).Round(time.Second))
	if r.jsonName != "" {
		fmt.Fprintf(&b, " Every figure is also in %s.", r.jsonName)
	}
	fmt.Fprintf(&b, "\n\nMachine: %s, %d CPUs, %.1f GiB of memory, %s. Versions: Go %s, containerd and ctr %s, distribution registry %s, lifeboat %s.\n\n",
		e.CPU, e.CPUs, float64(e.MemoryMiB)/1024, e.Kernel, e.GoVersion, e.Containerd, e.Registry, e.Lifeboat)
	fmt.Fprintf(&b, "Medians of %d rounds unless a section says otherwise, with the lowest and highest figure of the\n", r.rounds)
	fmt.Fprintf(&b, "rounds in brackets. In every comparison the parties alternate: each round runs them in turn, the\n")
	fmt.Fprintf(&b, "order reversed every other round, so that none always goes first. Each ratio is lifeboat's figure\n")
	fmt.Fprintf(&b, "divided by the baseline's, of the medians, both measured in the same run (higher is better).\n\n")
	if r.ran["cache"] {
		fmt.Fprintf(&b, "## Cache throughput, one %d MiB blob\n\n", r.size>>20)
		fmt.Fprintf(&b, "| operation | MiB/s | baseline | baseline MiB/s | ratio |\n|---|---:|---|---:|---:|\n")
		for _, c := range r.cache {
			b.WriteString(c.row())
		}
	}
	if r.ran["mirror"] {
		renderMirror(&b, r.mirror, r.size)
	}
	if r.ran["anchors"] {
		renderAnchors(&b, r.anchors)
	}
	if r.ran["cold"] {
		renderCold(&b, r.cold)
	}
	if r.ran["claims"] {
		renderClaims(&b, r.claims)
	}
	if r.pull != nil {
		renderPull(&b, *r.pull)
	} else if r.env.AsRoot {
		fmt.Fprintf(&b, "\n(The containerd pull benchmark was not run.)\n")
	} else {
		fmt.Fprintf(&b, "\n(The containerd pull benchmark was skipped: it runs containerd and needs root.)\n")
	}
	if r.cluster != nil {
		renderCluster(&b, *r.cluster)
	}
	return b.String()
}

// reportJSON is the JSON report. Field names carry their units; they are kept stable so that
// runs can be compared by machine.
type reportJSON struct {
	Environment environment      `json:"environment"`
	BlobSizeMiB int64            `json:"blob_size_mib"`
	Rounds      int              `json:"rounds"`
	Cache       []throughputJSON `json:"cache_throughput"`
	Mirror      mirrorJSON       `json:"mirror"`
	Anchors     anchorsJSON      `json:"against_distribution_proxy"`
	Cold        *coldJSON        `json:"cold_miss,omitempty"` // absent when not run (-only)
	Claims      claimsJSON       `json:"claims"`
	Pull        *pullJSON        `json:"containerd_pull,omitempty"` // absent when not run as root
	Cluster     *clusterJSON     `json:"cluster,omitempty"`
}

func (r report) json() reportJSON {
	j := reportJSON{Environment: r.env, BlobSizeMiB: r.size >> 20, Rounds: r.rounds, Mirror: r.mirror.json(), Anchors: r.anchors.json(), Claims: r.claims.json()}
	for _, c := range r.cache {
		j.Cache = append(j.Cache, c.json())
	}
	if r.ran["cold"] {
		c := r.cold.json()
		j.Cold = &c
	}
	if r.pull != nil {
		p := r.pull.json()
		j.Pull = &p
	}
	if r.cluster != nil {
		c := r.cluster.json()
		j.Cluster = &c
	}
	return j
}

// mib is n bytes in MiB, for the JSON report.
func mib(n int64) float64 { return float64(n) / (1 << 20) }

func fmtSec(d time.Duration) string { return fmt.Sprintf("%.0f s", d.Seconds()) }

func mibps(size int64, ds []time.Duration) float64 {
	return float64(size) / median(ds).Seconds() / (1 << 20)
}

// sizeName is n bytes rounded down to whole MiB, or GiB when that is a whole number of them.
func sizeName(n int64) string {
	if m := n >> 20; m >= 1024 && m%1024 == 0 {
		return fmt.Sprintf("%d GiB", m>>10)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// goal marks a figure that has a goal with whether this run met it.
func goal(met bool) string {
	if met {
		return " (goal met)"
	}
	return " (goal not met)"
}

// linkName names a link rate in bytes/s as bits per second.
func linkName(bytesPerSec int64) string {
	bits := bytesPerSec * 8
	if bits%1_000_000_000 == 0 {
		return fmt.Sprintf("%d Gbit/s", bits/1_000_000_000)
	}
	return fmt.Sprintf("%d Mbit/s", bits/1_000_000)
}
