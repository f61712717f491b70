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
