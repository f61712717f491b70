package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
)

// runCommand runs the lifeboat command line with args and stdin, and returns its stdout, its
// stderr and its error.
func runCommand(t *testing.T, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newRootCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(stdin)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// oneSentence fails the test unless err is one line containing want.
func oneSentence(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %v, want one sentence with %q", what, err, want)
	}
}

func TestPrintImages(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	d := digest.FromString("index")
	var out bytes.Buffer
	err := printImages(&out, admin.ImagesReport{Platform: "linux/amd64", Images: []admin.Image{
		{Ref: "docker.io/library/a:1", Digest: d, Platforms: []string{"linux/amd64", "linux/arm64"}, Size: 3 << 20, LastUsed: now.Add(-3 * time.Minute), Pinned: true, Complete: true},
		{Ref: "docker.io/library/b:1", Digest: d, Platforms: []string{}, Size: 512, Missing: []string{"layer x"}},
		{Ref: "docker.io/library/c:1", Digest: d, Platforms: []string{}, LastUsed: now.Add(-2 * 24 * time.Hour), Error: "cached manifest is not JSON"},
	}}, now)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("want a header, 3 rows and an error line:\n%s", out.String())
	}
	short := "sha256:" + d.Encoded()[:12]
	for i, want := range [][]string{
		{"REF", "DIGEST", "PLATFORMS", "SIZE", "LAST USED", "PINNED", "COMPLETE"},
		{"docker.io/library/a:1", short + " ", "linux/amd64,linux/arm64", "3.0 MiB", "3 minutes ago", "yes", "yes"},
		{"docker.io/library/b:1", " - ", "512 B", "no  ", "no"},
		{"docker.io/library/c:1", "2 days ago", "error"},
		{"cannot inspect docker.io/library/c:1: cached manifest is not JSON"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	if strings.Contains(lines[0], "PEERS") {
		t.Errorf("a PEERS column with the cluster tier off: %q", lines[0])
	}

	// With the cluster tier on, PEERS names who holds each image.
	out.Reset()
	err = printImages(&out, admin.ImagesReport{Cluster: true, Images: []admin.Image{
		{Ref: "docker.io/library/a:1", Digest: d, Peers: []string{"n1", "n2", "n3", "n4", "n5"}},
		{Ref: "docker.io/library/b:1", Digest: d, Peers: []string{}},
		{Ref: "docker.io/library/c:1", Digest: d},
	}}, now)
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(out.String()), "\n")
	for i, want := range []string{"PEERS", "n1, n2, n3, +2 more", " -", " ?"} {
		if !strings.HasSuffix(strings.TrimRight(lines[i], " "), want) {
			t.Errorf("cluster line %d %q does not end with %q", i, lines[i], want)
		}
	}

	out.Reset()
	if err := printImages(&out, admin.ImagesReport{Images: []admin.Image{}}, now); err != nil || out.String() != "no images are cached\n" {
		t.Errorf("an empty cache: %q %v", out.String(), err)
	}
}

func TestPrintGC(t *testing.T) {
	t.Parallel()
	d := digest.FromString("x")
	for _, tc := range []struct {
		name string
		rep  admin.GCReport
		want []string
	}{
		{"nothing", admin.GCReport{UsedBytes: 1 << 20, BudgetBytes: 10 << 20, TargetBytes: 8 << 20},
			[]string{"nothing to evict: the cache holds 1.0 MiB, within its target of 8.0 MiB (budget 10.0 MiB)"}},
		{"dry run", admin.GCReport{DryRun: true, EvictionPlan: cache.EvictionPlan{Refs: []string{"docker.io/library/a:1"}, Blobs: []digest.Digest{d, d}, Bytes: 2 << 20}, UsedBytes: 9 << 20, BudgetBytes: 10 << 20, TargetBytes: 8 << 20},
			[]string{"would evict docker.io/library/a:1", "would free 2.0 MiB in 2 blobs (1 image)", "the cache would hold 7.0 MiB of its 10.0 MiB budget (target 8.0 MiB)"}},
		{"evicted, pinned rest", admin.GCReport{EvictionPlan: cache.EvictionPlan{Blobs: []digest.Digest{d}, Bytes: 1 << 20}, UsedBytes: 9 << 20, BudgetBytes: 10 << 20, TargetBytes: 8 << 20},
			[]string{"freed 1.0 MiB in 1 blob (0 images)", "the cache holds 9.0 MiB of its 10.0 MiB budget (target 8.0 MiB)", "it stays above the target: the rest is pinned or in use"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := printGC(&out, tc.rep); err != nil {
				t.Fatal(err)
			}
			if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("printGC:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestPrintVerify(t *testing.T) {
	t.Parallel()
	bad, gone := digest.FromString("bad"), digest.FromString("gone")
	var out bytes.Buffer
	rep := cache.VerifyReport{Checked: 12, Bytes: 3 << 20, Corrupt: []digest.Digest{bad}, Missing: []digest.Digest{gone}}
	if err := printVerify(&out, rep); err != nil {
		t.Fatal(err)
	}
	want := "checked 12 blobs (3.0 MiB): 1 corrupt, 1 missing\ncorrupt " + bad.String() + "\nmissing " + gone.String() + "\n"
	if out.String() != want {
		t.Errorf("printVerify:\n got %q\nwant %q", out.String(), want)
	}
	oneSentence(t, "verify of a damaged cache", verifyError(rep), "found 1 corrupt and 1 missing blobs; lifeboat verify --repair")
	rep.Repaired = true
	out.Reset()
	printVerify(&out, rep)
	if !strings.Contains(out.String(), "repaired: ") {
		t.Errorf("printVerify --repair does not say it repaired:\n%s", out.String())
	}
	oneSentence(t, "verify --repair of a damaged cache", verifyError(rep), "and repaired the cache")
	if err := verifyError(cache.VerifyReport{Checked: 3, Repaired: true}); err != nil {
		t.Errorf("verify of a sound cache: %v", err)
	}
}

// Not parallel: it sets LIFEBOAT_ROOT.
func TestCacheCommandsWithoutDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	noConfig := filepath.Join(t.TempDir(), "empty.toml") // the defaults
	if err := os.WriteFile(noConfig, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	// No cache at the root: say so rather than create one.
	empty := t.TempDir()
	for _, args := range [][]string{{"images"}, {"gc"}, {"verify"}} {
		_, _, err := runCommand(t, nil, append(args, "--admin-socket", sock, "--root", empty, "--config", noConfig)...)
		oneSentence(t, strings.Join(args, " ")+" of an empty root", err, "the lifeboat daemon is not running (nothing answers on "+sock+") and "+empty+" holds no lifeboat cache")
	}
	if _, err := os.Stat(filepath.Join(empty, "index.db")); err == nil {
		t.Error("a command made a cache in an empty root")
	}

	// A cache: images, gc and verify work on it directly, and say so on stderr.
	root := t.TempDir()
	s, err := cache.Open(t.Context(), root, cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	t.Setenv("LIFEBOAT_ROOT", root) // the root from the environment
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"images"}, "no images are cached\n"},
		{[]string{"images", "--json"}, "{\n  \"platform\": "},
		{[]string{"gc", "--dry-run"}, "nothing to evict"},
		{[]string{"verify"}, "checked 0 blobs (0 B): 0 corrupt, 0 missing\n"},
	} {
		out, errOut, err := runCommand(t, nil, append(tc.args, "--admin-socket", sock, "--config", noConfig)...)
		if err != nil || !strings.Contains(out, tc.want) || !strings.Contains(errOut, "not running: working on "+root+" directly") {
			t.Errorf("%v without the daemon: %v\nstdout %q\nstderr %q", tc.args, err, out, errOut)
		}
	}

	// A root a daemon holds, while the socket given is not that daemon's.
	held, err := cache.Open(t.Context(), root, cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, _, err = runCommand(t, nil, "images", "--admin-socket", sock, "--root", root, "--config", noConfig)
	oneSentence(t, "images of a held root", err, "the daemon at "+sock+" is not answering but holds "+root)

	// The commands that need the daemon say so.
	for _, args := range [][]string{{"pull", "alpine"}, {"pin", "alpine"}, {"unpin", "alpine"}, {"rm", "alpine"}} {
		_, _, err := runCommand(t, nil, append(args, "--admin-socket", sock)...)
		oneSentence(t, args[0]+" without the daemon", err, args[0]+" needs the daemon, which is not running (nothing answers on "+sock+")")
	}
	list := filepath.Join(t.TempDir(), "images.txt")
	os.WriteFile(list, []byte("alpine\n"), 0o644)
	_, _, err = runCommand(t, nil, "warm", "-f", list, "--admin-socket", sock)
	oneSentence(t, "warm without the daemon", err, "warm needs the daemon")

	_, _, err = runCommand(t, nil, "images", "--admin-socket", sock, "--config", noConfig+".missing", "--root", root)
	oneSentence(t, "images with a missing --config", err, "cannot read the configuration: config file "+noConfig+".missing")
}

func TestRefCommandsCheckTheirArguments(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pin", "Bad/Ref!!"}, `"Bad/Ref!!" is not an image reference such as alpine:3.20`},
		{[]string{"rm", "a b"}, `"a b" is not an image reference`},
		{[]string{"pull", "alpine", "Bad/Ref!!"}, `"Bad/Ref!!" is not an image reference`},
		{[]string{"pull", "alpine", "--platform", "not a platform"}, `--platform "not a platform" is not a platform such as linux/amd64`},
		{[]string{"pull", "alpine", "--platform", "linux/arm64", "--all-platforms"}, "--platform and --all-platforms cannot be used together"},
		{[]string{"pin"}, "accepts 1 arg(s), received 0"},
		{[]string{"pull"}, "requires at least 1 arg(s)"},
		{[]string{"warm"}, `required flag(s) "file" not set`},
	} {
		_, _, err := runCommand(t, nil, append(tc.args, "--admin-socket", sock)...)
		oneSentence(t, strings.Join(tc.args, " "), err, tc.want)
	}

	// A list with a bad line names the list; an empty list needs no daemon.
	list := filepath.Join(t.TempDir(), "images.txt")
	os.WriteFile(list, []byte("# comment\nalpine\nBad/Ref!!\n"), 0o644)
	_, _, err := runCommand(t, nil, "warm", "-f", list, "--admin-socket", sock)
	oneSentence(t, "warm of a list with a bad line", err, list+`: "Bad/Ref!!" is not an image reference`)
	out, _, err := runCommand(t, strings.NewReader("# nothing yet\n\n"), "warm", "-f", "-", "--admin-socket", sock)
	if err != nil || out != "no images in -: nothing to pull\n" {
		t.Errorf("warm of an empty list from stdin: %q %v", out, err)
	}
}

func TestNormalizeRefs(t *testing.T) {
	t.Parallel()
	got, err := normalizeRefs([]string{"alpine", "docker.io/library/alpine:latest", "ghcr.io/org/app:v1", "alpine:3.20"})
	want := []string{"docker.io/library/alpine:latest", "ghcr.io/org/app:v1", "docker.io/library/alpine:3.20"}
	if err != nil || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("normalizeRefs = %q %v, want %q", got, err, want)
	}
}
