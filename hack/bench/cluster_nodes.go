package main

import (
	"bufio"
	crand "crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// loopbackIPs hands out 127.0.0.2, 127.0.0.3, ...: one address per node.
type loopbackIPs struct{ n int }

func (l *loopbackIPs) next() string {
	l.n++
	return fmt.Sprintf("127.0.0.%d", 1+l.n%254)
}

// writeClusterKey writes a new cluster key to path, mode 0600, and returns the path.
func writeClusterKey(path string) (string, error) {
	b := make([]byte, 32)
	if _, err := crand.Read(b); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600)
}

// member is a `lifeboat serve` of the benchmark: a cluster member, or a lone node.
type member struct {
	*daemon
	dir, name, mirror, metrics, gossip string
}

// startMember starts lifeboat on ip with docker.io pointing at upstream and its metrics on; a
// cluster member when keyFile is set, joining join (itself when join is empty).
func startMember(dir, bin, upstream, ip, nodeName, keyFile, join string) (*member, error) {
	addr := func() (string, error) {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return "", err
		}
		defer l.Close()
		return l.Addr().String(), nil
	}
	m := &member{dir: dir, name: nodeName}
	var err error
	if m.mirror, err = addr(); err != nil {
		return nil, err
	}
	if m.metrics, err = addr(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// upstream_timeout 5 s: twenty nodes starting fills at once on a shared two-core machine
	// can keep a registry's headers past the default 1 s, and a failed fill is not what this
	// measures.
	cfg := fmt.Sprintf("root = %q\n[mirror]\naddress = %q\n[plugin]\naddress = %q\n[admin]\naddress = %q\n[metrics]\naddress = %q\n[cache]\nmax_size = \"16GiB\"\n[resolve]\nupstream_timeout = \"5s\"\n[log]\nlevel = \"warn\"\n[registry.\"docker.io\"]\nendpoints = [\"http://%s\"]\n",
		filepath.Join(dir, "root"), m.mirror, filepath.Join(dir, "l.sock"), filepath.Join(dir, "a.sock"), m.metrics, upstream)
	if keyFile != "" {
		if m.gossip, err = addr(); err != nil {
			return nil, err
		}
		peer, err := addr()
		if err != nil {
			return nil, err
		}
		if join == "" {
			join = m.gossip
		}
		cfg += fmt.Sprintf("[cluster]\njoin = [%q]\ngossip_address = %q\npeer_address = %q\nadvertise_address = %q\nnode_name = %q\nsecret_file = %q\n",
			join, m.gossip, peer, ip, nodeName, keyFile)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	d, err := startDaemon(dir, bin, []string{"serve", "--config", filepath.Join(dir, "config.toml")}, nil)
	if err != nil {
		return nil, err
	}
	m.daemon = d
	if err := waitHTTP("http://"+m.mirror+"/v2/", d); err != nil {
		d.stop()
		return nil, err
	}
	return m, nil
}

// remove stops the member and deletes its directory.
func (m *member) remove() {
	m.stop()
	os.RemoveAll(m.dir)
}

// metric is the sum of the samples of name whose label text contains labels, from /metrics.
func (m *member) metric(name, labels string) (float64, error) {
	resp, err := http.Get("http://" + m.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") || !strings.Contains(line, labels) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q", name, line)
		}
		sum += v
	}
	return sum, sc.Err()
}

// waitMetric waits up to timeout until m's metric name (its samples whose labels contain
// labels, summed) is what ok accepts; want says what that is, for the error.
func waitMetric(m *member, name, labels, want string, timeout time.Duration, ok func(float64) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := m.metric(name, labels)
		if err == nil && ok(got) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s{%s} is %v, want %s (%v)", m.name, name, labels, got, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitHomed waits until m's index holds at least n keys.
func waitHomed(m *member, n int) error {
	return waitMetric(m, "lifeboat_cluster_homed_keys", "", fmt.Sprintf("at least %d", n), 30*time.Second,
		func(v float64) bool { return int(v) >= n })
}

// waitAlive waits until each of ms counts len(ms) members alive.
func waitAlive(ms []*member) error {
	for _, m := range ms {
		if err := waitMetric(m, "lifeboat_cluster_members", `state="alive"`, strconv.Itoa(len(ms)), 60*time.Second,
			func(v float64) bool { return int(v) == len(ms) }); err != nil {
			return err
		}
	}
	return nil
}
