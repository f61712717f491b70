package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// cliRun is how one run of the lifeboat binary went.
type cliRun struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r cliRun) String() string {
	return fmt.Sprintf("lifeboat %s: exit %d\n-- stdout --\n%s-- stderr --\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// runLifeboat runs the lifeboat binary with args.
func runLifeboat(t *testing.T, args ...string) cliRun {
	t.Helper()
	return runLifeboatEnv(t, t.Context(), append(os.Environ(), "LIFEBOAT_ROOT=", "LIFEBOAT_ADMIN_SOCKET="), args...)
}

// runLifeboatEnv runs the lifeboat binary with args in env until it exits or ctx ends.
func runLifeboatEnv(t *testing.T, ctx context.Context, env []string, args ...string) cliRun {
	t.Helper()
	cmd := exec.CommandContext(ctx, harness.BuildLifeboat(t), args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliRun{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("lifeboat %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// must fails the test unless the run exited with code.
func (r cliRun) must(t *testing.T, code int) cliRun {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d: %s", code, r)
	}
	return r
}

// oneSentence checks that the run failed with exit 1 and a single "lifeboat: ..." line on stderr
// containing want, and no Go stack trace or usage text.
func (r cliRun) oneSentence(t *testing.T, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "lifeboat: ") || strings.HasPrefix(lines[0], "lifeboat: lifeboat ") ||
		!strings.Contains(lines[0], want) {
		t.Errorf("want exit 1 and one line on stderr with %q: %s", want, r)
	}
}

// refused checks that `lifeboat serve` gave up: exit 1, and the last line on stderr a
// "lifeboat: ..." sentence containing want (the daemon may have logged before it gave up), with
// no Go stack trace or usage text.
func (r cliRun) refused(t *testing.T, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	if r.code != 1 || !strings.HasPrefix(last, "lifeboat: ") || !strings.Contains(last, want) ||
		strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "Usage:") {
		t.Errorf("want exit 1 and a last line on stderr with %q: %s", want, r)
	}
}

// decodeJSON parses the run's stdout into v.
func decodeJSON[T any](t *testing.T, r cliRun) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("stdout is not the JSON expected (%v): %s", err, r)
	}
	return v
}

// TestCLI drives the cache commands of the real binary against a real daemon whose docker.io is
// a local registry: pull and warm, images, pin, rm, gc under a small budget, verify and repair of
// a corrupted blob, the commands that work on the root while the daemon is down, and the one
// sentence each gives for bad input.
func TestCLI(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	busyImg := reg.PushBusybox(t, "library/cli-busybox", "1")
	reg.PushRandom(t, "library/cli-random", "v1", 2, 256<<10)
	rmImg := reg.PushRandom(t, "library/cli-rm", "v1", 1, 1<<10)
	multi := reg.PushMultiPlatform(t, "library/cli-multi", "v1", 1, 4<<10, "linux/amd64", "linux/arm64")
	const (
		busybox = "docker.io/library/cli-busybox:1"
		random  = "docker.io/library/cli-random:v1"
		multiV1 = "docker.io/library/cli-multi:v1"
	)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{"docker.io": {reg.URL()}}})
	cli := func(args ...string) cliRun {
		t.Helper()
		return runLifeboat(t, append(args, "--admin-socket", lb.AdminSocket)...)
	}
	images := func() admin.ImagesReport {
		t.Helper()
		return decodeJSON[admin.ImagesReport](t, cli("images", "--json").must(t, 0))
	}

	// pull: two images, one line each when stdout is not a terminal.
	r := cli("pull", "cli-busybox:1", "docker.io/library/cli-random:v1").must(t, 0)
	t.Logf("%s", r)
	for _, ref := range []string{busybox, random} {
		if !strings.Contains(r.stdout, "pulled "+ref+" (") {
			t.Errorf("no \"pulled %s\" line: %s", ref, r)
		}
	}
	if strings.Contains(r.stdout, "\x1b[") {
		t.Errorf("terminal escapes written to a pipe: %q", r.stdout)
	}
	// Again: everything is cached, nothing is fetched.
	pulled := decodeJSON[admin.PullReport](t, cli("pull", "--json", "cli-busybox:1", "cli-random:v1").must(t, 0))
	if pulled.Pulled != 2 || pulled.Failed != 0 || len(pulled.Results) != 2 || pulled.Platform != "linux/"+runtime.GOARCH {
		t.Fatalf("second pull: %+v", pulled)
	}
	for _, res := range pulled.Results {
		if res.FetchedBytes != 0 || res.CachedBytes <= 0 || res.Bytes <= res.CachedBytes || res.Error != "" {
			t.Errorf("second pull of %s fetched %d bytes (cached %d of %d), want nothing fetched", res.Ref, res.FetchedBytes, res.CachedBytes, res.Bytes)
		}
	}

	// status counts what the mirror answered: two tag checks the upstream confirmed and one
	// tag it does not have (pull above went through the admin socket, not the mirror).
	for range 2 {
		if got, err := mirrorHead(t, lb, "/v2/library/cli-busybox/manifests/1?ns=docker.io"); err != nil || got != "revalidated" {
			t.Fatalf("tag HEAD through the mirror: %q %v", got, err)
		}
	}
	if _, err := mirrorHead(t, lb, "/v2/library/cli-busybox/manifests/nope?ns=docker.io"); err == nil {
		t.Fatal("a tag the upstream does not have was found")
	}
	st := decodeJSON[admin.Status](t, cli("status", "--json").must(t, 0))
	if a := st.Requests.Answers; a["revalidated"] != 2 || a["error"] != 1 || st.Requests.HitRatio != 1 {
		t.Errorf("status --json requests: %+v, want 2 revalidated, 1 error, hit ratio 1", st.Requests)
	}
	if r = cli("status").must(t, 0); !strings.Contains(r.stdout, " answered, hit ratio 100% (2 revalidated), 1 error\n") {
		t.Errorf("status does not sum up the mirror's answers: %s", r)
	}
	if pulled.Results[0].Digest != harness.Digest(t, busyImg) {
		t.Errorf("pull --json: digest %s, want %s", pulled.Results[0].Digest, harness.Digest(t, busyImg))
	}

	t.Run("status", func(t *testing.T) {
		r := cli("status").must(t, 0)
		checkStatusText(t, r, map[string]string{
			"version": cliVersion(t), "root": lb.Root, "outage": "none",
			"mirror": lb.Mirror, "admin": lb.AdminSocket, "metrics": "off",
		}, "docker.io", reg.URL(), "up")
	})
	t.Run("version", func(t *testing.T) {
		r := runLifeboat(t, "version").must(t, 0)
		if f := strings.Fields(r.stdout); len(f) != 2 || f[0] != "lifeboat" || strings.Count(r.stdout, "\n") != 1 || r.stderr != "" {
			t.Errorf("version: want one line \"lifeboat VERSION\": %s", r)
		}
	})
	t.Run("completion bash", func(t *testing.T) { checkBashCompletion(t) })
	t.Run("configure containerd", func(t *testing.T) { checkConfigureContainerd(t, lb, busybox) })
	t.Run("serve refuses to start", func(t *testing.T) { checkServeRefuses(t, lb) })

	// warm: every platform of an index listed in a file.
	list := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(list, []byte("# what this node runs\ncli-multi:v1  # both platforms\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = cli("warm", "-f", list, "--all-platforms").must(t, 0)
	if !strings.Contains(r.stdout, "pulled "+multiV1+" (") {
		t.Errorf("warm: %s", r)
	}

	// On a terminal, live lines are drawn and erased, and the line of the image done stays.
	if script, err := exec.LookPath("script"); err == nil {
		line := strings.Join([]string{harness.BuildLifeboat(t), "pull", "cli-multi:v1", "--all-platforms", "--admin-socket", lb.AdminSocket}, " ")
		out, err := exec.CommandContext(t.Context(), script, "-qec", line, "/dev/null").CombinedOutput()
		if err != nil || !strings.Contains(string(out), multiV1+"  resolving") || !strings.Contains(string(out), "\x1b[J") ||
			!strings.Contains(string(out), "pulled "+multiV1+" (") {
			t.Errorf("pull on a terminal: %v\n%q", err, out)
		}
	} else {
		t.Logf("no script(1) to run a pull on a terminal: %v", err)
	}

	// images: the table, --json and --quiet.
	r = cli("images").must(t, 0)
	t.Logf("%s", r)
	rows := tableRows(t, r, "REF", "DIGEST", "PLATFORMS", "SIZE", "LAST USED", "PINNED", "COMPLETE")
	for _, ref := range []string{busybox, random, multiV1} {
		row, ok := rows[ref]
		if !ok || !strings.HasSuffix(row, "no  yes") {
			t.Errorf("images: %s is not listed unpinned and complete: %q\n%s", ref, row, r.stdout)
		}
	}
	if row := rows[multiV1]; !strings.Contains(row, "linux/amd64,linux/arm64") || !strings.Contains(row, multi.Digest[:len("sha256:")+12]+" ") {
		t.Errorf("images: the index row lacks its platforms or short digest: %q", row)
	}
	if row := rows[busybox]; !strings.Contains(row, " linux/"+runtime.GOARCH+" ") || !strings.Contains(row, " ago ") && !strings.Contains(row, " just now ") {
		t.Errorf("images: the busybox row lacks its platform or last use: %q", row)
	}
	rep := images()
	if len(rep.Images) != 3 || rep.Platform != "linux/"+runtime.GOARCH {
		t.Fatalf("images --json: %+v", rep)
	}
	refs := []string{rep.Images[0].Ref, rep.Images[1].Ref, rep.Images[2].Ref}
	if !slices.Equal(refs, []string{busybox, multiV1, random}) {
		t.Errorf("images --json: refs %q, want them sorted", refs)
	}
	byRef := map[string]admin.Image{}
	for _, img := range rep.Images {
		byRef[img.Ref] = img
		if !img.Complete || img.Pinned || img.Size <= 0 || img.LastUsed.IsZero() || len(img.Missing) != 0 || img.Error != "" {
			t.Errorf("images --json: %+v, want complete, unpinned, sized and used", img)
		}
	}
	if got := byRef[multiV1]; got.Digest.String() != multi.Digest || !slices.Equal(got.Platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("images --json: index %+v", got)
	}
	if got := byRef[random]; got.Size < 2*256<<10 || !slices.Equal(got.Platforms, []string{"linux/" + runtime.GOARCH}) {
		t.Errorf("images --json: random image %+v, want its two 256 KiB layers counted", got)
	}
	r = cli("images", "--quiet").must(t, 0)
	if got := strings.Fields(r.stdout); !slices.Equal(got, []string{busybox, multiV1, random}) {
		t.Errorf("images --quiet: %q", got)
	}

	// pin, and the sentences for bad input.
	r = cli("pin", "cli-busybox:1").must(t, 0)
	if !strings.Contains(r.stdout, "pinned "+busybox) {
		t.Errorf("pin: %s", r)
	}
	if img := images().Images[0]; img.Ref != busybox || !img.Pinned {
		t.Errorf("after pin: %+v", img)
	}
	t.Run("unpin and pin --json", func(t *testing.T) {
		r := cli("unpin", "cli-busybox:1").must(t, 0)
		if strings.TrimSpace(r.stdout) != "unpinned "+busybox+": it can be evicted again" {
			t.Errorf("unpin: %s", r)
		}
		if img := images().Images[0]; img.Ref != busybox || img.Pinned {
			t.Errorf("after unpin: %+v, want it unpinned", img)
		}
		if r = cli("unpin", busybox).must(t, 0); !strings.Contains(r.stdout, busybox+" was not pinned") {
			t.Errorf("unpin of an unpinned image: %s", r)
		}
		want := admin.RefResult{Ref: busybox, Pinned: true, Changed: true}
		want.Digest = mustDigest(t, harness.Digest(t, busyImg))
		if got := decodeJSON[admin.RefResult](t, cli("pin", "--json", "cli-busybox:1").must(t, 0)); got != want {
			t.Errorf("pin --json: %+v, want %+v", got, want)
		}
		want.Changed = false
		if got := decodeJSON[admin.RefResult](t, cli("pin", "--json", busybox).must(t, 0)); got != want {
			t.Errorf("pin --json of a pinned image: %+v, want %+v", got, want)
		}
		if img := images().Images[0]; img.Ref != busybox || !img.Pinned {
			t.Errorf("after pin --json: %+v", img)
		}
	})
	cli("pin", "cli-nope:1").oneSentence(t, "docker.io/library/cli-nope:1 is not cached")
	cli("unpin", "cli-nope:1").oneSentence(t, "docker.io/library/cli-nope:1 is not cached")
	cli("pull", "Bad/Ref!!").oneSentence(t, `"Bad/Ref!!" is not an image reference`)
	cli("pin", "Bad/Ref!!").oneSentence(t, `"Bad/Ref!!" is not an image reference`)
	r = cli("pull", "cli-never-pushed:1")
	r.oneSentence(t, "1 of 1 images failed to pull")
	if !strings.HasPrefix(r.stdout, "failed docker.io/library/cli-never-pushed:1: ") {
		t.Errorf("pull of an image the registry lacks: %s", r)
	}

	// verify: all sound.
	r = cli("verify").must(t, 0)
	if !strings.Contains(r.stdout, ": 0 corrupt, 0 missing") {
		t.Errorf("verify: %s", r)
	}

	// rm forgets a ref.
	r = cli("rm", "cli-multi:v1").must(t, 0)
	if !strings.Contains(r.stdout, "removed "+multiV1+"; its blobs stay cached until evicted") {
		t.Errorf("rm: %s", r)
	}
	cli("rm", "cli-multi:v1").oneSentence(t, multiV1+" is not cached")
	if r = cli("images", "-q").must(t, 0); strings.Contains(r.stdout, multiV1) {
		t.Errorf("images lists a removed ref: %s", r)
	}
	t.Run("rm --json", func(t *testing.T) {
		const rmRef = "docker.io/library/cli-rm:v1"
		cli("pull", rmRef).must(t, 0)
		cli("pin", rmRef).must(t, 0)
		got := decodeJSON[admin.RefResult](t, cli("rm", "--json", "cli-rm:v1").must(t, 0))
		if want := (admin.RefResult{Ref: rmRef, Digest: mustDigest(t, harness.Digest(t, rmImg)), Changed: true}); got != want {
			t.Errorf("rm --json of a pinned image: %+v, want %+v (its pin goes with it)", got, want)
		}
		if r := cli("images", "-q").must(t, 0); strings.Contains(r.stdout, rmRef) {
			t.Errorf("images lists a removed ref: %s", r)
		}
	})

	// gc with an 8 GiB budget has nothing to do.
	r = cli("gc", "--dry-run").must(t, 0)
	if !strings.Contains(r.stdout, "nothing to evict") {
		t.Errorf("gc --dry-run under budget: %s", r)
	}

	// Now a budget the cache fills to 90%: under the high watermark (95%), so the evictor lets
	// it be, over the low one (85%), so gc evicts.
	st = decodeJSON[admin.Status](t, cli("status", "--json").must(t, 0))
	budget := st.Cache.UsedBytes * 100 / 90
	restartWithBudget(t, lb, budget)
	r = cli("gc", "--dry-run").must(t, 0)
	t.Logf("%s", r)
	if !strings.Contains(r.stdout, "would evict "+random+"\n") || strings.Contains(r.stdout, busybox) {
		t.Errorf("gc --dry-run: want the unpinned image to go, the pinned one to stay: %s", r)
	}
	if r = cli("images", "-q").must(t, 0); !strings.Contains(r.stdout, random) {
		t.Errorf("gc --dry-run evicted: %s", r)
	}
	gc := decodeJSON[admin.GCReport](t, cli("gc", "--json").must(t, 0))
	if !slices.Contains(gc.Refs, random) || slices.Contains(gc.Refs, busybox) || gc.Bytes < 2*256<<10 || gc.DryRun ||
		gc.UsedBytes > gc.TargetBytes || gc.BudgetBytes != budget || len(gc.Blobs) == 0 {
		t.Errorf("gc --json: %+v", gc)
	}
	if rep = images(); len(rep.Images) != 1 || rep.Images[0].Ref != busybox || !rep.Images[0].Complete || !rep.Images[0].Pinned {
		t.Errorf("after gc: %+v, want only the pinned image, complete", rep.Images)
	}

	// Corrupt a layer of the pinned image on disk: verify names it and exits 1; --repair
	// quarantines it; the next pull fetches it again.
	layer := harness.LayerDigests(t, busyImg)[0]
	corruptBlob(t, lb.Root, layer)
	r = cli("verify")
	t.Logf("%s", r)
	r.oneSentence(t, "found 1 corrupt and 0 missing blobs")
	if !strings.Contains(r.stdout, "corrupt "+layer+"\n") {
		t.Errorf("verify does not name the corrupt blob: %s", r)
	}
	r = cli("verify", "--repair", "--json").must(t, 1)
	vr := decodeJSON[cache.VerifyReport](t, r)
	if len(vr.Corrupt) != 1 || vr.Corrupt[0].String() != layer || !vr.Repaired {
		t.Errorf("verify --repair: %+v", vr)
	}
	if q, _ := os.ReadDir(filepath.Join(lb.Root, "quarantine")); len(q) != 1 {
		t.Errorf("quarantine holds %d files after the repair, want 1", len(q))
	}
	cli("verify").must(t, 0)
	if img := images().Images[0]; img.Complete || len(img.Missing) != 1 || !strings.Contains(img.Missing[0], layer) {
		t.Errorf("after the repair: %+v, want the layer missing", img)
	}
	pulled = decodeJSON[admin.PullReport](t, cli("pull", "--json", busybox).must(t, 0))
	if res := pulled.Results[0]; res.FetchedBytes <= 0 || res.CachedBytes <= 0 {
		t.Errorf("pull after the repair: %+v, want the layer fetched and the rest found cached", res)
	}
	if img := images().Images[0]; !img.Complete {
		t.Errorf("after the pull: %+v", img)
	}

	// A daemon that holds the root but is not found on the socket given.
	nowhere := filepath.Join(t.TempDir(), "none.sock")
	runLifeboat(t, "images", "--root", lb.Root, "--admin-socket", nowhere).oneSentence(t, "the daemon at "+nowhere+" is not answering but holds "+lb.Root)

	// The daemon stops: images, verify and gc work on the root; the others say they need it.
	if err := lb.Process().Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	offline := func(args ...string) cliRun {
		t.Helper()
		return runLifeboat(t, append(args, "--admin-socket", nowhere, "--root", lb.Root, "--config", lb.Config)...)
	}
	r = offline("images", "--json").must(t, 0)
	rep = decodeJSON[admin.ImagesReport](t, r)
	if len(rep.Images) != 1 || rep.Images[0].Ref != busybox || !rep.Images[0].Complete || !rep.Images[0].Pinned {
		t.Errorf("images without the daemon: %+v", rep)
	}
	if !strings.Contains(r.stderr, "not running: working on "+lb.Root+" directly") {
		t.Errorf("images without the daemon does not say so: %s", r)
	}
	if r = offline("images").must(t, 0); !strings.Contains(r.stdout, busybox) {
		t.Errorf("images without the daemon: %s", r)
	}
	if r = offline("verify").must(t, 0); !strings.Contains(r.stdout, ": 0 corrupt, 0 missing") {
		t.Errorf("verify without the daemon: %s", r)
	}
	offline("gc", "--dry-run").must(t, 0)
	// status needs the daemon: one sentence naming the socket, nothing on stdout, for people
	// and for scripts alike.
	for _, args := range [][]string{{"status"}, {"status", "--json"}} {
		r = runLifeboat(t, append(args, "--admin-socket", nowhere)...)
		r.oneSentence(t, nowhere)
		if r.stdout != "" {
			t.Errorf("%s with the daemon down printed on stdout: %s", strings.Join(args, " "), r)
		}
	}
	for _, args := range [][]string{{"pin", busybox}, {"unpin", busybox}, {"rm", busybox}, {"pull", busybox}} {
		runLifeboat(t, append(args, "--admin-socket", nowhere)...).oneSentence(t, args[0]+" needs the daemon, which is not running (nothing answers on "+nowhere+")")
	}
	empty := t.TempDir()
	runLifeboat(t, "images", "--root", empty, "--admin-socket", nowhere).oneSentence(t, empty+" holds no lifeboat cache")
}

// tableRows checks the header of a table printed by the run and maps the first column of each
// row to the rest of it, spaces squeezed to two.
func tableRows(t *testing.T, r cliRun, header ...string) map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if got := strings.Join(strings.Fields(lines[0]), " "); got != strings.Join(header, " ") {
		t.Fatalf("table header %q, want %q: %s", got, header, r)
	}
	rows := map[string]string{}
	for _, l := range lines[1:] {
		cells := strings.Split(l, "  ")
		var kept []string
		for _, c := range cells {
			if c = strings.TrimSpace(c); c != "" {
				kept = append(kept, c)
			}
		}
		if len(kept) > 0 {
			rows[kept[0]] = " " + strings.Join(kept[1:], "  ")
		}
	}
	return rows
}

// restartWithBudget restarts the daemon with [cache] max_size set to budget bytes.
func restartWithBudget(t *testing.T, lb *harness.Lifeboat, budget int64) {
	t.Helper()
	if err := lb.Process().Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(lb.Config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), `max_size = "8GiB"`, fmt.Sprintf(`max_size = "%d"`, budget), 1)
	if cfg == string(b) {
		t.Fatalf("no max_size to change in %s:\n%s", lb.Config, b)
	}
	if err := os.WriteFile(lb.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	lb.Restart(t)
}

// corruptBlob flips a byte in the middle of a cached blob's file.
func corruptBlob(t *testing.T, root, dgst string) {
	t.Helper()
	path := filepath.Join(root, "blobs", "sha256", strings.TrimPrefix(dgst, "sha256:"))
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// mustDigest parses a digest.
func mustDigest(t *testing.T, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// cliVersion is the version `lifeboat version` prints.
func cliVersion(t *testing.T) string {
	t.Helper()
	r := runLifeboat(t, "version").must(t, 0)
	f := strings.Fields(r.stdout)
	if len(f) != 2 {
		t.Fatalf("version: %s", r)
	}
	return f[1]
}

// checkStatusText checks the human output of `lifeboat status`: a "key  value" line for each
// of the keys of want (values of want that are not empty must be the whole value), and after a
// blank line the table of upstream endpoints with a row for registry and endpoint in state.
func checkStatusText(t *testing.T, r cliRun, want map[string]string, registry, endpoint, state string) {
	t.Helper()
	head, table, ok := strings.Cut(r.stdout, "\n\n")
	if !ok {
		t.Fatalf("status: no endpoint table after a blank line: %s", r)
	}
	lines := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(head))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		lines[k] = strings.TrimSpace(v)
	}
	for _, k := range []string{"version", "uptime", "root", "cache", "requests", "outage", "mirror", "admin", "metrics"} {
		got, ok := lines[k]
		if !ok || got == "" {
			t.Errorf("status: no %q line: %s", k, r)
		} else if w := want[k]; w != "" && got != w {
			t.Errorf("status: %s %q, want %q", k, got, w)
		}
	}
	if c := lines["cache"]; !strings.Contains(c, " of ") || !strings.Contains(c, "%)") {
		t.Errorf("status: cache line %q does not say how full the cache is", c)
	}
	rows := tableRows(t, cliRun{args: r.args, stdout: table}, "REGISTRY", "ENDPOINT", "STATE", "SINCE", "LAST ERROR")
	row, ok := rows[registry]
	if !ok {
		t.Fatalf("status: no row for %s in the endpoint table: %s", registry, r)
	}
	cells := strings.Split(strings.TrimSpace(row), "  ")
	if len(cells) < 3 || cells[0] != endpoint || cells[1] != state {
		t.Errorf("status: endpoint row %q, want %s %s", row, endpoint, state)
	} else if _, err := time.Parse(time.RFC3339, cells[2]); err != nil {
		t.Errorf("status: endpoint row %q: SINCE is not a time: %v", row, err)
	}
}

// checkBashCompletion: `lifeboat completion bash` prints a script that bash loads, registers
// for lifeboat, and that completes lifeboat's subcommands (by asking the binary).
func checkBashCompletion(t *testing.T) {
	r := runLifeboat(t, "completion", "bash").must(t, 0)
	if !strings.Contains(r.stdout, "complete -o default -F __start_lifeboat lifeboat") {
		t.Fatalf("completion bash does not register a completion for lifeboat: %s", r)
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skipf("no bash to load the script: %v", err)
	}
	script := filepath.Join(t.TempDir(), "lifeboat.bash")
	if err := os.WriteFile(script, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	// What bash does on TAB after "lifeboat <cur>", without the bash-completion package: the
	// words, then the script's own functions.
	complete := func(cur string) []string {
		t.Helper()
		prog := `source "$1" && complete -p lifeboat >/dev/null && words=("$2" "$3") && cword=1 && cur="$3" && COMPREPLY=() &&
__lifeboat_get_completion_results && __lifeboat_process_completion_results 2>/dev/null; printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.CommandContext(t.Context(), bash, "-c", prog, "bash", script, harness.BuildLifeboat(t), cur).Output()
		if err != nil {
			t.Fatalf("bash completing %q: %v", cur, err)
		}
		return strings.Fields(string(out))
	}
	got := complete("")
	for _, sub := range []string{"serve", "status", "images", "pull", "warm", "pin", "unpin", "rm", "gc", "verify", "outage", "drill", "configure", "demo", "version"} {
		if !slices.Contains(got, sub) {
			t.Errorf("completing \"lifeboat \" does not offer %s: %q", sub, got)
		}
	}
	if got := complete("unp"); !slices.Equal(got, []string{"unpin"}) {
		t.Errorf("completing \"lifeboat unp\": %q, want unpin", got)
	}
}

// checkConfigureContainerd: `lifeboat configure containerd --dry-run` shows the hosts.toml it
// would write and writes nothing; without it, it writes the file, and a real containerd pulls
// through lifeboat with it (--fallback none: there is no way around lifeboat).
func checkConfigureContainerd(t *testing.T, lb *harness.Lifeboat, ref string) {
	dir := filepath.Join(t.TempDir(), "certs.d")
	file := filepath.Join(dir, "docker.io", "hosts.toml")
	args := []string{"configure", "containerd", "--hosts-dir", dir, "--registry", "docker.io", "--mirror", lb.Mirror, "--fallback", "none"}
	r := runLifeboat(t, append(args, "--dry-run")...).must(t, 0)
	for _, want := range []string{"+++ " + file, fmt.Sprintf("+server = %q\n", lb.URL()), fmt.Sprintf("+[host.%q]\n", lb.URL())} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("configure containerd --dry-run does not show %q: %s", want, r)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("configure containerd --dry-run created %s (%v)", dir, err)
	}

	r = runLifeboat(t, args...).must(t, 0)
	if !strings.Contains(r.stdout, file+": written\n") || !strings.Contains(r.stdout, fmt.Sprintf("config_path = %q", dir)) {
		t.Errorf("configure containerd: %s", r)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), fmt.Sprintf("server = %q\n", lb.URL())) || strings.Contains(string(b), "registry-1.docker.io") {
		t.Errorf("hosts.toml with --fallback none:\n%s", b)
	}
	if r = runLifeboat(t, args...).must(t, 0); !strings.Contains(r.stdout, file+": unchanged\n") {
		t.Errorf("configure containerd run again: %s", r)
	}

	ctd := harness.StartContainerd(t)
	before := decodeJSON[admin.Status](t, runLifeboat(t, "status", "--json", "--admin-socket", lb.AdminSocket).must(t, 0))
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", dir, ref)
	after := decodeJSON[admin.Status](t, runLifeboat(t, "status", "--json", "--admin-socket", lb.AdminSocket).must(t, 0))
	if a, b := after.Requests.Answers, before.Requests.Answers; a["revalidated"] <= b["revalidated"] || a["hit"] <= b["hit"] {
		t.Errorf("containerd did not pull %s through lifeboat with the hosts.toml written: answers %v, then %v", ref, b, a)
	}
}

// checkServeRefuses: `lifeboat serve` exits 1 with one sentence, and leaves the running daemon
// alone, when the root is locked by that daemon, when its admin socket or mirror address is
// taken, and when the configuration has a bad value (naming the key, creating nothing).
func checkServeRefuses(t *testing.T, lb *harness.Lifeboat) {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LIFEBOAT_") {
			env = append(env, kv)
		}
	}
	// A serve that starts instead of refusing is killed after a minute, and fails the test.
	serve := func(t *testing.T, args ...string) cliRun {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		return runLifeboatEnv(t, ctx, env, append([]string{"serve"}, args...)...)
	}
	stillServing := func(t *testing.T) {
		t.Helper()
		if got := decodeJSON[admin.Status](t, runLifeboat(t, "status", "--json", "--admin-socket", lb.AdminSocket).must(t, 0)); got.Root != lb.Root {
			t.Errorf("the running daemon answers for root %s, want %s", got.Root, lb.Root)
		}
	}
	own := func(t *testing.T) (dir string, args []string) {
		dir = t.TempDir()
		return dir, []string{"--listen", "127.0.0.1:0", "--socket", filepath.Join(dir, "plugin.sock"), "--metrics-address", ""}
	}

	t.Run("root in use", func(t *testing.T) {
		dir, args := own(t)
		sock := filepath.Join(dir, "admin.sock")
		serve(t, append(args, "--config", lb.Config, "--root", lb.Root, "--admin-socket", sock)...).refused(t, lb.Root)
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused serve left its admin socket %s (%v)", sock, err)
		}
		stillServing(t)
	})
	t.Run("admin socket in use", func(t *testing.T) {
		dir, args := own(t)
		r := serve(t, append(args, "--config", lb.Config, "--root", filepath.Join(dir, "root"), "--admin-socket", lb.AdminSocket)...)
		r.refused(t, lb.AdminSocket)
		if !strings.Contains(r.stderr, "in use") {
			t.Errorf("the sentence does not say the socket is in use: %s", r)
		}
		stillServing(t)
	})
	t.Run("mirror address in use", func(t *testing.T) {
		dir, args := own(t)
		args[1] = lb.Mirror
		sock := filepath.Join(dir, "admin.sock")
		serve(t, append(args, "--config", lb.Config, "--root", filepath.Join(dir, "root"), "--admin-socket", sock)...).refused(t, lb.Mirror)
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused serve left its admin socket %s (%v)", sock, err)
		}
		stillServing(t)
	})
	for _, tc := range []struct{ name, toml, key string }{
		{"bad policy", "[resolve]\npolicy = \"sometimes\"\n", "policy"},
		{"bad size", "[cache]\nmax_size = \"lots\"\n", "max_size"},
		{"bad duration", "[resolve]\nupstream_timeout = \"soon\"\n", "upstream_timeout"},
		{"unknown key", "[mirror]\nadress = \"127.0.0.1:5100\"\n", "adress"},
	} {
		t.Run("config "+tc.name, func(t *testing.T) {
			dir := t.TempDir()
			root, sock, cfg := filepath.Join(dir, "root"), filepath.Join(dir, "admin.sock"), filepath.Join(dir, "config.toml")
			content := fmt.Sprintf("root = %q\n[admin]\naddress = %q\n[metrics]\naddress = \"\"\n%s", root, sock, tc.toml)
			if err := os.WriteFile(cfg, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			r := serve(t, "--config", cfg, "--listen", "127.0.0.1:0", "--socket", filepath.Join(dir, "plugin.sock"))
			r.refused(t, tc.key)
			if !strings.Contains(r.stderr, cfg) {
				t.Errorf("the sentence does not name the file %s: %s", cfg, r)
			}
			for _, p := range []string{root, sock} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("serve with a bad config created %s (%v)", p, err)
				}
			}
		})
	}
}
