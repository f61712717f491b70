package harness

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// clusterJoinTimeout bounds the wait for every member to see every other alive, and for a
// stopped one to be seen gone.
const clusterJoinTimeout = 60 * time.Second

// ClusterOptions make a lifeboat a member of a cluster of lifeboats on this machine: the
// [cluster] table of its config, its gossip and peer listeners on free ports of its IP.
type ClusterOptions struct {
	// Name is the node name; Join the gossip addresses it joins (its own when empty: a first
	// node joins itself); KeyFile the cluster key file.
	Name    string
	Join    []string
	KeyFile string
	// Config is more keys of the [cluster] table ("coalesce = false\n").
	Config string
}

// writeClusterConfig picks free gossip and peer ports on ip and writes the [cluster] table.
func (lb *Lifeboat) writeClusterConfig(cfg *strings.Builder, ip string, c *ClusterOptions) error {
	gport, err := freeGossipPort(ip)
	if err != nil {
		return err
	}
	pport, err := freePortOn(ip)
	if err != nil {
		return err
	}
	lb.Name = c.Name
	lb.Gossip = net.JoinHostPort(ip, strconv.Itoa(gport))
	lb.Peer = net.JoinHostPort(ip, strconv.Itoa(pport))
	join := c.Join
	if len(join) == 0 {
		join = []string{lb.Gossip}
	}
	quoted := make([]string, len(join))
	for i, j := range join {
		quoted[i] = strconv.Quote(j)
	}
	fmt.Fprintf(cfg, "[cluster]\njoin = [%s]\ngossip_address = %q\npeer_address = %q\nadvertise_address = %q\nnode_name = %q\nsecret_file = %q\n%s",
		strings.Join(quoted, ", "), lb.Gossip, lb.Peer, ip, c.Name, c.KeyFile, c.Config)
	return nil
}

// freeGossipPort returns a port of ip that was free a moment ago for both TCP and UDP, as
// memberlist binds both.
func freeGossipPort(ip string) (int, error) {
	var lastErr error
	for range 20 {
		port, err := freePortOn(ip)
		if err != nil {
			return 0, err
		}
		u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			lastErr = err
			continue
		}
		u.Close()
		return port, nil
	}
	return 0, fmt.Errorf("finding a free TCP and UDP port on %s: %w", ip, lastErr)
}

// nextIP hands out the loopback addresses 127.0.0.2 to 127.0.0.254 to cluster members, a
// different one to each member this test binary starts (round robin past the last).
var nextIP struct {
	sync.Mutex
	n int
}

// LoopbackIP returns a loopback address 127.0.0.x (x ≥ 2) no other member of this test binary
// got recently.
func LoopbackIP() string {
	nextIP.Lock()
	defer nextIP.Unlock()
	ip := fmt.Sprintf("127.0.0.%d", 2+nextIP.n%253)
	nextIP.n++
	return ip
}

// WriteClusterKey writes a new cluster key (32 random bytes, base64, as `openssl rand -base64
// 32` prints) to a file of mode 0600 and returns its path.
func WriteClusterKey(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.key")
	key := base64.StdEncoding.EncodeToString(randomBytes(t, 32))
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		t.Fatalf("harness: writing the cluster key: %v", err)
	}
	return path
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// Cluster is a set of `lifeboat serve` processes that form one cluster, each on its own
// loopback address with its own root, sockets and ports, sharing one key.
type Cluster struct {
	// KeyFile is the cluster key every member started by Add uses unless told otherwise.
	KeyFile string
	// Nodes are the members started, in order; Nodes[0]'s gossip address is the others' join.
	Nodes []*Lifeboat
	opts  LifeboatOptions
}

// StartCluster starts n members with opts (Metrics is forced on: the harness watches the
// members through their metrics), and waits until each sees all of them alive.
func StartCluster(t testing.TB, n int, opts LifeboatOptions) *Cluster {
	t.Helper()
	c := &Cluster{KeyFile: WriteClusterKey(t), opts: opts}
	for range n {
		c.Add(t, opts)
	}
	c.WaitMembers(t)
	return c
}

// Add starts another member with opts, on a new loopback address, joining the first member (or
// itself when it is the first). Empty Cluster fields are filled in: the node name
// ("node-<i>"), the join address and the cluster's key file. It does not wait for the member
// to be seen (see WaitMembers).
func (c *Cluster) Add(t testing.TB, opts LifeboatOptions) *Lifeboat {
	t.Helper()
	var co ClusterOptions
	if opts.Cluster != nil {
		co = *opts.Cluster
	}
	if co.Name == "" {
		co.Name = fmt.Sprintf("node-%d", len(c.Nodes))
	}
	if co.KeyFile == "" {
		co.KeyFile = c.KeyFile
	}
	if len(co.Join) == 0 && len(c.Nodes) > 0 {
		co.Join = []string{c.Nodes[0].Gossip}
	}
	opts.Cluster = &co
	opts.Metrics = true
	if opts.IP == "" {
		opts.IP = LoopbackIP()
	}
	lb := StartLifeboat(t, opts)
	c.Nodes = append(c.Nodes, lb)
	return lb
}

// AddFresh starts another member with the options the cluster was started with (a name and
// address of its own).
func (c *Cluster) AddFresh(t testing.TB) *Lifeboat {
	t.Helper()
	opts := c.opts
	if opts.Cluster != nil {
		opts.Cluster = &ClusterOptions{KeyFile: opts.Cluster.KeyFile, Config: opts.Cluster.Config}
	}
	opts.IP = ""
	return c.Add(t, opts)
}

// Running are the members whose process runs and is not paused.
func (c *Cluster) Running() []*Lifeboat {
	var out []*Lifeboat
	for _, lb := range c.Nodes {
		if lb.proc.Running() && !lb.paused {
			out = append(out, lb)
		}
	}
	return out
}

// WaitMembers waits until every running member counts exactly the running members alive
// (lifeboat_cluster_members{state="alive"}): each has joined, and those killed or paused are
// no longer counted alive.
func (c *Cluster) WaitMembers(t testing.TB) {
	t.Helper()
	WaitAlive(t, c.Running()...)
}

// WaitAlive waits until each of members counts exactly len(members) members alive.
func WaitAlive(t testing.TB, members ...*Lifeboat) {
	t.Helper()
	WaitFor(t, fmt.Sprintf("%d members to see each other alive", len(members)), clusterJoinTimeout, nil, func() error {
		for _, lb := range members {
			if !lb.proc.Running() {
				return fmt.Errorf("%s exited:\n%s", lb.Name, lb.Log())
			}
			alive, found := lb.metric(t, "lifeboat_cluster_members", map[string]string{"state": "alive"})
			if !found {
				return fmt.Errorf("%s exports no lifeboat_cluster_members{state=\"alive\"}", lb.Name)
			}
			if int(alive) != len(members) {
				return fmt.Errorf("%s sees %v members alive, want %d", lb.Name, alive, len(members))
			}
		}
		return nil
	})
}

// Pause stops the daemon with SIGSTOP: it holds its sockets but answers nothing, as a hung
// node would. Resume (or the test's cleanup) continues it.
func (lb *Lifeboat) Pause(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(lb.proc.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatalf("harness: SIGSTOP %s: %v", lb.Name, err)
	}
	lb.paused = true
	proc := lb.proc
	t.Cleanup(func() { _ = syscall.Kill(proc.Pid(), syscall.SIGCONT) })
}

// Resume continues a paused daemon with SIGCONT.
func (lb *Lifeboat) Resume(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(lb.proc.Pid(), syscall.SIGCONT); err != nil {
		t.Fatalf("harness: SIGCONT %s: %v", lb.Name, err)
	}
	lb.paused = false
}
