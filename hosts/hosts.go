// Package hosts writes and switches containerd's hosts.toml files (one per registry, in
// <dir>/<registry>/hosts.toml) that point containerd at lifeboat's registry mirror.
//
// Two forms exist. Fail-open (the default): lifeboat first, the upstream kept as `server`, so
// that containerd goes to the upstream itself when lifeboat is down or answers 404.
// Lifeboat-only: `server` is the mirror, for nodes that must pull only through lifeboat, and for
// the length of an outage drill, so that a drill cannot pass because containerd went around
// lifeboat.
package hosts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// FileName is the name of the file containerd reads in each registry directory.
const FileName = "hosts.toml"

// Upstream is the upstream server containerd falls back to for registry.
func Upstream(registry string) string {
	if registry == "docker.io" {
		return "https://registry-1.docker.io"
	}
	return "https://" + registry
}

// Render returns a hosts.toml for registry that sends pulls to the mirror at mirrorURL
// ("http://127.0.0.1:5100"). With fallback, the upstream stays as `server`.
func Render(registry, mirrorURL string, fallback bool) []byte {
	var b strings.Builder
	if fallback {
		fmt.Fprintf(&b, "# Written by lifeboat: pulls go through the lifeboat mirror first.\n")
		fmt.Fprintf(&b, "server = %q   # kept: if lifeboat is down, containerd falls back upstream\n", Upstream(registry))
	} else {
		fmt.Fprintf(&b, "# Written by lifeboat: pulls go through the lifeboat mirror only.\n")
		fmt.Fprintf(&b, "server = %q\n", mirrorURL)
	}
	fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"200ms\"\n", mirrorURL)
	return []byte(b.String())
}

// Manages reports whether a hosts.toml sends pulls to the mirror at mirrorURL: its server is
// the mirror, or it has a [host] entry for it.
func Manages(content []byte, mirrorURL string) bool {
	var f struct {
		Server string         `toml:"server"`
		Host   map[string]any `toml:"host"`
	}
	if toml.Unmarshal(content, &f) != nil {
		return false
	}
	if sameURL(f.Server, mirrorURL) {
		return true
	}
	for h := range f.Host {
		if sameURL(h, mirrorURL) {
			return true
		}
	}
	return false
}

func sameURL(a, b string) bool {
	return strings.TrimSuffix(a, "/") == strings.TrimSuffix(b, "/")
}

// Switch rewrites the managed hosts.toml files under dir to the lifeboat-only form, keeping
// each original under backupDir (<backupDir>/<registry>/hosts.toml) until Restore. Only the
// given registries are switched, or all managed ones when registries is empty. It returns the
// registries switched. A file already switched (its backup exists) is left as it is.
func Switch(dir, backupDir, mirrorURL string, registries []string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("hosts directory: %w", err)
	}
	want := map[string]bool{}
	for _, r := range registries {
		want[r] = true
	}
	var switched []string
	for _, e := range entries {
		reg := e.Name()
		if !e.IsDir() || len(want) > 0 && !want[reg] {
			continue
		}
		path := filepath.Join(dir, reg, FileName)
		content, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return switched, err
		}
		if !Manages(content, mirrorURL) {
			continue
		}
		backup := filepath.Join(backupDir, reg, FileName)
		if _, err := os.Stat(backup); err == nil {
			switched = append(switched, reg)
			continue
		}
		if err := writeAtomic(filepath.Join(backupDir, ".origin"), []byte(dir), 0o600); err != nil {
			return switched, err
		}
		if err := writeAtomic(backup, content, 0o600); err != nil {
			return switched, fmt.Errorf("keep the original %s: %w", path, err)
		}
		if err := writeAtomic(path, Render(reg, mirrorURL, false), 0o644); err != nil {
			return switched, fmt.Errorf("switch %s: %w", path, err)
		}
		switched = append(switched, reg)
	}
	return switched, nil
}

// Restore puts back every original kept under backupDir by Switch, and removes the backups.
// It returns the registries restored; with nothing to restore it does nothing.
func Restore(backupDir string) ([]string, error) {
	origin, err := os.ReadFile(filepath.Join(backupDir, ".origin"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	dir := string(origin)
	entries, err := os.ReadDir(backupDir)
	if err != nil {
		return nil, err
	}
	var restored []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		reg := e.Name()
		content, err := os.ReadFile(filepath.Join(backupDir, reg, FileName))
		if err != nil {
			return restored, err
		}
		if err := writeAtomic(filepath.Join(dir, reg, FileName), content, 0o644); err != nil {
			return restored, fmt.Errorf("restore %s: %w", filepath.Join(dir, reg, FileName), err)
		}
		if err := os.RemoveAll(filepath.Join(backupDir, reg)); err != nil {
			return restored, err
		}
		restored = append(restored, reg)
	}
	return restored, os.RemoveAll(backupDir)
}

// writeAtomic writes a file by renaming a complete temporary file over it, so that containerd
// never reads half a hosts.toml.
func writeAtomic(path string, content []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), mode); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
