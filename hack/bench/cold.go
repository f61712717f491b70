package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// The cold section: where a cold miss's CPU goes (a CPU profile of lifeboat over cold fills),
// and cold misses with the upstream behind a paced link, against a GET from the upstream
// through the same link.

// coldLinks are the link rates, in bytes/s, of the paced cold misses: 1 and 10 Gbit/s.
var coldLinks = []int64{125_000_000, 1_250_000_000}

// coldLinkGoal is the goal for a paced cold miss through lifeboat ÷ direct, in rate.
const coldLinkGoal = 0.95

// coldResults holds what coldBench measured.
type coldResults struct {
	size   int64
	rounds int

	// profileTop is `go tool pprof -top` of lifeboat's CPU profiles over profileRounds cold
	// fills, merged; profileCPU the CPU seconds per GiB of those fills.
	profileTop    string
	profileRounds int
	profileCPU    []float64
	// profileParts is the CPU in the profiles under each of profileFocus, and profileTotal all
	// of it.
	profileParts []time.Duration
	profileTotal time.Duration
	// shaAlone is the CPU seconds per GiB of SHA-256 alone, over rounds.
	shaAlone []float64

	links []linkResults
}

// linkResults are the cold misses over one paced link.
type linkResults struct {
	rate int64 // bytes/s
	// lifeboat is with the default verify_before_send, streaming with verify_before_send 0.
	lifeboat, streaming, dirs []time.Duration
}

// profileSeconds is how long each CPU profile runs: it must cover one cold fill of the blob.
const profileSeconds = 3

// coldBench measures, with a size blob pushed to a fresh registry: over rounds, a fresh lifeboat's
// cold miss with its CPU profile; then, for each of coldLinks, over rounds, a cold miss through a
// fresh lifeboat whose upstream is behind a forwarder at that rate, alternating with a GET from
// the upstream through a forwarder at the same rate.
func coldBench(ctx context.Context, scratch, tools, lifeboat string, size int64, rounds int) (coldResults, error) {
	res := coldResults{rounds: rounds}
	base := filepath.Join(scratch, "cold")
	reg, regAddr, err := startRegistry(base, tools)
	if err != nil {
		return res, err
	}
	defer reg.stop()
	dgst, size, err := pushBlobImage(ctx, regAddr, "library/cold:1", size)
	if err != nil {
		return res, err
	}
	res.size = size
	blobPath := "/v2/library/cold/blobs/" + dgst.String()
	n := 0
	fresh := func() string {
		n++
		return filepath.Join(base, fmt.Sprintf("lifeboat-%d", n))
	}

	if res.shaAlone, err = sha256Alone(size, rounds); err != nil {
		return res, err
	}
	var profiles []string
	for i := range rounds {
		maddr, err := freeAddr()
		if err != nil {
			return res, err
		}
		dir := fresh()
		lb, addr, err := startLifeboatWith(dir, lifeboat, regAddr, lifeboatOpts{metrics: maddr})
		if err != nil {
			return res, err
		}
		url := "http://" + addr + blobPath
		prof := filepath.Join(base, fmt.Sprintf("cpu-%d.pprof", i))
		var cpu float64
		err = profileDuring(maddr, prof, func() error {
			cpu, err = cpuPerGiB(lb.Pid(), size, func() error {
				if _, _, err := fetch(url, size); err != nil {
					return err
				}
				return waitCached(url)
			})
			return err
		})
		lb.stop()
		os.RemoveAll(dir)
		if err != nil {
			return res, fmt.Errorf("profile a cold fill: %w", err)
		}
		res.profileCPU = append(res.profileCPU, cpu)
		profiles = append(profiles, prof)
	}
	res.profileRounds = len(profiles)
	top, err := exec.Command("go", append([]string{"tool", "pprof", "-top", "-nodecount=15", lifeboat}, profiles...)...).CombinedOutput()
	if err != nil {
		return res, fmt.Errorf("go tool pprof: %v\n%s", err, top)
	}
	res.profileTop = string(top)
	for _, p := range profileFocus {
		d, _, err := pprofFocus(lifeboat, profiles, p.focus)
		if err != nil {
			return res, err
		}
		res.profileParts = append(res.profileParts, d)
	}
	if _, res.profileTotal, err = pprofFocus(lifeboat, profiles, ""); err != nil {
		return res, err
	}

	for _, rate := range coldLinks {
		lr := linkResults{rate: rate}
		// via is a fresh lifeboat's cold miss over the link into into, with opts.
		via := func(into *[]time.Duration, opts lifeboatOpts) func() error {
			return func() error {
				fwd, err := startLinkForwarder(regAddr, rate)
				if err != nil {
					return err
				}
				defer fwd.close()
				dir := fresh()
				defer os.RemoveAll(dir)
				lb, addr, err := startLifeboatWith(dir, lifeboat, fwd.addr(), opts)
				if err != nil {
					return err
				}
				defer lb.stop()
				_, d, err := fetch("http://"+addr+blobPath, size)
				if err != nil {
					return fmt.Errorf("cold miss over a %s link: %w", linkName(rate), err)
				}
				*into = append(*into, d)
				return nil
			}
		}
		zero := int64(0)
		direct := func() error {
			fwd, err := startLinkForwarder(regAddr, rate)
			if err != nil {
				return err
			}
			defer fwd.close()
			_, d, err := fetch("http://"+fwd.addr()+blobPath, size)
			if err != nil {
				return fmt.Errorf("GET from the upstream over a %s link: %w", linkName(rate), err)
			}
			lr.dirs = append(lr.dirs, d)
			return nil
		}
		if err := alternate(rounds, via(&lr.lifeboat, lifeboatOpts{}), direct, via(&lr.streaming, lifeboatOpts{verifyBeforeSend: &zero})); err != nil {
			return res, err
		}
		res.links = append(res.links, lr)
	}
	return res, nil
}

// profileFocus names the parts of a cold fill's CPU that the report breaks out, each by a
// regular expression for pprof's -focus.
var profileFocus = []struct{ what, focus string }{
	{"SHA-256 of the bytes (`sha256.block`)", `sha256\.block$`},
	{"`read` syscalls (the upstream's body, mostly)", `^syscall\.read$`},
	{"`write` syscalls (the ingest file)", `^syscall\.write$`},
	{"`sendfile` syscalls (to the client)", `^syscall\.sendfile$`},
}

// pprofFocus returns the CPU of the samples of profiles whose stack has a function matching
// focus (all of them when focus is ""), and of all the samples.
func pprofFocus(bin string, profiles []string, focus string) (part, total time.Duration, err error) {
	args := []string{"tool", "pprof", "-top", "-nodecount=1"}
	if focus != "" {
		args = append(args, "-focus="+focus)
	}
	out, err := exec.Command("go", append(append(args, bin), profiles...)...).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("go tool pprof: %v\n%s", err, out)
	}
	// "Total samples = 3.19s (13.28%)" and "Showing nodes accounting for 600ms, 18.81% of 3190ms total".
	total, part = -1, -1
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "Duration: "); ok {
			if _, t, ok := strings.Cut(rest, "Total samples = "); ok {
				total, err = time.ParseDuration(strings.Fields(t)[0])
			}
		}
		if rest, ok := strings.CutPrefix(line, "Showing nodes accounting for "); ok {
			part, err = time.ParseDuration(strings.TrimSuffix(strings.Fields(rest)[0], ","))
		}
		if err != nil {
			return 0, 0, fmt.Errorf("go tool pprof: %q: %w", line, err)
		}
	}
	if total < 0 {
		return 0, 0, fmt.Errorf("go tool pprof printed no total:\n%s", out)
	}
	return max(part, 0), total, nil
}

// sha256Alone hashes size bytes from memory rounds times on one locked thread, and returns
// the thread's CPU seconds per GiB of each.
func sha256Alone(size int64, rounds int) ([]float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 1<<20) // the size of the fill's reads and writes
	rand.NewChaCha8([32]byte{2}).Read(buf)
	threadCPU := func() (time.Duration, error) {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
			return 0, err
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
	}
	var out []float64
	for range rounds {
		h := sha256.New()
		before, err := threadCPU()
		if err != nil {
			return nil, err
		}
		for n := int64(0); n < size; n += int64(len(buf)) {
			h.Write(buf[:min(int64(len(buf)), size-n)])
		}
		after, err := threadCPU()
		if err != nil {
			return nil, err
		}
		out = append(out, (after-before).Seconds()/(float64(size)/(1<<30)))
	}
	return out, nil
}

// profileDuring writes to path a CPU profile of the lifeboat whose metrics address (with pprof)
// is maddr, taken over profileSeconds from before fn starts; fn must end within them.
func profileDuring(maddr, path string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", maddr, profileSeconds))
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			done <- fmt.Errorf("CPU profile: %s", resp.Status)
			return
		}
		f, err := os.Create(path)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	// The profile runs once its handler waits out the seconds, in net/http/pprof's sleep.
	started := func() error {
		resp, err := http.Get("http://" + maddr + "/debug/pprof/goroutine?debug=2")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "net/http/pprof.sleep(") {
			return fmt.Errorf("the CPU profile has not started")
		}
		return nil
	}
	never := make(chan struct{})
	if err := launch.WaitFor(10*time.Second, never, started); err != nil {
		return err
	}
	start := time.Now()
	err := fn()
	if err == nil && time.Since(start) > profileSeconds*time.Second {
		err = fmt.Errorf("the fill took %s, longer than the profile's %d s", time.Since(start).Round(time.Millisecond), profileSeconds)
	}
	if perr := <-done; err == nil {
		err = perr
	}
	return err
}

// renderCold writes the cold section.
func renderCold(b *strings.Builder, r coldResults) {
	fmt.Fprintf(b, "\n## Cold miss: where lifeboat's CPU goes, and over a paced link\n\n")
	fmt.Fprintf(b, "Medians of %d rounds with min–max in brackets, one %s blob.\n\n", r.rounds, sizeName(r.size))
	fmt.Fprintf(b, "### CPU profile of a cold fill\n\n"+
		"`go tool pprof -top` of lifeboat's CPU profiles (from `[metrics] pprof`, each over %d s from just before\n"+
		"the GET), one for each of %d fresh lifeboats' cold miss, merged; the fills took %s CPU-s/GiB\n"+
		"(user and system time from /proc, GET to commit, the profiler's own cost included).\n\n```\n%s```\n",
		profileSeconds, r.profileRounds, floatSpread(r.profileCPU, 2), trimPprofHeader(r.profileTop))
	gib := float64(r.size) * float64(r.profileRounds) / (1 << 30)
	fmt.Fprintf(b, "\nThe profiles' samples by what their stacks hold, per GiB filled (a sample may count under two\n"+
		"rows). The baseline below them is SHA-256 alone: the bench process hashing the blob's size from\n"+
		"memory on one thread, %d times, its thread's CPU time.\n\n"+
		"| part of the cold fill | CPU-s/GiB | share of the samples |\n|---|---:|---:|\n", len(r.shaAlone))
	for i, p := range profileFocus {
		if i < len(r.profileParts) {
			fmt.Fprintf(b, "| %s | %.2f | %.0f%% |\n", p.what, r.profileParts[i].Seconds()/gib, 100*r.profileParts[i].Seconds()/r.profileTotal.Seconds())
		}
	}
	fmt.Fprintf(b, "| all samples | %.2f | 100%% |\n", r.profileTotal.Seconds()/gib)
	fmt.Fprintf(b, "| baseline: SHA-256 alone, one thread of the bench | %s | – |\n", floatSpread(r.shaAlone, 2))
	fmt.Fprintf(b, "\nThe profiler's samples (%.2f CPU-s/GiB) see less than /proc charges the process for the same\n"+
		"fills (%.2f): the profile has no samples for the difference, so no row above can say where it\n"+
		"went.\n", r.profileTotal.Seconds()/gib, median(r.profileCPU))
	fmt.Fprintf(b, "\n### Cold miss over a paced upstream link\n\n"+
		"Each round a fresh lifeboat's cold miss, its upstream behind the bench's forwarder sending at most\n"+
		"the link's rate (all connections together), alternates with a GET from the upstream through a\n"+
		"forwarder at the same rate, and with the same cold miss through a lifeboat with\n"+
		"`verify_before_send = 0`; the order reversed every other round. Ratio: lifeboat's rate ÷ direct's,\n"+
		"of the medians (higher is better). With the default `verify_before_send` (1 GiB) a blob of this\n"+
		"size reaches the client only once all of it arrived and verified, so the client's transfer\n"+
		"follows the download instead of overlapping it; with 0 it streams as it arrives, its last byte\n"+
		"held until the blob verified. The direct column is what the forwarder carried: on a loaded\n"+
		"machine it may fall short of the link's rate, and then the row measures at that rate.\n\n")
	fmt.Fprintf(b, "| link | cold miss through lifeboat | GET from the upstream over the link | ratio (goal ≥ %.2f) | with `verify_before_send = 0` | its ratio |\n|---|---:|---:|---:|---:|---:|\n", coldLinkGoal)
	for _, l := range r.links {
		ratio, sratio := l.ratio(l.lifeboat), l.ratio(l.streaming)
		fmt.Fprintf(b, "| %s | %s MiB/s | %s MiB/s | %.2f%s | %s MiB/s | %.2f |\n", linkName(l.rate), rateSpread(r.size, l.lifeboat), rateSpread(r.size, l.dirs),
			ratio, goal(ratio >= coldLinkGoal), rateSpread(r.size, l.streaming), sratio)
	}
}

// ratio is the rate of the GETs ds over the link ÷ direct's, of the medians.
func (l linkResults) ratio(ds []time.Duration) float64 {
	return median(l.dirs).Seconds() / median(ds).Seconds()
}

// trimPprofHeader drops pprof's lines before "Showing nodes" that name files and paths.
func trimPprofHeader(top string) string {
	var keep []string
	for _, line := range strings.SplitAfter(top, "\n") {
		if strings.HasPrefix(line, "File: ") || strings.HasPrefix(line, "Build ID: ") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "")
}

// coldJSON is the cold section.
type coldJSON struct {
	SizeBytes     int64          `json:"blob_size_bytes"`
	Rounds        int            `json:"rounds"`
	ProfileTop    string         `json:"pprof_top"`
	ProfileCPU    float64        `json:"profiled_cold_miss_cpu_seconds_per_gib"`
	SHA256Alone   float64        `json:"sha256_alone_cpu_seconds_per_gib"`
	Links         []linkJSONItem `json:"paced_links"`
	LinkRatioGoal float64        `json:"paced_ratio_goal"`
}

type linkJSONItem struct {
	BytesPerS        int64   `json:"link_bytes_per_s"`
	LifeboatMiBPerS  float64 `json:"lifeboat_cold_miss_mib_per_s"`
	DirectMiBPerS    float64 `json:"upstream_direct_mib_per_s"`
	Ratio            float64 `json:"ratio"`
	StreamingMiBPerS float64 `json:"lifeboat_verify_before_send_0_cold_miss_mib_per_s"`
	StreamingRatio   float64 `json:"verify_before_send_0_ratio"`
}

func (r coldResults) json() coldJSON {
	j := coldJSON{SizeBytes: r.size, Rounds: r.rounds, ProfileTop: trimPprofHeader(r.profileTop), ProfileCPU: median(r.profileCPU), SHA256Alone: median(r.shaAlone), LinkRatioGoal: coldLinkGoal}
	for _, l := range r.links {
		j.Links = append(j.Links, linkJSONItem{BytesPerS: l.rate, LifeboatMiBPerS: mibps(r.size, l.lifeboat), DirectMiBPerS: mibps(r.size, l.dirs), Ratio: l.ratio(l.lifeboat),
			StreamingMiBPerS: mibps(r.size, l.streaming), StreamingRatio: l.ratio(l.streaming)})
	}
	return j
}
