package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		toml    string
		check   func(t *testing.T, c Config)
		wantErr string
	}{
		{
			name: "empty file keeps every default",
			toml: "",
			check: func(t *testing.T, c Config) {
				if c.Root != "/var/lib/lifeboat" || c.Mirror.Address != "127.0.0.1:5100" ||
					c.Plugin.Address != "/run/lifeboat/lifeboat.sock" || c.Admin.Address != "/run/lifeboat/admin.sock" ||
					c.Metrics.Address != "127.0.0.1:5101" || c.Resolve.Policy != PolicyUpstreamFirst ||
					time.Duration(c.Resolve.UpstreamTimeout) != time.Second || c.Resolve.TagMaxAge != 0 || c.Cache.MaxSize != 0 {
					t.Errorf("defaults differ from DESIGN.md: %+v", c)
				}
			},
		},
		{
			name: "every documented key",
			toml: `
root = "/data/lifeboat"
[mirror]
address = "0.0.0.0:5000"
[cache]
max_size = "20GiB"
[resolve]
policy = "cache-first"
tag_max_age = "10m"
upstream_timeout = "500ms"
[registry."docker.io"]
endpoints = ["https://mirror.gcr.io", "https://registry-1.docker.io"]
username = "u"
password = "p"
[outage]
mode = "blackhole"
registries = ["docker.io"]
for = "5m"
`,
			check: func(t *testing.T, c Config) {
				if c.Root != "/data/lifeboat" || c.Mirror.Address != "0.0.0.0:5000" || c.Cache.MaxSize != 20<<30 ||
					c.Resolve.Policy != PolicyCacheFirst || time.Duration(c.Resolve.TagMaxAge) != 10*time.Minute ||
					time.Duration(c.Resolve.UpstreamTimeout) != 500*time.Millisecond ||
					len(c.Registry["docker.io"].Endpoints) != 2 || c.Outage.Mode != "blackhole" ||
					time.Duration(c.Outage.For) != 5*time.Minute {
					t.Errorf("parsed %+v", c)
				}
				if c.Plugin.Address != "/run/lifeboat/lifeboat.sock" {
					t.Errorf("an unset key lost its default: %q", c.Plugin.Address)
				}
			},
		},
		{name: "unknown key names key and line", toml: "root = \"/x\"\n[cache]\nmax_sise = \"1GiB\"\n", wantErr: `line 3: unknown key "cache.max_sise"`},
		{name: "bad size names line and key", toml: "[cache]\nmax_size = \"lots\"\n", wantErr: "line 2, column 12: cache.max_size"},
		{name: "bad duration", toml: "[resolve]\nupstream_timeout = \"soon\"\n", wantErr: "invalid duration"},
		{name: "bad policy", toml: "[resolve]\npolicy = \"never\"\n", wantErr: "resolve.policy"},
		{name: "syntax error", toml: "root = \n", wantErr: "line 1"},
		{name: "endpoint without scheme", toml: "[registry.\"ghcr.io\"]\nendpoints = [\"ghcr.io\"]\n", wantErr: "https://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			err := Parse([]byte(tc.toml), &c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "none.toml")
	if _, err := Load(missing, false); err != nil {
		t.Errorf("a missing default config file must be fine: %v", err)
	}
	if _, err := Load(missing, true); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("a missing explicit config file must be an error naming it, got %v", err)
	}
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte("root = \"/srv/lb\"\n"), 0o600)
	c, err := Load(path, true)
	if err != nil || c.Root != "/srv/lb" {
		t.Errorf("Load = %+v, %v", c.Root, err)
	}
}
