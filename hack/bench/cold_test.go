package main

import (
	"strings"
	"testing"
	"time"
)

// TestColdLinkGoal: a paced cold miss meets its goal at 0.95 of direct's rate, of the medians,
// and the pprof header's file lines stay out of the report.
func TestColdLinkGoal(t *testing.T) {
	t.Parallel()
	s := time.Second
	for _, tc := range []struct {
		name     string
		lifeboat []time.Duration
		want     string
	}{
		{"as fast as direct", []time.Duration{2 * s, 3 * s, 2 * s}, "| 1.00 (goal met) |"},
		{"0.95 of direct", []time.Duration{2 * s, 2 * s * 100 / 95, 9 * s}, "| 0.95 (goal met) |"},
		{"half of direct", []time.Duration{4 * s, 4 * s, 1 * s}, "| 0.50 (goal not met) |"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := coldResults{size: 256 << 20, rounds: 3, profileTop: "File: lifeboat\nBuild ID: 1\nType: cpu\n", profileCPU: []float64{1, 2, 3}, shaAlone: []float64{0.6},
				links: []linkResults{{rate: 125_000_000, lifeboat: tc.lifeboat, streaming: tc.lifeboat, dirs: []time.Duration{2 * s, 1 * s, 3 * s}}}}
			var b strings.Builder
			renderCold(&b, r)
			if !strings.Contains(b.String(), tc.want) {
				t.Errorf("report lacks %q:\n%s", tc.want, b.String())
			}
			if strings.Contains(b.String(), "Build ID") || !strings.Contains(b.String(), "Type: cpu") {
				t.Errorf("pprof header not trimmed to its figures:\n%s", b.String())
			}
		})
	}
}
