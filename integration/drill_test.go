package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/hosts"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestDrill asks `lifeboat drill` about a real containerd that holds three images: two pulled
// through lifeboat and one pulled straight from the registry, around lifeboat. The drill must
// name the third as the one that would not pull during an outage and exit 1; `--fix` must fetch
// it; and once the registry is gone the drill must still pass, since it never asks the upstream,
// and the third image must really pull through lifeboat.
func TestDrill(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	reg.PushBusybox(t, "library/drill-busybox", "1")
	multi := reg.PushMultiPlatform(t, "library/drill-multi", "v1", 2, 8<<10, "linux/amd64", "linux/arm64")
	reg.PushRandom(t, "library/drill-direct", "v1", 2, 64<<10)
	const (
		busybox = "docker.io/library/drill-busybox:1"
		multiV1 = "docker.io/library/drill-multi:v1"
		direct  = "docker.io/library/drill-direct:v1"
	)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {reg.URL()}},
	})
	ctd := harness.StartContainerd(t)
	viaLifeboat := lb.MirrorHostsDir(t, "docker.io")
	aroundLifeboat := harness.WriteHostsDir(t, hosts.Config{Registry: "docker.io", Mirror: reg.URL()})
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", viaLifeboat, busybox)
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", viaLifeboat, multiV1)
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", aroundLifeboat, direct)

	fromContainerd := []string{"--containerd-address", ctd.Address(), "--namespace", ctd.Namespace()}

	out, code := runDrill(t, lb, fromContainerd...)
	t.Logf("lifeboat drill:\n%s", out)
	if code != 1 {
		t.Fatalf("drill with an image lifeboat lacks exited %d, want 1:\n%s", code, out)
	}
	rows := drillRows(out)
	for _, ref := range []string{busybox, multiV1} {
		if !strings.HasPrefix(rows[ref], "yes") {
			t.Errorf("%s, pulled through lifeboat, is not ready: %q\n%s", ref, rows[ref], out)
		}
	}
	if r := rows[direct]; !strings.HasPrefix(r, "no") || !strings.Contains(r, "tag "+direct) {
		t.Errorf("%s, pulled around lifeboat, is not reported missing its tag: %q\n%s", direct, r, out)
	}
	if !strings.Contains(out, "2 of 3 images would pull during an outage") {
		t.Errorf("no \"2 of 3\" summary:\n%s", out)
	}
	if !strings.Contains(out, "1 of 3 images would not pull during an outage") {
		t.Errorf("the error does not say how many images would not pull:\n%s", out)
	}

	stdout, code := runDrillStdout(t, lb, append(fromContainerd, "--json")...)
	var rep admin.DrillReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != 1 {
		t.Fatalf("drill --json: exit %d, %v:\n%s", code, err, stdout)
	}
	if rep.Total != 3 || rep.Ready != 2 || len(rep.Results) != 3 {
		t.Fatalf("drill --json: %+v", rep)
	}
	for _, r := range rep.Results {
		if r.Ready != (r.Ref != direct) {
			t.Errorf("drill --json: %s ready=%v", r.Ref, r.Ready)
		}
		if r.Ref == direct && (len(r.Missing) != 1 || r.Missing[0] != "tag "+direct || !r.Partial) {
			t.Errorf("drill --json: %s missing %q", r.Ref, r.Missing)
		}
	}

	// Only this node's platform of the index was pulled: not ready for the other one, for what
	// its image lacks (containerd may have fetched its manifest and config, not its layers).
	other := "linux/arm64"
	if runtime.GOARCH == "arm64" {
		other = "linux/amd64"
	}
	list := filepath.Join(t.TempDir(), "images.txt")
	os.WriteFile(list, []byte("# the multi-platform image, for the platform this node is not\ndocker.io/library/drill-multi:v1\n"), 0o644)
	stdout, code = runDrillStdout(t, lb, "--images", list, "--platform", other, "--json")
	rep = admin.DrillReport{}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != 1 || rep.Total != 1 || rep.Ready != 0 || len(rep.Results[0].Missing) == 0 {
		t.Fatalf("drill --platform %s of an image pulled for %s: exit %d, %v:\n%s", other, runtime.GOARCH, code, err, stdout)
	}
	cfg, err := multi.Images[other].ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	otherImage := append(harness.LayerDigests(t, multi.Images[other]), multi.Manifests[other], cfg.String())
	for _, m := range rep.Results[0].Missing {
		if !slices.ContainsFunc(otherImage, func(d string) bool { return strings.Contains(m, d) }) {
			t.Errorf("drill --platform %s: %q is missing, which is not part of the %s image", other, m, other)
		}
	}

	out, code = runDrill(t, lb, append(fromContainerd, "--fix")...)
	if code != 0 || !strings.Contains(out, "3 of 3 images would pull during an outage") {
		t.Fatalf("drill --fix: exit %d, want 0 and 3 of 3:\n%s", code, out)
	}

	// The registry goes away: the drill does not need it, and its verdict holds.
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatalf("stopping the registry: %v", err)
	}
	out, code = runDrill(t, lb, fromContainerd...)
	if code != 0 || !strings.Contains(out, "3 of 3 images would pull during an outage") {
		t.Fatalf("drill with the registry down: exit %d, want 0 and 3 of 3:\n%s", code, out)
	}
	ctd.MustCtr(t, "images", "rm", direct)
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", viaLifeboat, direct)
}

// runDrill runs `lifeboat drill ARGS` against lb and returns its combined output and exit code.
func runDrill(t *testing.T, lb *harness.Lifeboat, args ...string) (string, int) {
	t.Helper()
	cmd := drillCommand(t, lb, args...)
	out, err := cmd.CombinedOutput()
	return string(out), exitCode(t, err, out)
}

// runDrillStdout is runDrill with the standard output only.
func runDrillStdout(t *testing.T, lb *harness.Lifeboat, args ...string) (string, int) {
	t.Helper()
	cmd := drillCommand(t, lb, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	return string(out), exitCode(t, err, stderr.Bytes())
}

func drillCommand(t *testing.T, lb *harness.Lifeboat, args ...string) *exec.Cmd {
	t.Helper()
	return exec.CommandContext(t.Context(), harness.BuildLifeboat(t), append([]string{"drill", "--admin-socket", lb.AdminSocket}, args...)...)
}

func exitCode(t *testing.T, err error, out []byte) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("lifeboat drill: %v\n%s", err, out)
	}
	return 0
}

// drillRows maps each image of a drill table to the rest of its row.
func drillRows(out string) map[string]string {
	rows := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if ref, rest, ok := strings.Cut(line, " "); ok && strings.HasPrefix(ref, "docker.io/") {
			rows[ref] = strings.TrimSpace(rest)
		}
	}
	return rows
}
