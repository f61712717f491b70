package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/resolver"
)

// TestPrintFailedRevalidations: status lists the tags whose revalidation failed with their cause
// and whether the cached tag was served stale or refused, at most statusMaxFailures of them, and
// says how many more `status --json` has.
func TestPrintFailedRevalidations(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var b strings.Builder
	printFailedRevalidations(&b, nil)
	if b.Len() != 0 {
		t.Errorf("no failures printed %q, want nothing", b.String())
	}

	fs := []resolver.FailedRevalidation{
		{Ref: "docker.io/library/alpine:3.20", At: at, Cause: resolver.CauseUnreachable, ServedStale: true},
		{Ref: "ghcr.io/org/private:1", At: at, Cause: resolver.CauseDenied},
	}
	for i := range statusMaxFailures + 3 - len(fs) {
		fs = append(fs, resolver.FailedRevalidation{Ref: fmt.Sprintf("quay.io/x/y:%d", i), At: at, Cause: resolver.CauseNotFound})
	}
	printFailedRevalidations(&b, fs)
	out := b.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// A header, statusMaxFailures rows, and the line about the rest.
	if len(lines) != 1+statusMaxFailures+1 {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), statusMaxFailures+2, out)
	}
	for i, want := range [][]string{
		{"TAG", "CAUSE", "ANSWERED", "AT"},
		{"docker.io/library/alpine:3.20", resolver.CauseUnreachable, "stale", "2026-12-01T10:00:00Z"},
		{"ghcr.io/org/private:1", resolver.CauseDenied, "refused"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q has no %q", i, lines[i], w)
			}
		}
	}
	if last := lines[len(lines)-1]; !strings.Contains(last, "3 more") || !strings.Contains(last, "status --json") {
		t.Errorf("last line %q, want it to say 3 more are in status --json", last)
	}
}
