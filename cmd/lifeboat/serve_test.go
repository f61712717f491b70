package main

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/config"
)

// TestServeRefusesBadSettings checks that mistakes stop `lifeboat serve` with one sentence
// naming them, before anything is opened or listened on.
func TestServeRefusesBadSettings(t *testing.T) {
	dir := t.TempDir()
	badKey := filepath.Join(dir, "bad.toml")
	os.WriteFile(badKey, []byte("root = \"/tmp/x\"\n[mirror]\nadress = \"127.0.0.1:1\"\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown outage mode", []string{"--simulate-outage", "bogus"}, "bogus"},
		{"unknown config key", []string{"--config", badKey}, `line 3: unknown key "mirror.adress"`},
		{"missing explicit config", []string{"--config", filepath.Join(dir, "none.toml")}, "none.toml"},
		{"bad log level", []string{"--log-level", "loud"}, "log.level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			_, err := runCLI(t, append([]string{"serve", "--root", root, "--listen", "127.0.0.1:0", "--metrics-address", "",
				"--socket", filepath.Join(dir, "p.sock"), "--admin-socket", filepath.Join(dir, "a.sock")}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve %v: %v, want an error naming %q", tc.args, err, tc.want)
			}
			if _, err := os.Stat(root); !os.IsNotExist(err) {
				t.Errorf("the cache root was created although the settings were refused")
			}
		})
	}
}

// TestServeEnvironment checks the precedence flag > LIFEBOAT_* variable > config file.
func TestServeEnvironment(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "c.toml")
	os.WriteFile(cfgFile, []byte("root = \"/from/file\"\n[mirror]\naddress = \"127.0.0.1:7000\"\n"), 0o600)
	t.Setenv("LIFEBOAT_CONFIG", cfgFile)
	t.Setenv("LIFEBOAT_LISTEN", "127.0.0.1:7001")
	t.Setenv("LIFEBOAT_LOG_LEVEL", "debug")
	cmd := newServeCommand()
	if err := cmd.ParseFlags([]string{"--log-level", "warn"}); err != nil {
		t.Fatal(err)
	}
	var f serveFlags
	f.configPath, _ = cmd.Flags().GetString("config")
	f.logLevel, _ = cmd.Flags().GetString("log-level")
	cfg, err := loadServeConfig(cmd, f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != "/from/file" || cfg.Mirror.Address != "127.0.0.1:7001" || cfg.Log.Level != "warn" {
		t.Errorf("root %q (want the file's), mirror %q (want the variable's), log level %q (want the flag's)",
			cfg.Root, cfg.Mirror.Address, cfg.Log.Level)
	}
	// Empty variables, as a template that fills in nothing leaves them, count as unset; but
	// LIFEBOAT_METRICS_ADDRESS="" turns metrics off, as the file's "" does.
	t.Setenv("LIFEBOAT_ROOT", "")
	t.Setenv("LIFEBOAT_LISTEN", "")
	t.Setenv("LIFEBOAT_SIMULATE_OUTAGE", "")
	t.Setenv("LIFEBOAT_METRICS_ADDRESS", "")
	cfg, err = loadServeConfig(newServeCommand(), serveFlags{configPath: "/etc/lifeboat/config.toml"})
	if err != nil {
		t.Fatalf("empty variables: %v", err)
	}
	if cfg.Root != "/from/file" || cfg.Mirror.Address != "127.0.0.1:7000" || cfg.Metrics.Address != "" {
		t.Errorf("empty variables: root %q, mirror %q (want the file's), metrics %q (want off)", cfg.Root, cfg.Mirror.Address, cfg.Metrics.Address)
	}
	t.Setenv("LIFEBOAT_CONFIG", filepath.Join(dir, "missing.toml"))
	if _, err := loadServeConfig(newServeCommand(), serveFlags{configPath: "/etc/lifeboat/config.toml"}); err == nil {
		t.Error("a missing file named by LIFEBOAT_CONFIG must be an error, as with --config")
	}
}

// TestServeNotifiesSystemd runs `lifeboat serve` as a Type=notify unit would: it must send
// READY=1 once its listeners are up (the mirror answers by then) and STOPPING=1 when told to stop.
func TestServeNotifiesSystemd(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	// A free port for the mirror, so the test can check it answers once READY=1 arrives.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mirrorAddr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cmd := newRootCommand()
	cmd.SetOut(io.Discard)
	cmd.SetArgs([]string{"serve", "--root", filepath.Join(dir, "root"), "--listen", mirrorAddr, "--metrics-address", "",
		"--socket", filepath.Join(dir, "p.sock"), "--admin-socket", filepath.Join(dir, "a.sock"), "--log-level", "warn"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	// read returns the next notification, failing the test if serve exits or none comes.
	read := func(want string) string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				select {
				case serr := <-done:
					t.Fatalf("serve returned (%v) before sending %s", serr, want)
				default:
				}
				t.Fatalf("no %s notification: %v", want, err)
			}
			msg := string(buf[:n])
			if strings.Contains(msg, want) {
				return msg
			}
			t.Logf("notification: %q", msg)
		}
	}
	msg := read("READY=1")
	if !strings.Contains(msg, "STATUS=serving the mirror on "+mirrorAddr) {
		t.Errorf("READY=1 came without a status naming the mirror: %q", msg)
	}
	resp, err := http.Get("http://" + mirrorAddr + "/v2/")
	if err != nil {
		t.Fatalf("the mirror does not answer after READY=1: %v", err)
	}
	resp.Body.Close()

	cancel()
	read("STOPPING=1")
	if err := <-done; err != nil {
		t.Fatalf("serve after a stop: %v", err)
	}
}

// TestServeOutageModeErrors checks that a bad outage mode is one sentence naming where it was
// set and the modes there are.
func TestServeOutageModeErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.toml")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"flag", "", []string{"--simulate-outage", "bogus"}, `--simulate-outage "bogus" is not an outage mode; the modes are dns, refused, blackhole, reset, http-<status> (400 to 599, e.g. http-503), slow and flaky`},
		{"environment", "http-999", nil, `LIFEBOAT_SIMULATE_OUTAGE="http-999" is not an outage mode; the modes are dns,`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("LIFEBOAT_SIMULATE_OUTAGE", tc.env)
			}
			root := filepath.Join(dir, tc.name)
			_, err := runCLI(t, append([]string{"serve", "--root", root, "--config", empty}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "configuration") || strings.HasSuffix(sentence(err), "invalid argument") {
				t.Fatalf("serve with outage mode from the %s: %v, want %q", tc.name, err, tc.want)
			}
			if _, err := os.Stat(root); !errors.Is(err, fs.ErrNotExist) {
				t.Error("the root was created although the settings were refused")
			}
		})
	}
}

// TestServeClusterSettings checks every [cluster] key's flag and variable, and their
// precedence: flag > LIFEBOAT_CLUSTER_* > file > default.
func TestServeClusterSettings(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "c.toml")
	os.WriteFile(cfgFile, []byte("[cluster]\nnode_name = \"from-file\"\nreplicas = 2\n"), 0o600)
	load := func(t *testing.T, args ...string) (config.Config, error) {
		t.Helper()
		cmd := newServeCommand()
		if err := cmd.ParseFlags(append([]string{"--config", cfgFile}, args...)); err != nil {
			return config.Config{}, err
		}
		return loadServeConfig(cmd, serveFlags{configPath: cfgFile})
	}

	cfg, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster.Enabled() || cfg.Cluster.NodeName != "from-file" || cfg.Cluster.Replicas != 2 || !cfg.Cluster.Coalesce {
		t.Errorf("from the file: %+v", cfg.Cluster)
	}

	t.Setenv("LIFEBOAT_CLUSTER_JOIN", "a:7946, b:7946,,")
	t.Setenv("LIFEBOAT_CLUSTER_GOSSIP_ADDRESS", "127.0.0.2:7946")
	t.Setenv("LIFEBOAT_CLUSTER_PEER_ADDRESS", "127.0.0.2:5102")
	t.Setenv("LIFEBOAT_CLUSTER_ADVERTISE_ADDRESS", "127.0.0.2")
	t.Setenv("LIFEBOAT_CLUSTER_NODE_NAME", "from-env")
	t.Setenv("LIFEBOAT_CLUSTER_SECRET_FILE", "/env/key")
	t.Setenv("LIFEBOAT_CLUSTER_REPLICAS", "5")
	t.Setenv("LIFEBOAT_CLUSTER_COALESCE", "false")
	cfg, err = load(t)
	if err != nil {
		t.Fatal(err)
	}
	want := config.Cluster{Join: []string{"a:7946", "b:7946"}, GossipAddress: "127.0.0.2:7946", PeerAddress: "127.0.0.2:5102",
		AdvertiseAddress: "127.0.0.2", NodeName: "from-env", SecretFile: "/env/key", Replicas: 5, Coalesce: false,
		MaxIndexSize: config.Default().Cluster.MaxIndexSize, MaxClockSkew: config.Default().Cluster.MaxClockSkew}
	if !reflect.DeepEqual(cfg.Cluster, want) {
		t.Errorf("from the variables: %+v, want %+v", cfg.Cluster, want)
	}

	cfg, err = load(t, "--cluster-join", "127.0.0.1:7946,127.0.0.3:7946", "--cluster-gossip-address", "127.0.0.3:7946",
		"--cluster-peer-address", "127.0.0.3:5102", "--cluster-advertise-address", "127.0.0.3", "--cluster-node-name", "from-flag",
		"--cluster-secret-file", "/flag/key", "--cluster-replicas", "1", "--cluster-coalesce=true")
	if err != nil {
		t.Fatal(err)
	}
	want = config.Cluster{Join: []string{"127.0.0.1:7946", "127.0.0.3:7946"}, GossipAddress: "127.0.0.3:7946", PeerAddress: "127.0.0.3:5102",
		AdvertiseAddress: "127.0.0.3", NodeName: "from-flag", SecretFile: "/flag/key", Replicas: 1, Coalesce: true,
		MaxIndexSize: config.Default().Cluster.MaxIndexSize, MaxClockSkew: config.Default().Cluster.MaxClockSkew}
	if !reflect.DeepEqual(cfg.Cluster, want) {
		t.Errorf("from the flags: %+v, want %+v", cfg.Cluster, want)
	}

	for _, tc := range []struct {
		env, value, want string
	}{
		{"LIFEBOAT_CLUSTER_REPLICAS", "three", `LIFEBOAT_CLUSTER_REPLICAS "three" is not a number of replicas`},
		{"LIFEBOAT_CLUSTER_REPLICAS", "99", `cluster.replicas: 99 is not from 1 to 16`},
		{"LIFEBOAT_CLUSTER_COALESCE", "maybe", `LIFEBOAT_CLUSTER_COALESCE "maybe" is not true or false`},
		{"LIFEBOAT_CLUSTER_JOIN", "a", `cluster.join: "a" is not host:port`},
		{"LIFEBOAT_CLUSTER_NODE_NAME", "a b", `cluster.node_name`},
	} {
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			if _, err := load(t); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	t.Setenv("LIFEBOAT_CLUSTER_SECRET_FILE", "")
	if _, err := load(t, "--cluster-secret-file", ""); err == nil || !strings.Contains(err.Error(), "cluster.secret_file: must be set") {
		t.Errorf("join without a key file: %v", err)
	}
}
