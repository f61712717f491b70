package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	t.Setenv("LIFEBOAT_CONFIG", filepath.Join(dir, "missing.toml"))
	if _, err := loadServeConfig(newServeCommand(), serveFlags{configPath: "/etc/lifeboat/config.toml"}); err == nil {
		t.Error("a missing file named by LIFEBOAT_CONFIG must be an error, as with --config")
	}
}
