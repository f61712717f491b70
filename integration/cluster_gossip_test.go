package integration

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// The gossip port as a non-member reaches it: junk datagrams and idle connections cost a
// member a line a minute and a bounded number of descriptors; and membership heals when a
// seed restarts.

// Bounds the flood test holds a node to.
const (
	// gossipStreamBound is the cluster package's maxGossipStreams: the inbound gossip streams
	// a node keeps open at once.
	gossipStreamBound = 256
	// fdSlack is the descriptors a node may open beside the gossip streams while the test
	// runs: its mirror's, metrics' and upstream's connections.
	fdSlack = 64
	// floodLogLines is "a handful": the lines the flood may cause (one a minute, and the
	// first at once).
	floodLogLines = 5
)

// openFDs is how many file descriptors process pid has open.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// floodLines are the lines of log that are about gossip from outside: memberlist's
// complaints, the line that counts them, and what running out of descriptors would say.
func floodLines(log string) []string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "unacceptable label") || strings.Contains(l, "dropped gossip") ||
			strings.Contains(l, "too many open files") || strings.Contains(l, "Error accepting TCP") ||
			strings.Contains(l, "stream label header") {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestClusterGossipFlood (issue row 5): 5,000 junk datagrams and 3,000 idle connections to a
// member's gossip port, from ten addresses that are not members. The member logs a handful of
// lines about them, counts every datagram in lifeboat_cluster_gossip_dropped_total, keeps its
// descriptors within the stream bound, and its mirror and its membership go on working.
func TestClusterGossipFlood(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	const repo = "cluster/flood"
	img := reg.PushBusybox(t, repo, "1")
	c := harness.StartCluster(t, 2, upstreamOf(reg))
	n := c.Nodes[1]
	pid := n.Process().Pid()
	before := openFDs(t, pid)
	logBefore := len(n.Log())

	// Junk datagrams, in rounds the node counts before the next, so that none is lost to a
	// full socket buffer and every one is accounted for.
	const datagrams, round = 5000, 500
	udp, err := net.Dial("udp", n.Gossip)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	dropped := func() float64 {
		return n.Metric(t, "lifeboat_cluster_gossip_dropped_total", map[string]string{"reason": "label"}) +
			n.Metric(t, "lifeboat_cluster_gossip_dropped_total", map[string]string{"reason": "decrypt"}) +
			n.Metric(t, "lifeboat_cluster_gossip_dropped_total", map[string]string{"reason": "malformed"})
	}
	junk := make([]byte, 200)
	for sent := 0; sent < datagrams; {
		for range round {
			_, _ = rand.Read(junk)
			if _, err := udp.Write(junk); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		harness.WaitFor(t, fmt.Sprintf("%d junk datagrams counted", sent), 30*time.Second, nil, func() error {
			if got := dropped(); got != float64(sent) {
				return fmt.Errorf("%v counted", got)
			}
			return nil
		})
	}

	// Idle connections from ten addresses, held open.
	const conns, sources = 3000, 10
	peak := 0
	for i := range conns {
		src := fmt.Sprintf("127.0.0.%d", 200+i%sources)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		conn, err := d.Dial("tcp", n.Gossip)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer conn.Close()
		if i%500 == 499 {
			peak = max(peak, openFDs(t, pid))
		}
	}
	peak = max(peak, openFDs(t, pid))
	streams := n.Metric(t, "lifeboat_cluster_gossip_streams", nil)
	refused := n.Metric(t, "lifeboat_cluster_gossip_dropped_total", map[string]string{"reason": "stream_limit"}) +
		n.Metric(t, "lifeboat_cluster_gossip_dropped_total", map[string]string{"reason": "stream_idle"})
	t.Logf("descriptors: %d before, %d at most during %d idle connections; %v streams open, %v closed", before, peak, conns, streams, refused)
	if limit := before + gossipStreamBound + fdSlack; peak > limit {
		t.Errorf("the node had %d descriptors open (%d before the flood); want at most %d", peak, before, limit)
	}
	if streams > gossipStreamBound {
		t.Errorf("%v gossip streams open, bound %d", streams, gossipStreamBound)
	}
	if refused < conns-gossipStreamBound {
		t.Errorf("%v streams refused or closed, want at least %d", refused, conns-gossipStreamBound)
	}

	// With the connections still open: the mirror answers, and the members see each other.
	start := time.Now()
	pullVia(t, n, reg.Host(), repo, "1", img)
	resp, err := http.Get(n.URL() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ during the flood: %s", resp.Status)
	}
	t.Logf("pull through the mirror during the flood: %v", time.Since(start))
	harness.WaitAlive(t, c.Nodes...)

	if lines := floodLines(n.Log()[logBefore:]); len(lines) > floodLogLines {
		t.Errorf("%d lines about the flood, want at most %d; the first:\n%s", len(lines), floodLogLines,
			strings.Join(lines[:min(len(lines), 10)], "\n"))
	}
}

// TestClusterSeedRestart (issue row 6): the by-hand recipe (every node joins n1), then n1
// restarts under the same name and address, its join list naming only itself. Within a bounded
// time every node lists n1 alive again and n1 lists them: the others join n1 again because
// its address is not an alive member's.
func TestClusterSeedRestart(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	c := harness.StartCluster(t, 3, harness.LifeboatOptions{})
	n1 := c.Nodes[0]
	n1.Restart(t)
	restarted := time.Now()
	harness.WaitAlive(t, c.Nodes...)
	t.Logf("every node lists the others alive %v after %s restarted", time.Since(restarted).Round(100*time.Millisecond), n1.Name)
	for _, lb := range c.Nodes {
		out, err := lb.CLI(t, "status")
		if err != nil {
			t.Fatal(err)
		}
		for _, other := range c.Nodes {
			if !strings.Contains(out, other.Name) {
				t.Errorf("%s's status does not list %s:\n%s", lb.Name, other.Name, out)
			}
		}
	}
}
