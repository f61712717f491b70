package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/daemon/daemontest"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
)

// TestClientAdminSocketPrecedence checks where the client commands take the admin socket from:
// --admin-socket, else LIFEBOAT_ADMIN_SOCKET, else [admin] address of the configuration file
// (--config, else LIFEBOAT_CONFIG), else the default.
func TestClientAdminSocketPrecedence(t *testing.T) {
	dir := t.TempDir()
	fromFile := filepath.Join(dir, "file.sock")
	cfgFile := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, "[admin]\naddress = %q\n", fromFile), 0o644); err != nil {
		t.Fatal(err)
	}
	fromEnv, fromFlag := filepath.Join(dir, "env.sock"), filepath.Join(dir, "flag.sock")
	empty := t.TempDir() // a root without a cache, for gc
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"config file", nil, []string{"status", "--config", cfgFile}, fromFile},
		{"config file from the environment", map[string]string{"LIFEBOAT_CONFIG": cfgFile}, []string{"outage", "status"}, fromFile},
		{"environment over the file", map[string]string{"LIFEBOAT_ADMIN_SOCKET": fromEnv}, []string{"status", "--config", cfgFile}, fromEnv},
		{"flag over all", map[string]string{"LIFEBOAT_ADMIN_SOCKET": fromEnv}, []string{"status", "--config", cfgFile, "--admin-socket", fromFlag}, fromFlag},
		{"cache command", nil, []string{"gc", "--config", cfgFile, "--root", empty}, fromFile},
		{"ref command", nil, []string{"pin", "alpine", "--config", cfgFile}, fromFile},
		{"missing explicit file", nil, []string{"status", "--config", cfgFile + ".missing"}, "cannot read the configuration: config file " + cfgFile + ".missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("LIFEBOAT_ADMIN_SOCKET", "")
			t.Setenv("LIFEBOAT_CONFIG", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := runCLI(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v: %v, want an error naming %s", tc.args, err, tc.want)
			}
		})
	}
}

// TestStatusFromConfig runs a daemon whose admin socket only its configuration file names, and
// checks that `lifeboat status --json --config` finds it and prints the shape scripts read:
// every listener, the endpoints as a list with the mirrored registries before any request,
// and no times for an outage never started.
func TestStatusFromConfig(t *testing.T) {
	cfg := daemontest.Config(t)
	cfgFile := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, "[admin]\naddress = %q\n[registry.\"ghcr.io\"]\nusername = \"u\"\n", cfg.Admin.Address), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Registry = map[string]config.Registry{"ghcr.io": {Username: "u"}}
	daemontest.Start(t, cfg, time.Minute)
	t.Setenv("LIFEBOAT_ADMIN_SOCKET", "")

	out, err := runCLI(t, "status", "--json", "--config", cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Endpoints []map[string]any           `json:"endpoints"`
		Listeners map[string]string          `json:"listeners"`
		Outage    map[string]json.RawMessage `json:"outage"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	for _, k := range []string{"mirror", "plugin", "admin", "metrics"} {
		if st.Listeners[k] == "" || strings.HasSuffix(st.Listeners[k], ":0") {
			t.Errorf("listener %s is %q, want its address", k, st.Listeners[k])
		}
	}
	var endpoints []string
	for _, e := range st.Endpoints {
		endpoints = append(endpoints, fmt.Sprint(e["registry"], " ", e["endpoint"], " ", e["up"]))
	}
	// The default [mirror] registries, ghcr.io among them, each at its default endpoint.
	if want := "docker.io https://registry-1.docker.io true,gcr.io https://gcr.io true,ghcr.io https://ghcr.io true,quay.io https://quay.io true,registry.k8s.io https://registry.k8s.io true"; strings.Join(endpoints, ",") != want {
		t.Errorf("endpoints %q, want %q", endpoints, want)
	}
	if _, ok := st.Outage["since"]; ok {
		t.Errorf("an outage never started has a since:\n%s", out)
	}
	if _, ok := st.Outage["until"]; ok {
		t.Errorf("an outage never started has an until:\n%s", out)
	}

	out, err = runCLI(t, "status", "--config", cfgFile)
	if err != nil || !strings.Contains(out, "plugin    "+cfg.Plugin.Address) || !strings.Contains(out, "ghcr.io") {
		t.Errorf("status: %v\n%s\nwant the plugin socket and the configured registry", err, out)
	}
}

// TestSentence checks the line main prints for an error: no error class at its end.
func TestSentence(t *testing.T) {
	t.Parallel()
	_, unreachable := admin.NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(t.Context())
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"invalid argument", fmt.Errorf("mode %q is bad: %w", "x", errdefs.ErrInvalidArgument), `mode "x" is bad`},
		{"twice", fmt.Errorf("%w: %w", fmt.Errorf("dir does not exist: %w", errdefs.ErrInvalidArgument), errdefs.ErrInvalidArgument), "dir does not exist"},
		{"usage", fmt.Errorf("log level %q: %w", "loud", errUsage), `log level "loud"`},
		{"not found", fmt.Errorf("tag: %w", errdefs.ErrNotFound), "tag"},
		{"the system's words stay", &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrPermission}, "open /x: permission denied"},
		{"a class in the middle stays", fmt.Errorf("%w (more)", errdefs.ErrNotFound), "not found (more)"},
		{"no daemon", unreachable, "the lifeboat daemon is not running (nothing answers on "},
	} {
		got := sentence(tc.err)
		if !strings.HasPrefix(got, tc.want) || (tc.name != "no daemon" && got != tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		if strings.HasPrefix(got, "lifeboat ") {
			t.Errorf("%s: %q would print as lifeboat: lifeboat ...", tc.name, got)
		}
	}
}

// TestCacheCommandsLogOnlyWhenAsked runs gc and verify without the daemon: the cache's own log
// lines (level=info msg=gc) are not printed unless a log level is asked for.
func TestCacheCommandsLogOnlyWhenAsked(t *testing.T) {
	logs := daemontest.CaptureLog(t)
	root := t.TempDir()
	s, err := cache.Open(t.Context(), root, cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	noConfig := filepath.Join(t.TempDir(), "empty.toml")
	os.WriteFile(noConfig, nil, 0o644)
	sock := filepath.Join(t.TempDir(), "none.sock")
	t.Setenv("LIFEBOAT_LOG_LEVEL", "")
	for _, args := range [][]string{{"gc"}, {"verify"}} {
		if _, err := runCLI(t, append(args, "--admin-socket", sock, "--root", root, "--config", noConfig)...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	if l := logs.String(); l != "" {
		t.Errorf("gc and verify without the daemon logged:\n%s", l)
	}
	if _, err := runCLI(t, "gc", "--admin-socket", sock, "--root", root, "--config", noConfig, "--log-level", "info"); err != nil {
		t.Fatal(err)
	}
	if l := logs.String(); !strings.Contains(l, "msg=gc") {
		t.Errorf("gc --log-level info without the daemon did not log its pass:\n%q", l)
	}
	_, err = runCLI(t, "gc", "--admin-socket", sock, "--root", root, "--config", noConfig, "--log-level", "loud")
	if err == nil || !strings.Contains(err.Error(), `log level "loud" is not one of`) {
		t.Errorf("gc --log-level loud: %v", err)
	}
}
