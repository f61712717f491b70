// Command bench measures lifeboat against baselines taken in the same run, and writes the
// results as a markdown report. Run it with `make bench`.
//
// The machines this runs on are shared and noisy, so every figure is reported as a ratio to a
// baseline measured alternately with it, over several rounds, taking medians.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type result struct {
	name, baseline string
	bytes          int64
	subject, base  []time.Duration
}

func (r result) rate(ds []time.Duration) float64 {
	return float64(r.bytes) / median(ds).Seconds() / (1 << 20)
}

func (r result) ratio() float64 { return r.rate(r.subject) / r.rate(r.base) }

// row is the result as a markdown table row: operation, MiB/s, baseline, baseline MiB/s, ratio,
// each throughput a median with its range.
func (r result) row() string {
	return fmt.Sprintf("| %s | %s | %s | %s | %.2f |\n", r.name, rateSpread(r.bytes, r.subject), r.baseline, rateSpread(r.bytes, r.base), r.ratio())
}

// throughputJSON is one row of a throughput table.
type throughputJSON struct {
	Operation       string  `json:"operation"`
	MiBPerS         float64 `json:"mib_per_s"`
	Baseline        string  `json:"baseline"`
	BaselineMiBPerS float64 `json:"baseline_mib_per_s"`
	Ratio           float64 `json:"ratio"`
}

func (r result) json() throughputJSON {
	return throughputJSON{Operation: r.name, MiBPerS: r.rate(r.subject), Baseline: r.baseline, BaselineMiBPerS: r.rate(r.base), Ratio: r.ratio()}
}

func run() error {
	start := time.Now()
	out := flag.String("out", "", "write the markdown report to this file too")
	jsonOut := flag.String("json", "", "write every figure as JSON to this file")
	size := flag.Int64("size", 256<<20, "blob size in bytes")
	rounds := flag.Int("rounds", 9, "rounds per measurement (medians are reported)")
	largeSize := flag.Int64("large-size", 1<<30, "the large blob's size in bytes, for single-client GETs against the proxy")
	largeRounds := flag.Int("large-rounds", 5, "rounds for the large blob")
	tagRounds := flag.Int("tag-rounds", 5, "rounds of tag HEAD loads, each party once a round")
	fanRounds := flag.Int("fan-rounds", 5, "rounds of the fan-out")
	pullRounds := flag.Int("pull-rounds", 5, "rounds of containerd pulls")
	fallbackDeadline := flag.Duration("fallback-deadline", 3*time.Minute,
		"cut containerd's own fallback pull from a blackholed mirror after this long (it waits 30 s per request to the mirror)")
	dir := flag.String("dir", "", "scratch directory, on the filesystem to measure (default: a temp dir)")
	tools := flag.String("tools", "bin/tools", "directory of the pinned tools (make tools)")
	clusterSize := flag.Int64("cluster-size", 256<<20, "bytes of the image a fresh cluster node fetches from a peer")
	only := flag.String("only", "", "run only these sections, comma-separated (cache, mirror, claims, anchors, cold, pull, cluster): "+
		"for trying a section; the report then holds only them, so do not write docs/benchmarks.md with it")
	flag.Parse()
	if *only != "" && (*out != "" || *jsonOut != "") {
		return fmt.Errorf("-only runs part of the benchmark: its report is not one to write with -out or -json")
	}
	selected := func(section string) bool { return *only == "" || slices.Contains(strings.Split(*only, ","), section) }

	scratch, err := os.MkdirTemp(*dir, "lifeboat-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)

	ctx := context.Background()
	rep := report{size: *size, rounds: *rounds, ran: map[string]bool{}}
	if *jsonOut != "" {
		rep.jsonName = filepath.Base(*jsonOut)
	}
	if selected("cache") {
		rep.ran["cache"] = true
		if rep.cache, err = cacheThroughput(ctx, scratch, *size, *rounds); err != nil {
			return err
		}
	}
	bin := filepath.Join(scratch, "lifeboat")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/lifeboat").CombinedOutput(); err != nil {
		return fmt.Errorf("build lifeboat: %v\n%s", err, out)
	}
	tdir, err := filepath.Abs(*tools)
	if err != nil {
		return err
	}
	rep.env = describeEnvironment(start, tdir)
	if selected("mirror") {
		rep.ran["mirror"] = true
		if rep.mirror, err = mirrorBench(ctx, scratch, tdir, bin, *size, *rounds, *tagRounds); err != nil {
			return fmt.Errorf("mirror benchmark: %w", err)
		}
	}
	if selected("claims") {
		rep.ran["claims"] = true
		if rep.claims, err = claimsBench(ctx, scratch, tdir, bin, max(*rounds, 5)); err != nil {
			return fmt.Errorf("claims benchmark: %w", err)
		}
	}
	if selected("anchors") {
		rep.ran["anchors"] = true
		if rep.anchors, err = anchorBench(ctx, scratch, tdir, bin, *size, *rounds, *largeSize, *largeRounds, *fanRounds); err != nil {
			return fmt.Errorf("anchor benchmark: %w", err)
		}
	}
	if selected("cold") {
		rep.ran["cold"] = true
		if rep.cold, err = coldBench(ctx, scratch, tdir, bin, *size, max(*rounds/2+1, 5)); err != nil {
			return fmt.Errorf("cold benchmark: %w", err)
		}
	}
	if selected("cluster") {
		cres, err := clusterBench(ctx, scratch, tdir, bin, *clusterSize, 5)
		if err != nil {
			return fmt.Errorf("cluster benchmark: %w", err)
		}
		rep.cluster = &cres
	}
	if rep.env.AsRoot && selected("pull") {
		pres, err := pullBench(ctx, scratch, tdir, bin, 5, 32<<20, *pullRounds, *fallbackDeadline)
		if err != nil {
			return fmt.Errorf("pull benchmark: %w", err)
		}
		rep.pull = &pres
	}
	rep.env.TotalRunSeconds = time.Since(start).Seconds()

	md := rep.markdown()
	fmt.Print(md)
	if err := writeFile(*out, []byte(md)); err != nil {
		return err
	}
	if *jsonOut != "" {
		js, err := json.MarshalIndent(rep.json(), "", "  ")
		if err != nil {
			return err
		}
		return writeFile(*jsonOut, append(js, '\n'))
	}
	return nil
}

// writeFile writes data to path, creating its directory; an empty path writes nothing.
func writeFile(path string, data []byte) error {
	if path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// cacheThroughput compares writing a blob into the cache (hash, fsync, rename, index) with a
// durable plain file copy of the same bytes (write, fsync, rename), and reading it back from
// the cache with reading the plain file.
func cacheThroughput(ctx context.Context, scratch string, size int64, rounds int) ([]result, error) {
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(data)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: size}

	store, err := cache.Open(ctx, filepath.Join(scratch, "cache"), cache.Options{MaxSize: 4 * size})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	plain := filepath.Join(scratch, "plain")
	buf := make([]byte, 1<<20)

	write := result{name: "cache write (verify + fsync + commit)", baseline: "file copy + fsync + rename", bytes: size}
	read := result{name: "cache read (ReaderAt)", baseline: "file read", bytes: size}
	for i := range rounds {
		err := runRound(i,
			timedInto(&write.base, func() error { return copyFile(plain, data, buf) }),
			timedInto(&write.subject, func() error {
				w, err := store.Writer(ctx, content.WithRef(fmt.Sprintf("bench-%d", i)), content.WithDescriptor(desc))
				if err != nil {
					return err
				}
				defer w.Close()
				if _, err := io.CopyBuffer(w, bytes.NewReader(data), buf); err != nil {
					return err
				}
				return w.Commit(ctx, size, desc.Digest)
			}))
		if err != nil {
			return nil, err
		}
		err = runRound(i,
			timedInto(&read.base, func() error {
				f, err := os.Open(plain)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
				return err
			}),
			timedInto(&read.subject, func() error {
				ra, err := store.ReaderAt(ctx, desc)
				if err != nil {
					return err
				}
				defer ra.Close()
				_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{io.NewSectionReader(ra, 0, ra.Size())}, buf)
				return err
			}))
		if err != nil {
			return nil, err
		}
		if err := store.Delete(ctx, desc.Digest); err != nil {
			return nil, err
		}
	}
	return []result{write, read}, nil
}

func copyFile(dst string, data, buf []byte) error {
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(f, bytes.NewReader(data), buf); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func timed(fn func() error) (time.Duration, error) {
	start := time.Now()
	err := fn()
	return time.Since(start), err
}
