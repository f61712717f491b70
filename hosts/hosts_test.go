package hosts

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

const mirror = "http://127.0.0.1:5100"

func TestRenderIsValidTOML(t *testing.T) {
	t.Parallel()
	for _, fallback := range []bool{true, false} {
		b := Render("docker.io", mirror, fallback)
		var f struct {
			Server string `toml:"server"`
			Host   map[string]struct {
				Capabilities []string `toml:"capabilities"`
				DialTimeout  string   `toml:"dial_timeout"`
			} `toml:"host"`
		}
		if err := toml.Unmarshal(b, &f); err != nil {
			t.Fatalf("fallback=%v: %v\n%s", fallback, err, b)
		}
		wantServer := mirror
		if fallback {
			wantServer = "https://registry-1.docker.io"
		}
		h, ok := f.Host[mirror]
		if f.Server != wantServer || !ok || !slices.Equal(h.Capabilities, []string{"pull", "resolve"}) || h.DialTimeout != "200ms" {
			t.Errorf("fallback=%v: parsed %+v", fallback, f)
		}
		if !Manages(b, mirror) || Manages(b, "http://127.0.0.1:9999") {
			t.Errorf("fallback=%v: Manages is wrong", fallback)
		}
	}
}

func TestSwitchAndRestore(t *testing.T) {
	t.Parallel()
	dir, backup := t.TempDir(), filepath.Join(t.TempDir(), "outage-hosts")
	write := func(reg, content string) {
		os.MkdirAll(filepath.Join(dir, reg), 0o755)
		if err := os.WriteFile(filepath.Join(dir, reg, FileName), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	managed := string(Render("docker.io", mirror, true)) + "# operator's comment\n"
	write("docker.io", managed)
	write("ghcr.io", string(Render("ghcr.io", mirror, true)))
	unrelated := "server = \"https://quay.io\"\n"
	write("quay.io", unrelated)

	got, err := Switch(dir, backup, mirror, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"docker.io", "ghcr.io"}) {
		t.Fatalf("switched %v, want docker.io and ghcr.io", got)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "docker.io", FileName))
	if !strings.Contains(string(b), "server = \""+mirror+"\"") {
		t.Errorf("docker.io not lifeboat-only during the outage:\n%s", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "quay.io", FileName)); string(b) != unrelated {
		t.Error("a file lifeboat does not manage was changed")
	}
	// A second switch (a replaced outage) keeps the first originals.
	if _, err := Switch(dir, backup, mirror, nil); err != nil {
		t.Fatal(err)
	}

	restored, err := Restore(backup)
	if err != nil || len(restored) != 2 {
		t.Fatalf("restored %v, %v", restored, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "docker.io", FileName)); string(b) != managed {
		t.Errorf("docker.io not restored byte for byte:\n%s", b)
	}
	if _, err := os.Stat(backup); !os.IsNotExist(err) {
		t.Error("backups left after restore")
	}
	if again, err := Restore(backup); err != nil || len(again) != 0 {
		t.Errorf("a second restore: %v %v, want nothing to do", again, err)
	}
}

func TestSwitchScopedToRegistries(t *testing.T) {
	t.Parallel()
	dir, backup := t.TempDir(), filepath.Join(t.TempDir(), "b")
	for _, reg := range []string{"docker.io", "ghcr.io"} {
		os.MkdirAll(filepath.Join(dir, reg), 0o755)
		os.WriteFile(filepath.Join(dir, reg, FileName), Render(reg, mirror, true), 0o644)
	}
	got, err := Switch(dir, backup, mirror, []string{"ghcr.io"})
	if err != nil || !slices.Equal(got, []string{"ghcr.io"}) {
		t.Fatalf("switched %v %v, want only ghcr.io", got, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "docker.io", FileName)); string(b) != string(Render("docker.io", mirror, true)) {
		t.Error("an out-of-scope registry was switched")
	}
}
