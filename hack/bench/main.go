// Command bench measures lifeboat against baselines taken in the same run, and writes the
// results as a markdown report. Run it with `make bench`.
//
// The machines this runs on are shared and noisy, so every figure is reported as a ratio to a
// baseline measured alternately with it, over several rounds, taking medians.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func run() error {
	out := flag.String("out", "", "write the markdown report to this file too")
	size := flag.Int64("size", 256<<20, "blob size in bytes")
	rounds := flag.Int("rounds", 9, "rounds per measurement (medians are reported)")
	dir := flag.String("dir", "", "scratch directory, on the filesystem to measure (default: a temp dir)")
	tools := flag.String("tools", "bin/tools", "directory of the pinned tools (make tools)")
	flag.Parse()

	scratch, err := os.MkdirTemp(*dir, "lifeboat-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)

	ctx := context.Background()
	results, err := cacheThroughput(ctx, scratch, *size, *rounds)
	if err != nil {
		return err
	}
	bin := filepath.Join(scratch, "lifeboat")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/lifeboat").CombinedOutput(); err != nil {
		return fmt.Errorf("build lifeboat: %v\n%s", err, out)
	}
	tdir, err := filepath.Abs(*tools)
	if err != nil {
		return err
	}
	mres, err := mirrorBench(ctx, scratch, tdir, bin, *size, *rounds)
	if err != nil {
		return fmt.Errorf("mirror benchmark: %w", err)
	}
	more := []func(*strings.Builder){func(b *strings.Builder) { renderMirror(b, mres, *size) }}
	ares, err := anchorBench(ctx, scratch, tdir, bin, *size, *rounds)
	if err != nil {
		return fmt.Errorf("anchor benchmark: %w", err)
	}
	more = append(more, func(b *strings.Builder) { renderAnchors(b, ares) })
	if os.Geteuid() == 0 {
		pres, err := pullBench(ctx, scratch, tdir, bin, 5, 32<<20, 3)
		if err != nil {
			return fmt.Errorf("pull benchmark: %w", err)
		}
		more = append(more, func(b *strings.Builder) { renderPull(b, pres) })
	} else {
		more = append(more, func(b *strings.Builder) {
			fmt.Fprintf(b, "\n(The containerd pull benchmark was skipped: it runs containerd and needs root.)\n")
		})
	}
	report := render(results, *size, *rounds, more...)
	fmt.Print(report)
	if *out != "" {
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(*out, []byte(report), 0o644)
	}
	return nil
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
		d, err := timed(func() error { return copyFile(plain, data, buf) })
		if err != nil {
			return nil, err
		}
		write.base = append(write.base, d)

		d, err = timed(func() error {
			w, err := store.Writer(ctx, content.WithRef(fmt.Sprintf("bench-%d", i)), content.WithDescriptor(desc))
			if err != nil {
				return err
			}
			defer w.Close()
			if _, err := io.CopyBuffer(w, bytes.NewReader(data), buf); err != nil {
				return err
			}
			return w.Commit(ctx, size, desc.Digest)
		})
		if err != nil {
			return nil, err
		}
		write.subject = append(write.subject, d)

		d, err = timed(func() error {
			f, err := os.Open(plain)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
			return err
		})
		if err != nil {
			return nil, err
		}
		read.base = append(read.base, d)

		d, err = timed(func() error {
			ra, err := store.ReaderAt(ctx, desc)
			if err != nil {
				return err
			}
			defer ra.Close()
			_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{io.NewSectionReader(ra, 0, ra.Size())}, buf)
			return err
		})
		if err != nil {
			return nil, err
		}
		read.subject = append(read.subject, d)

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

func render(results []result, size int64, rounds int, more ...func(*strings.Builder)) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# lifeboat benchmarks\n\n")
	fmt.Fprintf(&b, "Produced by `make bench` on %s. Medians of %d alternating rounds; each ratio is lifeboat's\n", time.Now().UTC().Format("2006-01-02"), rounds)
	fmt.Fprintf(&b, "throughput divided by the baseline's, both measured in the same run (higher is better).\n\n")
	fmt.Fprintf(&b, "## Cache throughput, one %d MiB blob\n\n", size>>20)
	fmt.Fprintf(&b, "| operation | MiB/s | baseline | baseline MiB/s | ratio |\n|---|---:|---|---:|---:|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %.0f | %s | %.0f | %.2f |\n", r.name, r.rate(r.subject), r.baseline, r.rate(r.base), r.ratio())
	}
	for _, m := range more {
		m(&b)
	}
	fmt.Fprintf(&b, "\nMachine: %s, %d CPUs, %s. Go %s.\n", machine(), runtime.NumCPU(), kernel(), strings.TrimPrefix(runtime.Version(), "go"))
	return b.String()
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

func kernel() string {
	out, err := exec.Command("uname", "-sr").Output()
	if err != nil {
		return runtime.GOOS
	}
	return strings.TrimSpace(string(out))
}
