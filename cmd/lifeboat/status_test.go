package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/outage"
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

// TestPrintCluster: status's cluster section counts members by state, shows this node's index
// and peer traffic, and lists the members trouble first, at most statusMaxMembers of them.
func TestPrintCluster(t *testing.T) {
	var b strings.Builder
	printCluster(&b, nil)
	if b.Len() != 0 {
		t.Errorf("tier off printed %q, want nothing", b.String())
	}
	c := &admin.ClusterStatus{
		Node:           "node-a",
		MembersByState: map[cluster.MemberState]int{cluster.Alive: 2 + statusMaxMembers, cluster.Dead: 1},
		Members: []admin.ClusterMember{
			{Name: "node-a", Peer: "10.0.0.1:5102", State: cluster.Alive, Self: true},
			{Name: "node-z", Peer: "10.0.0.26:5102", State: cluster.Dead},
			{Name: "node-b", Peer: "10.0.0.2:5102", State: cluster.Alive},
		},
		HomedKeys: 1200, IndexEntries: 3400, IndexBytes: 2 << 20,
		LookupsFound: 9, LookupsNotFound: 4, LookupsFailed: 1,
		PeerBytesIn: 3 << 30, PeerBytesOut: 1 << 20, CoalescedFills: 6, Rejected: 2,
	}
	for i := range statusMaxMembers {
		c.Members = append(c.Members, admin.ClusterMember{Name: fmt.Sprintf("node-m%02d", i), State: cluster.Alive})
	}
	printCluster(&b, c)
	out := b.String()
	for _, want := range []string{
		"Cluster\n", "node-a\n", "members       52 alive, 1 dead\n", "homed keys    1200 (3400 records, 2.0 MiB)",
		"lookups       9 found, 4 not found, 1 failed", "peer traffic  3.0 GiB in, 1.0 MiB out, 6 coalesced fills, 2 rejected",
		"MEMBER", "... and 3 more (status --json lists them all)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("cluster section has no %q:\n%s", want, out)
		}
	}
	rows := strings.Split(out[strings.Index(out, "MEMBER"):], "\n")
	if !strings.HasPrefix(rows[1], "node-z") || !strings.Contains(rows[1], "dead") || !strings.HasPrefix(rows[2], "node-a (this node)") {
		t.Errorf("members not listed dead first, then by name:\n%s", out)
	}
}

// TestPrintClusterRefusals: status says why the index refused records.
func TestPrintClusterRefusals(t *testing.T) {
	c := &admin.ClusterStatus{
		Node: "node-a", MembersByState: map[cluster.MemberState]int{cluster.Alive: 1},
		HomedKeys: 10, IndexEntries: 20, IndexBytes: 64 << 20,
		IndexRefused: map[string]int64{"full": 3, "quota": 120, "shape": 0, "not_home": 0, "future": 1},
	}
	var b strings.Builder
	printCluster(&b, c)
	want := "homed keys    10 (20 records, 64.0 MiB); records refused: 3 the index full, 120 past the sender's quota, 1 dated ahead\n"
	if out := b.String(); !strings.Contains(out, want) {
		t.Errorf("cluster section has no %q:\n%s", want, out)
	}
}

// TestPrintClusterPeerTags: status counts the tags answered from the peers' records and lists
// them, statusMaxFailures at most.
func TestPrintClusterPeerTags(t *testing.T) {
	date := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c := &admin.ClusterStatus{Node: "node-a", MembersByState: map[cluster.MemberState]int{cluster.Alive: 1}}
	for i := range statusMaxFailures + 2 {
		c.PeerTags = append(c.PeerTags, admin.PeerTag{Ref: fmt.Sprintf("r.io/app:%02d", i), Digest: digest.Digest("sha256:" + strings.Repeat("a", 64)), Date: date})
	}
	var b strings.Builder
	printCluster(&b, c)
	out := b.String()
	for _, want := range []string{
		fmt.Sprintf("peer tags     %d (resolved from the peers' records, not confirmed by the registry since)\n", statusMaxFailures+2),
		"TAG (FROM PEER RECORDS)",
		"... and 2 more (status --json lists them all)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("cluster section has no %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`\nr\.io/app:00 +sha256:a{64} +2026-12-01T10:00:00Z\n`).MatchString(out) {
		t.Errorf("no row for r.io/app:00 with its digest and date:\n%s", out)
	}
	if strings.Contains(out, "r.io/app:20") {
		t.Errorf("more than %d peer tags listed:\n%s", statusMaxFailures, out)
	}
}

func TestDescribeOutageTarget(t *testing.T) {
	for target, want := range map[string]string{
		outage.TargetUpstream: "blackhole on every registry, 0 requests affected",
		outage.TargetPeers:    "blackhole on every registry, cutting peers only, 0 requests affected",
		outage.TargetAll:      "blackhole on every registry, cutting registries and peers, 0 requests affected",
	} {
		got := describeOutage(outage.Status{Active: true, Spec: outage.Spec{Mode: "blackhole", Target: target}})
		if got != want {
			t.Errorf("target %s: %q, want %q", target, got, want)
		}
	}
}

// TestOutageStartTarget: a target that is not upstream, peers or all is refused before the
// daemon is asked; a good one gets as far as the daemon.
func TestOutageStartTarget(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := runCLI(t, "outage", "start", "--mode", "dns", "--target", "registry", "--admin-socket", sock)
	if err == nil || !strings.Contains(err.Error(), `target "registry" is not "upstream", "peers" or "all"`) {
		t.Errorf("bad target: %v", err)
	}
	// A good target gets as far as the daemon, which is not running.
	_, err = runCLI(t, "outage", "start", "--mode", "dns", "--target", "peers", "--admin-socket", sock)
	if !errors.Is(err, admin.ErrUnreachable) {
		t.Errorf("good target: %v, want the daemon unreachable", err)
	}
}
