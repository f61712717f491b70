package main

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The statistics every section reports, and the one rule for running a comparison: its parties
// alternate over rounds, each round in the order that order gives, so that no party always runs
// first (on a warm page cache, a fresh TCP port, a CPU just freed) and every party runs the same
// number of times.

// order is the order in which n parties run in round: as given in even rounds, reversed in odd
// ones (A B, then B A; A B C, then C B A), so that over each pair of rounds every party holds
// every position once.
func order(round, n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	if round%2 == 1 {
		slices.Reverse(idx)
	}
	return idx
}

// runRound runs the parties of round in order(round), stopping at the first error.
func runRound(round int, parties ...func() error) error {
	for _, i := range order(round, len(parties)) {
		if err := parties[i](); err != nil {
			return err
		}
	}
	return nil
}

// alternate runs rounds rounds of the parties (see order); each party records its own
// measurements.
func alternate(rounds int, parties ...func() error) error {
	for i := range rounds {
		if err := runRound(i, parties...); err != nil {
			return err
		}
	}
	return nil
}

// timedInto returns a party that times fn and appends the duration to into.
func timedInto(into *[]time.Duration, fn func() error) func() error {
	return func() error {
		d, err := timed(fn)
		if err != nil {
			return err
		}
		*into = append(*into, d)
		return nil
	}
}

type number interface {
	~int | ~int64 | ~float64
}

// median is the middle value of xs, or the mean of the two middle ones for an even count.
func median[T number](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// spread is a median with the range it came from, each value formatted by f: "12ms (9ms–15ms)".
// The range is that of the formatted figure, lowest first, so a throughput's comes from the
// longest and the shortest durations.
func spread[T number, F cmp.Ordered](xs []T, f func(T) F, format func(F) string) string {
	vs := make([]F, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	return fmt.Sprintf("%s (%s–%s)", format(f(median(xs))), format(slices.Min(vs)), format(slices.Max(vs)))
}

// durSpread is spread for durations, each rounded by roundDur.
func durSpread(ds []time.Duration) string {
	return spread(ds, roundDur, time.Duration.String)
}

// roundDur rounds d to about four significant digits: to the millisecond from a second, to
// 10 µs from a millisecond, else to the microsecond.
func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// rateSpread is the throughput of moving size bytes in each of ds, in MiB/s.
func rateSpread(size int64, ds []time.Duration) string {
	return spread(ds, func(d time.Duration) float64 { return float64(size) / d.Seconds() / (1 << 20) },
		func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) })
}

// floatSpread is spread for plain figures, with prec decimals.
func floatSpread(xs []float64, prec int) string {
	return spread(xs, func(x float64) float64 { return x }, func(v float64) string { return strconv.FormatFloat(v, 'f', prec, 64) })
}

// mapSlice is f of each of xs.
func mapSlice[T, U any](xs []T, f func(T) U) []U {
	out := make([]U, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// clockTicks is the kernel's clock ticks per second, the unit of /proc/<pid>/stat's times.
var clockTicks = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if n, perr := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && perr == nil && n > 0 {
		return float64(n)
	}
	return 100
}()

// cpuTime is the user plus system CPU time pid has used, from /proc/<pid>/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in brackets, may hold spaces: count the fields after it.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14 of stat(5)
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	return time.Duration(float64(utime+stime) / clockTicks * float64(time.Second)), nil
}

// cpuPerGiB runs fn and returns the CPU seconds pid used during it per GiB of size.
func cpuPerGiB(pid int, size int64, fn func() error) (float64, error) {
	before, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	if err := fn(); err != nil {
		return 0, err
	}
	after, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	return (after - before).Seconds() / (float64(size) / (1 << 30)), nil
}
