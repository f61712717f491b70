package harness

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// Bounds on starting and stopping lifeboat.
const (
	lifeboatReadyTimeout   = 30 * time.Second
	lifeboatStopGrace      = 15 * time.Second
	lifeboatStartTries     = 5
	lifeboatRestartTimeout = 60 * time.Second
)

// LifeboatOptions configure StartLifeboat.
type LifeboatOptions struct {
	// Upstreams maps registries to their endpoints ([registry."<host>"] endpoints).
	Upstreams map[string][]string
	// ExtraConfig is TOML appended to the generated config (for tables not generated here).
	ExtraConfig string
	// Root reuses a data root, for restarts; a new temp dir if empty.
	Root string
	// Args are extra `lifeboat serve` arguments.
	Args []string
	// Metrics serves Prometheus metrics on a free port (see Lifeboat.Metric).
	Metrics bool
	// MaxSize is [cache] max_size: "8GiB" if empty; "auto" leaves it unset, so the budget is
	// taken from the root filesystem's free space at first start.
	MaxSize string
	// IP is the loopback address the mirror, metrics and cluster listeners bind (127.0.0.x);
	// "127.0.0.1" if empty.
	IP string
	// Cluster makes the daemon a member of a cluster (see StartCluster).
	Cluster *ClusterOptions
}

// Lifeboat is a `lifeboat serve` process with its own root, sockets and mirror port.
type Lifeboat struct {
	Root        string
	Mirror      string // host:port of the registry mirror
	Socket      string // containerd proxy plugin socket
	AdminSocket string
	Config      string
	MetricsAddr string // host:port of /metrics, when LifeboatOptions.Metrics
	// Name, Gossip and Peer are the node name, the memberlist address and the peer listener's
	// address of a cluster member (LifeboatOptions.Cluster).
	Name, Gossip, Peer string
	proc               *Process
	killed             *Process // stopped on purpose with SIGKILL
	paused             bool     // stopped with SIGSTOP (Pause)
}

// StartLifeboat builds lifeboat (once per test binary), starts `lifeboat serve` on free
// loopback ports and waits until it reports that it runs and its mirror answers `GET /v2/`. A
// port can be taken by another process between our probe and lifeboat's bind (tests running in
// parallel open many connections): the start is then tried again on other ports. It is stopped
// with SIGTERM in t.Cleanup, its log attached if the test failed.
func StartLifeboat(t testing.TB, opts LifeboatOptions) *Lifeboat {
	t.Helper()
	bin := BuildLifeboat(t)
	dir, err := os.MkdirTemp("", "lb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := opts.Root
	if root == "" {
		root = filepath.Join(dir, "root")
	}
	lb := &Lifeboat{
		Root:        root,
		Socket:      filepath.Join(dir, "lifeboat.sock"),
		AdminSocket: filepath.Join(dir, "admin.sock"),
		Config:      filepath.Join(dir, "config.toml"),
	}
	var lastErr error
	for try := range lifeboatStartTries {
		if err := lb.writeConfig(opts); err != nil {
			t.Fatalf("harness: %v", err)
		}
		lastErr = lb.start(t, bin, dir, opts.Args)
		if lastErr == nil {
			return lb
		}
		if !errors.Is(lastErr, errPortTaken) {
			break
		}
		t.Logf("harness: lifeboat start %d of %d: %v; trying other ports", try+1, lifeboatStartTries, lastErr)
	}
	t.Fatalf("harness: %v", lastErr)
	return nil
}

// errPortTaken marks a start that failed because a listen address was in use.
var errPortTaken = errors.New("a port was taken before lifeboat could listen on it")

// writeConfig picks free ports and writes the daemon's configuration file.
func (lb *Lifeboat) writeConfig(opts LifeboatOptions) error {
	ip := opts.IP
	if ip == "" {
		ip = "127.0.0.1"
	}
	port, err := freePortOn(ip)
	if err != nil {
		return err
	}
	lb.Mirror = net.JoinHostPort(ip, strconv.Itoa(port))
	if opts.Metrics {
		mport, err := freePortOn(ip)
		if err != nil {
			return err
		}
		lb.MetricsAddr = net.JoinHostPort(ip, strconv.Itoa(mport))
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "root = %q\n[mirror]\naddress = %q\n[plugin]\naddress = %q\n[admin]\naddress = %q\n[metrics]\naddress = %q\n",
		lb.Root, lb.Mirror, lb.Socket, lb.AdminSocket, lb.MetricsAddr)
	switch opts.MaxSize {
	case "auto":
	case "":
		fmt.Fprintf(&cfg, "[cache]\nmax_size = \"8GiB\"\n")
	default:
		fmt.Fprintf(&cfg, "[cache]\nmax_size = %q\n", opts.MaxSize)
	}
	fmt.Fprintf(&cfg, "[log]\nlevel = \"debug\"\n")
	for reg, eps := range opts.Upstreams {
		fmt.Fprintf(&cfg, "[registry.%q]\nendpoints = [", reg)
		for i, e := range eps {
			if i > 0 {
				cfg.WriteString(", ")
			}
			fmt.Fprintf(&cfg, "%q", e)
		}
		cfg.WriteString("]\n")
	}
	if opts.Cluster != nil {
		if err := lb.writeClusterConfig(&cfg, ip, opts.Cluster); err != nil {
			return err
		}
	}
	cfg.WriteString(opts.ExtraConfig)
	if err := os.WriteFile(lb.Config, []byte(cfg.String()), 0o600); err != nil {
		return fmt.Errorf("writing lifeboat config: %w", err)
	}
	return nil
}

// lifeboatRunning is what `lifeboat serve` logs once every listener is open.
const lifeboatRunning = "lifeboat is running"

// start starts the daemon and waits until it is ready. Ready means this process logged that it
// runs (so every listener is its own) and then answered GET /v2/: an answer alone could come
// from another process that took the port. A start that fails because an address was in use
// returns an error wrapping errPortTaken; the failed process is not left running.
func (lb *Lifeboat) start(t testing.TB, bin, dir string, args []string) error {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--config", lb.Config}, args...)...)
	proc, err := launch.Start("lifeboat", cmd, filepath.Join(dir, fmt.Sprintf("lifeboat-%d.log", time.Now().UnixNano())))
	if err != nil {
		return err
	}
	err = launch.WaitFor(lifeboatReadyTimeout, proc.Exited(), func() error {
		if !strings.Contains(proc.Log(), lifeboatRunning) {
			return fmt.Errorf("no %q in its log yet", lifeboatRunning)
		}
		return launch.GetOK(http.DefaultClient, "http://"+lb.Mirror+"/v2/")
	})
	if err != nil {
		stopErr := proc.Stop(lifeboatStopGrace)
		log := proc.Log()
		if errors.Is(err, launch.ErrStopped) && strings.Contains(log, "address already in use") {
			return fmt.Errorf("%w: %v", errPortTaken, stopErr)
		}
		return fmt.Errorf("lifeboat (mirror %s) did not become ready: %v (stop: %v); log:\n%s", lb.Mirror, err, stopErr, log)
	}
	lb.proc = proc
	t.Cleanup(func() {
		if err := proc.Stop(lifeboatStopGrace); err != nil && proc != lb.killed {
			t.Errorf("stopping lifeboat: %v", err)
		}
		if t.Failed() {
			proc.AttachLog(t)
		}
	})
	return nil
}

// URL is the mirror's base URL.
func (lb *Lifeboat) URL() string { return "http://" + lb.Mirror }

// Process is the running daemon.
func (lb *Lifeboat) Process() *Process { return lb.proc }

// Kill stops the daemon with SIGKILL, as a crash would.
func (lb *Lifeboat) Kill(t testing.TB) {
	t.Helper()
	lb.killed = lb.proc
	lb.proc.Kill()
}

// Restart starts the daemon again with the same config and root after it stopped.
func (lb *Lifeboat) Restart(t testing.TB) {
	t.Helper()
	if lb.proc.Running() {
		if err := lb.proc.Stop(lifeboatStopGrace); err != nil {
			t.Fatalf("stopping lifeboat: %v", err)
		}
	}
	// The addresses stay (clients and hosts.toml files know them): if another process holds one
	// for now, wait for it to let go.
	var startErr error
	err := launch.WaitFor(lifeboatRestartTimeout, nil, func() error {
		startErr = lb.start(t, BuildLifeboat(t), filepath.Dir(lb.Config), nil)
		if errors.Is(startErr, errPortTaken) {
			return startErr
		}
		return nil
	})
	if err == nil {
		err = startErr
	}
	if err != nil {
		t.Fatalf("harness: restarting lifeboat: %v", err)
	}
}

// MirrorHostsDir writes a hosts.toml directory that sends the registry's pulls to lifeboat only
// (no fallback to the upstream, so a test cannot pass by going around lifeboat), and returns it.
func (lb *Lifeboat) MirrorHostsDir(t testing.TB, registries ...string) string {
	t.Helper()
	return lb.ConfigureHosts(t, "none", registries...)
}

// CLI runs `lifeboat ARGS... --admin-socket <this daemon's socket>` and returns its combined
// output.
func (lb *Lifeboat) CLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(BuildLifeboat(t), append(args, "--admin-socket", lb.AdminSocket)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lifeboat %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Log is what the daemon has logged so far.
func (lb *Lifeboat) Log() string { return lb.proc.Log() }

// Metric scrapes the daemon's /metrics and returns the sum of the samples of the counter or
// gauge name whose labels include all of match. It fails the test when no such sample is
// exported: a renamed or unexported series must not read as zero. Use MetricOrZero where
// absence means zero.
func (lb *Lifeboat) Metric(t testing.TB, name string, match map[string]string) float64 {
	t.Helper()
	sum, found := lb.metric(t, name, match)
	if !found {
		t.Fatalf("harness: lifeboat exports no %s sample with labels %v", name, match)
	}
	return sum
}

// MetricOrZero is Metric for a series that exists only once something was counted (a label
// combination of a counter vector): absent, it is 0. Pair a zero it returns with a counter that
// must have moved in the same window, so that the window is known to be observed.
func (lb *Lifeboat) MetricOrZero(t testing.TB, name string, match map[string]string) float64 {
	t.Helper()
	sum, _ := lb.metric(t, name, match)
	return sum
}

// metric returns the sum of name's samples whose labels include all of match, and whether any
// sample matched.
func (lb *Lifeboat) metric(t testing.TB, name string, match map[string]string) (sum float64, found bool) {
	t.Helper()
	fam, ok := lb.families(t)[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range match {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum, found = sum+m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			sum, found = sum+m.GetGauge().GetValue(), true
		}
	}
	return sum, found
}
