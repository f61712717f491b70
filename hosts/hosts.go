// Package hosts writes and switches containerd's hosts.toml files (one per registry, in
// <dir>/<registry>/hosts.toml) that point containerd at lifeboat's registry mirror.
//
// Two forms exist. Fail-open (the default): lifeboat first, the upstream kept as `server`, so
// that containerd goes to the upstream itself when lifeboat is down or answers 404.
// Lifeboat-only: `server` is the mirror, for nodes that must pull only through lifeboat, and for
// the length of an outage drill, so that a drill cannot pass because containerd went around
// lifeboat. Config also describes the files tests and benchmarks write, with a stand-in upstream
// or no mirror at all, so that every hosts.toml in the tree comes from one renderer.
package hosts

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// FileName is the name of the file containerd reads in each registry directory.
const FileName = "hosts.toml"

// Marker begins the first line of every hosts.toml lifeboat writes. It is what makes a file
// lifeboat's own: `lifeboat configure containerd` replaces only files that carry it, whatever
// they point at, and never a file without it.
const Marker = "# Written by lifeboat"

// DrillMarker begins the first line of the lifeboat-only file an outage drill puts in place
// of a hosts.toml for its length (Switch), the original kept aside until the drill ends
// (Restore). Such a file is lifeboat's own (it begins with Marker), but configure leaves it
// alone: the drill's restore would undo whatever it wrote.
const DrillMarker = Marker + " for an outage drill"

// Upstream is the server containerd falls back to for registry: its default endpoint
// (oci.DefaultEndpoints), or "" for a registry on the loopback interface ("localhost:5000",
// "127.0.0.1:5000"). With no server line containerd reaches such a registry the way it does
// without any hosts.toml (https without verifying the certificate, then plain http), which no
// server line can say: `server = "https://127.0.0.1:5000"` would make it fail against a
// plain-HTTP registry.
func Upstream(registry string) string {
	if oci.IsLoopback(registry) {
		return ""
	}
	return oci.DefaultEndpoints(registry)[0]
}

// Render returns a hosts.toml for registry that sends pulls to the mirror at mirrorURL
// ("http://127.0.0.1:5100"). With fallback, the upstream stays as `server`.
func Render(registry, mirrorURL string, fallback bool) []byte {
	return Config{Registry: registry, Mirror: mirrorURL, Fallback: fallback}.Render()
}

// Config is what a hosts.toml for one registry says: the mirror containerd tries first, and the
// server it goes to after the mirror (or instead of it, when there is none).
type Config struct {
	// Registry is the registry the file is for, its directory under the hosts directory
	// ("docker.io", "127.0.0.1:5000").
	Registry string
	// Mirror is the URL of the mirror containerd tries first ("http://127.0.0.1:5100"); "" for
	// none, so that containerd pulls straight from the upstream.
	Mirror string
	// Fallback keeps the upstream as server behind the mirror (fail-open); without it the server
	// is the mirror itself (lifeboat-only).
	Fallback bool
	// Upstream is the server kept with Fallback or without a Mirror: Upstream(Registry) if "".
	// Tests and benchmarks set it to a plain-HTTP registry on loopback ("http://127.0.0.1:5000")
	// that stands in for Registry.
	Upstream string
	// Drill marks the lifeboat-only file an outage drill writes for its length (DrillMarker);
	// Fallback is then ignored.
	Drill bool
}

// Render returns the hosts.toml c describes.
func (c Config) Render() []byte {
	var b strings.Builder
	up := c.Upstream
	if up == "" {
		up = Upstream(c.Registry)
	}
	switch {
	case c.Mirror == "":
		fmt.Fprintf(&b, "%s: pulls go straight to the upstream, through no mirror.\n", Marker)
		if up != "" {
			fmt.Fprintf(&b, "server = %q\n", up)
		} else {
			fmt.Fprintf(&b, "# No server line: containerd goes to %s itself (https, then http).\n", c.Registry)
		}
		return []byte(b.String())
	case c.Drill:
		fmt.Fprintf(&b, "%s: pulls go through the lifeboat mirror only until the drill ends "+
			"(lifeboat outage stop), which puts the original file back.\n", DrillMarker)
		fmt.Fprintf(&b, "server = %q\n", c.Mirror)
	case c.Fallback:
		fmt.Fprintf(&b, "%s: pulls go through the lifeboat mirror first.\n", Marker)
		if up != "" {
			fmt.Fprintf(&b, "server = %q   # kept: if lifeboat is down, containerd falls back upstream\n", up)
		} else {
			fmt.Fprintf(&b, "# No server line: if lifeboat is down, containerd falls back to %s itself (https, then http).\n", c.Registry)
		}
	default:
		fmt.Fprintf(&b, "%s: pulls go through the lifeboat mirror only.\n", Marker)
		fmt.Fprintf(&b, "server = %q\n", c.Mirror)
	}
	fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"200ms\"\n", c.Mirror)
	return []byte(b.String())
}

// Write writes the hosts.toml c describes to dir/<registry>/hosts.toml, atomically, creating
// the registry's directory. A Registry that is not a registry host[:port] is refused
// (errdefs.ErrInvalidArgument), as for Plan.
func (c Config) Write(dir string) error {
	path, err := filePath(dir, c.Registry)
	if err != nil {
		return err
	}
	return writeAtomic(path, c.Render(), 0o644)
}

// filePath is the hosts.toml of registry under dir. registry must be a registry host[:port]
// as the mirror takes them (oci.ValidHost): any other name ("../x", "a/b", "..", "") could
// name a file outside dir, or no registry's, and is refused with errdefs.ErrInvalidArgument.
func filePath(dir, registry string) (string, error) {
	if !oci.ValidHost(registry) {
		return "", fmt.Errorf("%q is not a registry name: use a host with an optional port, such as docker.io or localhost:5000: %w",
			registry, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(dir, registry, FileName), nil
}

// Owned reports whether lifeboat wrote content: one of its lines begins with Marker.
func Owned(content []byte) bool {
	return hasLine(content, Marker)
}

// Drilled reports whether content is the file an outage drill put in place until it ends: one
// of its lines begins with DrillMarker.
func Drilled(content []byte) bool {
	return hasLine(content, DrillMarker)
}

// hasLine reports whether one of content's lines begins with prefix, after any indentation.
func hasLine(content []byte, prefix string) bool {
	for _, line := range strings.Split(string(content), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), prefix) {
			return true
		}
	}
	return false
}

// Action is what configuring a registry does to its hosts.toml.
type Action string

// The actions of a Change.
const (
	Create    Action = "written"    // there was no file
	Update    Action = "updated"    // lifeboat's own file, with other content
	Unchanged Action = "unchanged"  // lifeboat's own file, already as it would write it
	Skip      Action = "left alone" // a file lifeboat did not write: never replaced
	// Held is a file an outage drill switched (Drilled): never replaced, as the drill's
	// restore would undo it; configure again once the drill has ended.
	Held Action = "held by an outage drill"
)

// Change is what configuring one registry does to its hosts.toml: Plan computes it, Apply
// carries it out.
type Change struct {
	Registry string
	Path     string
	Action   Action
	// Current is the file as it is, nil if there is none.
	Current []byte
	// Proposed is the file lifeboat would write.
	Proposed []byte
}

// Plan works out what configuring registry under dir does: <dir>/<registry>/hosts.toml is
// created if missing, held while an outage drill has it switched, replaced by Render's output
// if it carries Marker, and otherwise skipped, even when it points at the mirror. It changes
// nothing. A registry that is not a registry host[:port] is refused (errdefs.ErrInvalidArgument).
func Plan(dir, registry, mirrorURL string, fallback bool) (Change, error) {
	path, err := filePath(dir, registry)
	if err != nil {
		return Change{}, err
	}
	c := Change{
		Registry: registry,
		Path:     path,
		Proposed: Render(registry, mirrorURL, fallback),
	}
	cur, err := os.ReadFile(c.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		c.Action = Create
		return c, nil
	case err != nil:
		return c, err
	}
	c.Current = cur
	switch {
	case Drilled(cur):
		c.Action = Held
	case !Owned(cur):
		c.Action = Skip
	case bytes.Equal(cur, c.Proposed):
		c.Action = Unchanged
	default:
		c.Action = Update
	}
	return c, nil
}

// Diff is a unified diff from the current file to the proposed one, "" when nothing would
// be written.
func (c Change) Diff() string {
	if c.Action != Create && c.Action != Update {
		return ""
	}
	oldName := c.Path
	if c.Current == nil {
		oldName = "/dev/null"
	}
	return Diff(oldName, c.Path, c.Current, c.Proposed)
}

// Apply writes the proposed file if the change creates or updates one, atomically, so that
// containerd never reads half a hosts.toml.
func (c Change) Apply() error {
	if c.Action != Create && c.Action != Update {
		return nil
	}
	return writeAtomic(c.Path, c.Proposed, 0o644)
}

// Manages reports whether a hosts.toml sends pulls to the mirror at mirrorURL: its server is
// the mirror, or it has a [host] entry for it. Outage drills switch such files whoever wrote
// them (and restore them after); configure goes by Owned instead.
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

// Switch rewrites the managed hosts.toml files under dir to the lifeboat-only form, marked with
// DrillMarker so that configure leaves them alone, keeping each original under backupDir
// (<backupDir>/<registry>/hosts.toml) until Restore. Only the given registries are switched, or
// all managed ones when registries is empty. It returns the registries switched. A file already switched (its backup exists) is left as it is.
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
		drill := Config{Registry: reg, Mirror: mirrorURL, Drill: true}
		if err := writeAtomic(path, drill.Render(), 0o644); err != nil {
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
