package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/resolver"
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
					time.Duration(c.Resolve.UpstreamTimeout) != time.Second || c.Resolve.TagMaxAge != 0 || c.Cache.MaxSize != 0 ||
					c.Resolve.OnDenied != OnDeniedRefuse {
					t.Errorf("defaults differ from DESIGN.md: %+v", c)
				}
				if want := []string{"docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io"}; !slices.Equal(c.Mirror.Registries, want) || c.Mirror.AnyRegistry {
					t.Errorf("mirror.registries %v, any_registry %v; want %v and false", c.Mirror.Registries, c.Mirror.AnyRegistry, want)
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
on_denied = "serve-stale"
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
					time.Duration(c.Resolve.UpstreamTimeout) != 500*time.Millisecond || c.Resolve.OnDenied != OnDeniedServeStale ||
					len(c.Registry["docker.io"].Endpoints) != 2 || c.Outage.Mode != "blackhole" ||
					time.Duration(c.Outage.For) != 5*time.Minute {
					t.Errorf("parsed %+v", c)
				}
				if c.Plugin.Address != "/run/lifeboat/lifeboat.sock" {
					t.Errorf("an unset key lost its default: %q", c.Plugin.Address)
				}
			},
		},
		{
			name: "mirror.registries replaces the default list",
			toml: "[mirror]\nregistries = [\"registry.example.com:5000\"]\n[registry.\"ghcr.io\"]\nusername = \"u\"\n",
			check: func(t *testing.T, c Config) {
				if !slices.Equal(c.Mirror.Registries, []string{"registry.example.com:5000"}) {
					t.Errorf("mirror.registries = %v", c.Mirror.Registries)
				}
				if got, want := c.MirroredRegistries(), []string{"ghcr.io", "registry.example.com:5000"}; !slices.Equal(got, want) {
					t.Errorf("MirroredRegistries = %v, want %v", got, want)
				}
				if def := Default(); !slices.Equal(def.Mirror.Registries, DefaultRegistries) || len(DefaultRegistries) != 5 {
					t.Errorf("decoding changed the default list: %v", def.Mirror.Registries)
				}
			},
		},
		{
			name: "an empty mirror.registries leaves the tables",
			toml: "[mirror]\nregistries = []\nany_registry = true\n[registry.\"docker.io\"]\nendpoints = [\"https://mirror.gcr.io\"]\n",
			check: func(t *testing.T, c Config) {
				if got := c.MirroredRegistries(); !slices.Equal(got, []string{"docker.io"}) || !c.Mirror.AnyRegistry {
					t.Errorf("MirroredRegistries = %v, any_registry %v", got, c.Mirror.AnyRegistry)
				}
			},
		},
		{name: "unknown key names key and line", toml: "root = \"/x\"\n[cache]\nmax_sise = \"1GiB\"\n", wantErr: `line 3: unknown key "cache.max_sise"`},
		{name: "bad size names line and key", toml: "[cache]\nmax_size = \"lots\"\n", wantErr: "line 2, column 12: cache.max_size"},
		{name: "bad duration", toml: "[resolve]\nupstream_timeout = \"soon\"\n", wantErr: "invalid duration"},
		{name: "bad policy", toml: "[resolve]\npolicy = \"never\"\n", wantErr: "resolve.policy"},
		{name: "bad on_denied", toml: "[resolve]\non_denied = \"allow\"\n", wantErr: "resolve.on_denied"},
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

// TestErrorsNameFileKeyAndLine: a value the file sets that lifeboat refuses, or a value of the
// wrong type, is an error naming the file, the key and the value's line and column.
func TestErrorsNameFileKeyAndLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notReadable := filepath.Join(dir, "a-directory")
	if err := os.Mkdir(notReadable, 0o700); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name string
		toml string
		// want follows "config file <path>: ".
		want string
	}{
		{name: "policy", toml: "root = \"/x\"\n\n[resolve]\npolicy = \"fast\"\n",
			want: `line 4, column 10: resolve.policy: "fast" is not "upstream-first" or "cache-first"`},
		{name: "empty root", toml: "# the root\nroot = \"\"\n", want: "line 2, column 8: root: must not be empty"},
		{name: "upstream timeout", toml: "[resolve]\nupstream_timeout = \"0s\"\n", want: "line 2, column 20: resolve.upstream_timeout: must be positive"},
		{name: "tag max age", toml: "[resolve]\ntag_max_age = \"-1m\"\n", want: "line 2, column 15: resolve.tag_max_age: must not be negative"},
		{name: "on denied", toml: "[resolve]\non_denied = \"stale\"\n", want: `line 2, column 13: resolve.on_denied: "stale" is not "refuse" or "serve-stale"`},
		{name: "max size", toml: "[cache]\nmax_size = -1\n", want: "line 2, column 12: cache.max_size: must not be negative"},
		{name: "content delete", toml: "[plugin]\ncontent_delete = \"purge\"\n", want: `line 2, column 18: plugin.content_delete: "purge" is not "release" or "remove"`},
		{name: "log level", toml: "[log]\nformat = \"json\"\nlevel = \"loud\"\n", want: `line 3, column 9: log.level: "loud" is not one of trace, debug, info, warn, error`},
		{name: "log format", toml: "[log]\nformat = \"xml\"\n", want: `line 2, column 10: log.format: "xml" is not "text" or "json"`},
		{name: "endpoint in a multi-line array names its own line", toml: "[registry.\"ghcr.io\"]\nendpoints = [\n  \"https://a.example\",\n  \"b.example\",\n]\n",
			want: `line 4, column 3: registry."ghcr.io".endpoints: "b.example" must start with https:// or http://`},
		{name: "endpoint in an inline table", toml: "[registry]\n\"ghcr.io\" = { endpoints = [\"ghcr.io\"] }\n",
			want: `line 2, column 28: registry."ghcr.io".endpoints: "ghcr.io" must start with https:// or http://`},
		{name: "outage mode lists the modes", toml: "[outage]\nregistries = [\"docker.io\"]\nmode = \"fast\"\n",
			want: `line 3, column 8: outage.mode: mode "fast" is not one of dns, refused, blackhole, reset, http-<status> (400 to 599, e.g. http-503), slow, or flaky`},
		{name: "outage http status", toml: "[outage]\nmode = \"http-200\"\n", want: `line 2, column 8: outage.mode: mode "http-200": the status must be an error, from 400 to 599`},
		{name: "outage registry", toml: "[outage]\nmode = \"dns\"\nregistries = [\"docker.io\", \"docker.io/library\"]\n",
			want: `line 3, column 28: outage.registries: registry "docker.io/library" is not a registry host[:port]`},
		{name: "outage for", toml: "[outage]\nmode = \"dns\"\nfor = \"-5m\"\n", want: "line 3, column 7: outage.for: must not be negative"},
		{name: "missing CA file", toml: "[registry.\"r.example\"]\nendpoints = [\"https://r.example\"]\nca_file = \"" + missing + "\"\n",
			want: `line 3, column 11: registry."r.example".ca_file: cannot read ` + missing + ": no such file or directory"},
		{name: "CA file without a certificate", toml: "[registry.\"r.example\"]\nca_file = \"testdata/not-a-ca.pem\"\n",
			want: `line 2, column 11: registry."r.example".ca_file: testdata/not-a-ca.pem holds no PEM certificate`},
		{name: "CA file that is a directory", toml: "registry.\"r.example\".ca_file = \"" + notReadable + "\"\n",
			want: `line 1, column 32: registry."r.example".ca_file: cannot read ` + notReadable + ": is a directory"},
		{name: "docker config that cannot be read", toml: "[auth]\ndocker_config = \"" + notReadable + "\"\n",
			want: "line 2, column 17: auth.docker_config: cannot read " + notReadable + ": is a directory"},
		{name: "wrong type names the key and what it expects", toml: "root = \"/x\"\n[mirror]\naddress = 5100\n",
			want: "line 3, column 11: mirror.address: expected a string, not a TOML integer"},
		{name: "wrong type for a table", toml: "mirror = \"127.0.0.1:5100\"\n", want: "line 1, column 10: mirror: expected a table, not a TOML string"},
		{name: "wrong type for a list", toml: "[registry.\"ghcr.io\"]\nendpoints = \"https://ghcr.io\"\n",
			want: `line 2, column 13: registry."ghcr.io".endpoints: expected an array of strings, not a TOML string`},
		{name: "a duration written as a number", toml: "[resolve]\nupstream_timeout = 1\n",
			want: `line 2, column 20: resolve.upstream_timeout: 1 is not a duration: write a number with a unit, in quotes, such as "1s"`},
		{name: "a duration in a dotted key", toml: "outage.mode = \"dns\"\noutage.for = 2.5\n",
			want: `line 2, column 14: outage.for: 2.5 is not a duration`},
		{name: "bad size", toml: "[cache]\nmax_size = \"lots\"\n", want: `line 2, column 12: cache.max_size: invalid size "lots": use a number with a unit such as 20GiB`},
		{name: "unknown key", toml: "[cache]\n\nmax_sise = \"1GiB\"\n", want: `line 3: unknown key "cache.max_sise"`},
		{name: "mirrored registry that is not a host", toml: "[mirror]\nregistries = [\n  \"docker.io\",\n  \"ghcr.io/org\",\n]\n",
			want: `line 4, column 3: mirror.registries: "ghcr.io/org" is not a registry host[:port]`},
		{name: "mirrored registry not in normal form", toml: "[mirror]\nregistries = [\"Quay.io\"]\n",
			want: `line 2, column 15: mirror.registries: "Quay.io" is written "quay.io" in image references: write that`},
		{name: "any_registry not a boolean", toml: "[mirror]\nany_registry = \"yes\"\n",
			want: `line 2, column 16: mirror.any_registry: expected true or false, not a TOML string`},
		{name: "registry table named with a path", toml: "root = \"/x\"\n\n[registry.\"../../escaped\"]\nusername = \"u\"\n",
			want: `line 3, column 11: registry."../../escaped": "../../escaped" is not a registry host[:port]`},
		{name: "registry table named by a dotted key", toml: "registry.\"index.docker.io\".username = \"u\"\n",
			want: `line 1, column 10: registry."index.docker.io": "index.docker.io" is written "docker.io" in image references: write that`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "lifeboat.toml")
			if err := os.WriteFile(path, []byte(tc.toml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path, true)
			want := "config file " + path + ": " + tc.want
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error\n  %v\nwant one starting\n  %s", err, want)
			}
			var verr *Error
			if errors.As(err, &verr) && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%v is not errdefs.ErrInvalidArgument", err)
			}
		})
	}
}

// TestErrorsOfValuesNotFromTheFile: a value a flag or an environment variable set after Load
// (serve sets them on the loaded Config), or one the file did not set, claims no file or line,
// even when the file set the same key.
func TestErrorsOfValuesNotFromTheFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "lifeboat.toml")
	file := "[log]\nlevel = \"debug\"\n[outage]\nmode = \"dns\"\n[registry.\"r.example\"]\nca_file = \"testdata/ca.pem\"\nendpoints = [\"https://r.example\"]\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		set  func(c *Config)
		want string
	}{
		{name: "log level from a flag over the file's", set: func(c *Config) { c.Log.Level = "loud" }, want: `log.level: "loud" is not one of`},
		{name: "outage mode from a flag over the file's", set: func(c *Config) { c.Outage.Mode = "bogus" }, want: `outage.mode: mode "bogus" is not one of dns, refused`},
		{name: "a key the file does not set", set: func(c *Config) { c.Log.Format = "xml" }, want: `log.format: "xml" is not "text" or "json"`},
		{name: "root from the environment", set: func(c *Config) { c.Root = "" }, want: "root: must not be empty"},
		{name: "a registry changed in place", set: func(c *Config) {
			r := c.Registry["r.example"]
			r.CAFile = "testdata/not-a-ca.pem"
			c.Registry["r.example"] = r
		}, want: `registry."r.example".ca_file: testdata/not-a-ca.pem holds no PEM certificate`},
		{name: "an endpoint changed in place", set: func(c *Config) { c.Registry["r.example"].Endpoints[0] = "r.example" },
			want: `registry."r.example".endpoints: "r.example" must start with`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(path, true)
			if err != nil {
				t.Fatal(err)
			}
			tc.set(&c)
			err = c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error %v, want one starting %q (no file, no line)", err, tc.want)
			}
			var verr *Error
			if !errors.As(err, &verr) || verr.File != "" || verr.Line != 0 || verr.Column != 0 {
				t.Errorf("error %#v claims a position in the file", verr)
			}
		})
	}
}

// TestValidateFiles: the files the configuration names are checked however the value was set.
func TestValidateFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		cfg     func(c *Config)
		wantErr string
	}{
		{name: "a CA bundle with a certificate", cfg: func(c *Config) {
			c.Registry = map[string]Registry{"r.example": {CAFile: "testdata/ca.pem"}}
		}},
		{name: "a missing CA bundle", cfg: func(c *Config) {
			c.Registry = map[string]Registry{"r.example": {CAFile: filepath.Join(dir, "none.pem")}}
		}, wantErr: `registry."r.example".ca_file: cannot read ` + filepath.Join(dir, "none.pem") + ": no such file or directory"},
		{name: "a missing docker config means no credentials", cfg: func(c *Config) { c.Auth.DockerConfig = filepath.Join(dir, "none.json") }},
		{name: "a docker config that is a directory", cfg: func(c *Config) { c.Auth.DockerConfig = dir },
			wantErr: "auth.docker_config: cannot read " + dir + ": is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tc.cfg(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestFillLimitDefaultsMatchTheResolver: the defaults of the fill limits are the resolver's own,
// so that a daemon without them configured and a resolver without them set behave the same.
func TestFillLimitDefaultsMatchTheResolver(t *testing.T) {
	d := Default()
	if int64(d.Cache.VerifyBeforeSend) != resolver.DefaultVerifyBeforeSend {
		t.Errorf("config verify_before_send %v; resolver default %d", d.Cache.VerifyBeforeSend, resolver.DefaultVerifyBeforeSend)
	}
	if int64(d.Cache.MaxBlobSize) != resolver.DefaultMaxBlobSize || d.Resolve.MaxFills != resolver.DefaultMaxFills ||
		d.Resolve.MaxAbandonedFills != resolver.DefaultMaxAbandonedFills || time.Duration(d.Resolve.FillQueueTimeout) != resolver.DefaultFillQueueTimeout {
		t.Errorf("config defaults %v %d %d %v; resolver defaults %d %d %d %v", d.Cache.MaxBlobSize, d.Resolve.MaxFills, d.Resolve.MaxAbandonedFills, d.Resolve.FillQueueTimeout,
			resolver.DefaultMaxBlobSize, resolver.DefaultMaxFills, resolver.DefaultMaxAbandonedFills, resolver.DefaultFillQueueTimeout)
	}
}
