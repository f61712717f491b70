package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/plan"
)

func TestPullableNames(t *testing.T) {
	t.Parallel()
	d1 := digest.FromString("one")
	d2 := digest.FromString("two")
	img := func(name string, d digest.Digest) images.Image {
		return images.Image{Name: name, Target: ocispec.Descriptor{Digest: d}}
	}
	got := pullableNames([]images.Image{
		img("ghcr.io/org/app:1", d2),
		img("docker.io/library/alpine:3.20", d1),
		img("docker.io/library/alpine@"+d1.String(), d1), // CRI's alias of the tag: folded
		img(d1.String(), d1),                             // CRI's image ID
		img("docker.io/library/pinned@"+d2.String(), d2), // pulled by digest only: kept
		img("docker.io/library/alpine@"+d2.String(), d2), // another image of the repository: kept
		img("import-2024-01-01 not a ref", d2),
		img("ghcr.io/org/app:1", d2),
	})
	want := []string{
		"docker.io/library/alpine:3.20",
		"docker.io/library/alpine@" + d2.String(),
		"docker.io/library/pinned@" + d2.String(),
		"ghcr.io/org/app:1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("pullableNames:\n got %q\nwant %q", got, want)
	}
}

func TestReadImageList(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "images.txt")
	os.WriteFile(path, []byte("# node images\nalpine:3.20  # base\n\n  ghcr.io/org/app:1\nalpine:3.20\n"), 0o644)
	got, err := readImageList(nil, path)
	if err != nil || !slices.Equal(got, []string{"alpine:3.20", "ghcr.io/org/app:1"}) {
		t.Fatalf("readImageList = %q %v", got, err)
	}
	got, err = readImageList(strings.NewReader("busybox\n"), "-")
	if err != nil || !slices.Equal(got, []string{"busybox"}) {
		t.Fatalf("readImageList from stdin = %q %v", got, err)
	}
	if _, err := readImageList(nil, filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("a missing list is not an error")
	}
}

func TestPrintDrill(t *testing.T) {
	t.Parallel()
	layer := digest.FromString("layer")
	var out bytes.Buffer
	err := printDrill(&out, admin.DrillReport{Platform: "linux/amd64", Ready: 1, Total: 4, Results: []admin.DrillResult{
		{Readiness: plan.Readiness{Ref: "docker.io/library/ok:1", Ready: true, Missing: []string{}}},
		{Readiness: plan.Readiness{Ref: "docker.io/library/some:1", Missing: []string{
			"layer " + layer.String() + " (3.0 MiB)", "config " + layer.String(), "layer x",
		}, MissingBytes: 3 << 20}},
		{Readiness: plan.Readiness{Ref: "docker.io/library/none:1", Missing: []string{"tag docker.io/library/none:1"}, Partial: true}, FixError: "upstream down"},
		{Readiness: plan.Readiness{Ref: "Bad Ref", Missing: []string{}}, Error: "invalid reference"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 7 {
		t.Fatalf("want a header, 4 rows, a fix error and a summary:\n%s", out.String())
	}
	for i, want := range [][]string{
		{"IMAGE", "READY", "MISSING", "BYTES MISSING"},
		{"docker.io/library/ok:1", "yes"},
		{"docker.io/library/some:1", "no", "layer " + layer.String()[:19] + "… (3.0 MiB), config ", "+1 more", "3.0 MiB"},
		{"docker.io/library/none:1", "no", "tag docker.io/library/none:1", "unknown"},
		{"Bad Ref", "error", "invalid reference"},
		{"could not fetch what docker.io/library/none:1 is missing: upstream down"},
		{"1 of 4 images would pull during an outage"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
}

// TestPrintDrillCluster: with the cluster tier on, SERVED BY says what could serve each image.
func TestPrintDrillCluster(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := printDrill(&out, admin.DrillReport{Platform: "linux/amd64", Ready: 1, Total: 3, Cluster: true, Results: []admin.DrillResult{
		{Readiness: plan.Readiness{Ref: "docker.io/library/ok:1", Ready: true, Missing: []string{}, ServedBy: plan.ServedByThisNode}},
		{Readiness: plan.Readiness{Ref: "docker.io/library/peer:1", Missing: []string{"layer x"}, ServedBy: "peer node-b", Peers: []string{"node-b"}}},
		{Readiness: plan.Readiness{Ref: "docker.io/library/none:1", Missing: []string{"tag docker.io/library/none:1"}, Partial: true, ServedBy: plan.ServedByNothing}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("want a header, 3 rows and two summary lines:\n%s", out.String())
	}
	for i, want := range []string{"SERVED BY", "this node", "peer node-b", "nothing", "1 of 3 images would pull during an outage", "1 more a peer holds"} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q lacks %q", i, lines[i], want)
		}
	}
}

func runDrill(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"drill", "--admin-socket", filepath.Join(t.TempDir(), "none.sock")}, args...))
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

func TestDrillWithoutImages(t *testing.T) {
	t.Parallel()
	empty := filepath.Join(t.TempDir(), "images.txt")
	os.WriteFile(empty, []byte("# nothing yet\n"), 0o644)
	// No daemon is needed to say there is nothing to do.
	out, err := runDrill(t, "--images", empty)
	if err != nil || !strings.Contains(out, "nothing to drill") {
		t.Fatalf("drill of an empty list: %v\n%s", err, out)
	}
	out, err = runDrill(t, "--images", empty, "--json", "--platform", "linux/arm64")
	var rep admin.DrillReport
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.Total != 0 || rep.Results == nil || rep.Platform != "linux/arm64" {
		t.Fatalf("drill --json of an empty list: %v\n%s", err, out)
	}
	if _, err := runDrill(t, "--images", empty, "--platform", "not a platform"); err == nil {
		t.Error("a malformed --platform is accepted")
	}
}
