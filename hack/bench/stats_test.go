package main

import (
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   []time.Duration
		want time.Duration
	}{
		{"one", []time.Duration{7}, 7},
		{"odd, unsorted", []time.Duration{9, 1, 5}, 5},
		{"even: mean of the middle two", []time.Duration{4, 1, 10, 2}, 3},
		{"even, equal middles", []time.Duration{3, 3}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			if got := median(tc.in); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
			}
			if !slices.Equal(in, tc.in) {
				t.Errorf("median sorted its argument: %v, was %v", tc.in, in)
			}
		})
	}
	if got := median([]float64{1, 2}); got != 1.5 {
		t.Errorf("median of floats 1, 2 = %v, want 1.5", got)
	}
}

func TestSpread(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	if got, want := durSpread([]time.Duration{15 * ms, 9 * ms, 12 * ms}), "12ms (9ms–15ms)"; got != want {
		t.Errorf("durSpread = %q, want %q", got, want)
	}
	if got, want := durSpread([]time.Duration{1633123456, 1392134567, 1756789012}), "1.633s (1.392s–1.757s)"; got != want {
		t.Errorf("durSpread of seconds = %q, want %q", got, want)
	}
	// A throughput's range runs from the slowest round to the fastest: 1 MiB in 1 s, 0.5 s, 0.25 s.
	if got, want := rateSpread(1<<20, []time.Duration{250 * ms, time.Second, 500 * ms}), "2 (1–4)"; got != want {
		t.Errorf("rateSpread = %q, want %q", got, want)
	}
	if got, want := floatSpread([]float64{0.5, 0.25, 1, 2}, 2), "0.75 (0.25–2.00)"; got != want {
		t.Errorf("floatSpread = %q, want %q", got, want)
	}
}

func TestAlternate(t *testing.T) {
	t.Parallel()
	for _, parties := range []int{2, 3} {
		for _, rounds := range []int{1, 5, 6} {
			var ran []int
			fns := make([]func() error, parties)
			for p := range fns {
				fns[p] = func() error { ran = append(ran, p); return nil }
			}
			if err := alternate(rounds, fns...); err != nil {
				t.Fatal(err)
			}
			if len(ran) != parties*rounds {
				t.Fatalf("%d parties, %d rounds: %d runs, want %d", parties, rounds, len(ran), parties*rounds)
			}
			firsts := make([]int, parties)
			for i := range rounds {
				round := ran[i*parties : (i+1)*parties]
				want := 0 // round i: A first if i is even, the last party first if odd
				if i%2 == 1 {
					want = parties - 1
				}
				if round[0] != want {
					t.Errorf("%d parties, round %d ran %v, want party %d first", parties, i, round, want)
				}
				firsts[round[0]]++
			}
			for p := range parties {
				if countOf(ran, p) != rounds {
					t.Errorf("%d parties, %d rounds: party %d ran %d times, want %d", parties, rounds, p, countOf(ran, p), rounds)
				}
			}
			if rounds%2 == 0 && firsts[0] != firsts[parties-1] {
				t.Errorf("%d parties, %d rounds: first %v times each, want the first and last party first equally often", parties, rounds, firsts)
			}
		}
	}
}

func TestAlternateStopsAtError(t *testing.T) {
	t.Parallel()
	runs := 0
	fail := func() error { runs++; return errTest }
	ok := func() error { runs++; return nil }
	if err := alternate(5, ok, fail); err != errTest {
		t.Fatalf("alternate = %v, want %v", err, errTest)
	}
	if runs != 2 {
		t.Errorf("%d runs after the error, want 2 (the first round's)", runs)
	}
}

var errTest = errorString("test")

var selfPid = os.Getpid()

type errorString string

func (e errorString) Error() string { return string(e) }

func countOf(xs []int, x int) int {
	n := 0
	for _, v := range xs {
		if v == x {
			n++
		}
	}
	return n
}

func TestCPUTime(t *testing.T) {
	// Burn some CPU in this process, then check /proc's figure against getrusage's, read on
	// either side of it; /proc counts in clock ticks, so allow a few.
	for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline); {
	}
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	lo := rusage()
	got, err := cpuTime(selfPid)
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	hi := rusage()
	slack := 3 * time.Duration(float64(time.Second)/clockTicks)
	if got < lo-slack || got > hi+slack {
		t.Errorf("cpuTime = %v, want between %v and %v (getrusage before and after)", got, lo, hi)
	}
}
