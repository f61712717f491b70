package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/admin"
)

func TestPullResultLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		res  admin.PullResult
		want string
	}{
		{"fetched", admin.PullResult{Ref: "docker.io/library/a:1", Bytes: 3 << 20, FetchedBytes: 3<<20 - 900, Seconds: 2.44},
			"pulled docker.io/library/a:1 (3.0 MiB in 2.4s)"},
		{"resumed", admin.PullResult{Ref: "docker.io/library/a:1", Bytes: 3 << 20, CachedBytes: 1 << 20, FetchedBytes: 2 << 20, Seconds: 1},
			"pulled docker.io/library/a:1 (3.0 MiB in 1.0s, 1.0 MiB of it cached already)"},
		{"cached", admin.PullResult{Ref: "docker.io/library/a:1", Bytes: 3 << 20, CachedBytes: 3 << 20, Seconds: 0.02},
			"pulled docker.io/library/a:1 (3.0 MiB in 0.0s, all of it cached already)"},
		{"failed", admin.PullResult{Ref: "docker.io/library/b:1", Error: "manifest: upstream has no such tag:\nnot found"},
			"failed docker.io/library/b:1: manifest: upstream has no such tag: not found"},
	} {
		if got := pullResultLine(tc.res); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

// progressOf runs reports through a display whose clock advances by a second per report.
func progressOf(live bool, reports ...admin.PullProgress) string {
	var out bytes.Buffer
	d := newPullDisplay(&out, live)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d.now = func() time.Time { return now }
	for _, p := range reports {
		now = now.Add(time.Second)
		d.update(p)
	}
	d.finish()
	return out.String()
}

var pullReports = []admin.PullProgress{
	{Ref: "a", State: admin.PullResolving},
	{Ref: "b", State: admin.PullResolving},
	{Ref: "a", State: admin.PullPulling, Bytes: 0, Total: 4 << 20},
	{Ref: "a", State: admin.PullPulling, Bytes: 1 << 20, Total: 4 << 20},
	{Ref: "b", State: admin.PullFailed, Result: &admin.PullResult{Ref: "b", Error: "no such tag"}},
	{Ref: "a", State: admin.PullDone, Bytes: 4 << 20, Total: 4 << 20, Result: &admin.PullResult{Ref: "a", Bytes: 4 << 20, FetchedBytes: 4 << 20, Seconds: 4}},
}

func TestPullDisplayPlain(t *testing.T) {
	t.Parallel()
	got := progressOf(false, pullReports...)
	want := "failed b: no such tag\npulled a (4.0 MiB in 4.0s)\n"
	if got != want {
		t.Errorf("plain display:\n got %q\nwant %q", got, want)
	}
}

func TestPullDisplayLive(t *testing.T) {
	t.Parallel()
	got := progressOf(true, pullReports...)
	// Each report redraws the live lines: back to their start, erase, draw.
	for _, want := range []string{
		"a  resolving\n",
		"a  resolving\nb  resolving\n",
		"\x1b[2F\x1b[J",
		"a  0 B / 4.0 MiB\nb  resolving\n",
		"a  1.0 MiB / 4.0 MiB  1.0 MiB/s  ETA 3s\nb  resolving\n",
		"\x1b[2F\x1b[Jfailed b: no such tag\na  1.0 MiB / 4.0 MiB  512.0 KiB/s  ETA 6s\n", // a second later, no new bytes
		"\x1b[1F\x1b[Jpulled a (4.0 MiB in 4.0s)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("live display lacks %q:\n%q", want, got)
		}
	}
	if !strings.HasSuffix(got, "pulled a (4.0 MiB in 4.0s)\n") {
		t.Errorf("live lines left after the end:\n%q", got)
	}
}

func TestPullDisplayKeepsLiveLinesToTheTerminalWidth(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	d := newPullDisplay(&out, true)
	d.width = 12
	d.update(admin.PullProgress{Ref: "docker.io/library/a-long-name:1", State: admin.PullResolving})
	if got := out.String(); got != "docker.io/l\n" {
		t.Errorf("live line on a 12-column terminal: %q", got)
	}
}
