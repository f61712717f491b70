package integration

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// imageEpoch is SOURCE_DATE_EPOCH for the test's image builds.
const imageEpoch = 1700000000

// TestImage builds the DaemonSet's container image the way `make image` does (a static build
// of ./cmd/lifeboat, then hack/image), twice, and checks that both archives are the same bytes.
// It checks the image's index, config and layer, imports the archive with the real
// `ctr images import`, runs `lifeboat version` in it, runs its default command (`lifeboat
// serve`) with the DaemonSet's mounts and a read-only root until SIGTERM, and pushes the
// extracted layout with crane as deploy/kubernetes/README.md says, to the same digest.
func TestImage(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	root := harness.ModuleRoot(t)
	dir := t.TempDir()
	version := "v0.0.0-imagetest." + strings.ToLower(rand.Text()[:10])
	revision := fmt.Sprintf("%x", sha256.Sum256([]byte(version)))[:40]
	wantRef := "ghcr.io/lifeboat-dev/lifeboat:" + version

	// As the Makefile's image target: keep the two in step.
	bin := filepath.Join(dir, "lifeboat-static")
	goCommand(t, root, []string{"CGO_ENABLED=0", "GOOS=linux"},
		"build", "-trimpath", "-ldflags", "-X main.version="+version, "-o", bin, "./cmd/lifeboat")
	imageTool := filepath.Join(dir, "image")
	goCommand(t, root, []string{"GOOS=", "GOARCH="}, "build", "-o", imageTool, "./hack/image")
	archive := filepath.Join(dir, "lifeboat-image.tar")
	again := filepath.Join(dir, "again.tar")
	for _, out := range []string{archive, again} {
		cmd := exec.Command(imageTool, "-binary", bin, "-version", version, "-revision", revision, "-out", out)
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.Itoa(imageEpoch))
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("hack/image: %v\n%s", err, b)
		}
	}
	first, second := fileSHA256(t, archive), fileSHA256(t, again)
	if first != second {
		t.Errorf("two builds of one binary differ: archive sha256 %s and %s", first, second)
	}

	// The fallback TLS roots (cmd/lifeboat/roots.go): the image has no CA bundle.
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(info.Deps, func(m *debug.Module) bool { return m.Path == "golang.org/x/crypto/x509roots/fallback" }) {
		t.Error("the binary does not embed golang.org/x/crypto/x509roots/fallback: in the image, lifeboat could verify no registry's certificate")
	}

	layoutDir := filepath.Join(dir, "layout")
	untarInto(t, archive, layoutDir)
	digest := checkImageLayout(t, layoutDir, bin, version, revision, wantRef)

	ctd := harness.StartContainerd(t)
	ctd.MustCtr(t, "images", "import", archive)
	if got := ctd.ImageDigest(t, wantRef); got != digest.String() {
		t.Fatalf("ctr images import: %s has digest %s, the archive's manifest is %s", wantRef, got, digest)
	}

	token := strings.ToLower(rand.Text()[:12])
	// "lifeboat", not its path: found through the image's PATH.
	out := ctd.MustCtr(t, "run", "--rm", wantRef, "image-version-"+token, "lifeboat", "version")
	if got, want := strings.TrimSpace(out), "lifeboat "+version; got != want {
		t.Errorf("`lifeboat version` in the image printed %q, want %q", got, want)
	}

	runImageDefaultCommand(t, ctd, bin, wantRef, version, "image-serve-"+token)

	// deploy/kubernetes/README.md: extract the archive and crane push the directory.
	reg := harness.StartRegistry(t)
	pushRef := reg.Ref("lifeboat", version)
	cmd := exec.Command(harness.Tool(t, harness.ToolCrane), "push", "--insecure", layoutDir, pushRef)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pushed, err := cmd.Output()
	if err != nil {
		t.Fatalf("crane push %s %s: %v\n%s", layoutDir, pushRef, err, stderr.String())
	}
	if got, want := strings.TrimSpace(string(pushed)), reg.Host()+"/lifeboat@"+digest.String(); got != want {
		t.Errorf("crane push printed %q, want %q (the digest ctr imported)", got, want)
	}
}

// checkImageLayout checks the OCI layout hack/image wrote and returns its manifest digest.
func checkImageLayout(t *testing.T, dir, bin, version, revision, wantRef string) v1.Hash {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("reading the archive as an OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if got := desc.Annotations["io.containerd.image.name"]; got != wantRef {
		t.Errorf("index.json names the image %q (io.containerd.image.name), want the default %q", got, wantRef)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != version {
		t.Errorf("index.json org.opencontainers.image.ref.name %q, want the tag %q", got, version)
	}
	host := harness.HostPlatform()
	if desc.Platform == nil || !desc.Platform.Equals(host) {
		t.Errorf("index.json platform %v, want %v", desc.Platform, host)
	}

	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if mt, err := img.MediaType(); err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %q (%v), want %q", mt, err, types.OCIManifestSchema1)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != host.OS || cf.Architecture != host.Architecture {
		t.Errorf("config platform %s/%s, want %s", cf.OS, cf.Architecture, host)
	}
	if want := time.Unix(imageEpoch, 0); !cf.Created.Equal(want) {
		t.Errorf("config created %s, want SOURCE_DATE_EPOCH %s", cf.Created.UTC(), want.UTC())
	}
	if got, want := cf.Config.Entrypoint, []string{"/usr/local/bin/lifeboat"}; !slices.Equal(got, want) {
		t.Errorf("Entrypoint %q, want %q", got, want)
	}
	if got, want := cf.Config.Cmd, []string{"serve"}; !slices.Equal(got, want) {
		t.Errorf("Cmd %q, want %q", got, want)
	}
	if !slices.ContainsFunc(cf.Config.Env, func(e string) bool {
		return strings.HasPrefix(e, "PATH=") && slices.Contains(filepath.SplitList(e[len("PATH="):]), "/usr/local/bin")
	}) {
		t.Errorf("Env %q has no PATH with /usr/local/bin", cf.Config.Env)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.version":  version,
		"org.opencontainers.image.revision": revision,
		"org.opencontainers.image.source":   "https://github.com/lifeboat-dev/lifeboat",
		"org.opencontainers.image.title":    "lifeboat",
	} {
		if got := cf.Config.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, err := layers[0].MediaType(); err != nil || mt != types.OCILayer {
		t.Errorf("layer media type %q (%v), want %q", mt, err, types.OCILayer)
	}
	checkImageLayer(t, layers[0], bin)

	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if digest != desc.Digest {
		t.Fatalf("manifest digest %s, index.json says %s", digest, desc.Digest)
	}
	return digest
}

// checkImageLayer checks that the layer holds the binary, executable, and the directories the
// daemon uses with their modes.
func checkImageLayer(t *testing.T, layer v1.Layer, bin string) {
	t.Helper()
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	modes := map[string]os.FileMode{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading the layer: %v", err)
		}
		modes[hdr.Name] = hdr.FileInfo().Mode()
		if hdr.Name == "usr/local/bin/lifeboat" {
			got, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("usr/local/bin/lifeboat in the layer (%d bytes) is not the binary built (%d bytes)", len(got), len(want))
			}
		}
	}
	for name, want := range map[string]os.FileMode{
		"usr/local/bin/lifeboat": 0o755,
		"var/lib/lifeboat/":      os.ModeDir | 0o700,
		"run/lifeboat/":          os.ModeDir | 0o700,
		"etc/lifeboat/":          os.ModeDir | 0o755,
		"tmp/":                   os.ModeDir | os.ModeSticky | 0o777,
	} {
		got, ok := modes[name]
		switch {
		case !ok:
			t.Errorf("the layer has no %s", name)
		case got != want:
			t.Errorf("%s in the layer has mode %v, want %v", name, got, want)
		}
	}
}

// runImageDefaultCommand runs the image's own entrypoint and command, `lifeboat serve` with
// the default configuration file, root and sockets, as the DaemonSet does: host network, a
// read-only root file system, host directories at /var/lib/lifeboat and /run/lifeboat and the
// configuration at /etc/lifeboat. It asks the daemon for its status through the admin socket,
// then stops it with SIGTERM and expects exit status 0.
func runImageDefaultCommand(t *testing.T, ctd *harness.Containerd, bin, ref, version, id string) {
	t.Helper()
	// Short: the admin socket's path must fit in 108 bytes, which t.TempDir() may not.
	host, err := os.MkdirTemp("", "lbimg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(host) })
	data, run, etc := filepath.Join(host, "data"), filepath.Join(host, "run"), filepath.Join(host, "etc")
	for _, d := range []string{data, run, etc} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// Any free port for the mirror, no metrics: the host network is shared with other tests.
	config := "[mirror]\naddress = \"127.0.0.1:0\"\n\n[metrics]\naddress = \"\"\n"
	if err := os.WriteFile(filepath.Join(etc, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	var runOut string
	var runErr error
	go func() {
		defer close(done)
		runOut, runErr = ctd.Ctr(t, "run", "--rm", "--net-host", "--read-only",
			"--mount", "type=bind,src="+data+",dst=/var/lib/lifeboat,options=rbind:rw",
			"--mount", "type=bind,src="+run+",dst=/run/lifeboat,options=rbind:rw",
			"--mount", "type=bind,src="+etc+",dst=/etc/lifeboat,options=rbind:ro",
			ref, id)
	}()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_, _ = ctd.Ctr(t, "tasks", "kill", "--signal", "SIGKILL", id)
			<-done
		}
		if t.Failed() {
			t.Logf("ctr run %s (lifeboat serve in the image): %v\n%s", id, runErr, runOut)
		}
	})

	var st admin.Status
	harness.WaitFor(t, "lifeboat serve in the image to answer on its admin socket", time.Minute, done, func() error {
		out, err := exec.Command(bin, "status", "--json", "--admin-socket", filepath.Join(run, "admin.sock")).CombinedOutput()
		if err != nil {
			return fmt.Errorf("lifeboat status: %v: %s", err, out)
		}
		return json.Unmarshal(out, &st)
	})
	if st.Version != version || st.Root != "/var/lib/lifeboat" {
		t.Errorf("lifeboat serve in the image: status says version %q and root %q, want %q and /var/lib/lifeboat", st.Version, st.Root, version)
	}
	if _, err := os.Stat(filepath.Join(data, "index.db")); err != nil {
		t.Errorf("lifeboat serve in the image did not open its cache in the mounted /var/lib/lifeboat: %v", err)
	}

	ctd.MustCtr(t, "tasks", "kill", "--signal", "SIGTERM", id)
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		t.Fatal("lifeboat serve in the image did not exit within 40 s of SIGTERM")
	}
	if runErr != nil {
		t.Errorf("lifeboat serve in the image did not exit cleanly on SIGTERM: %v", runErr)
	}
}

// goCommand runs the go command in dir with env added to its environment, failing the test
// with its output.
func goCommand(t *testing.T, dir string, env []string, args ...string) {
	t.Helper()
	goBin := "go"
	if p, err := exec.LookPath("go"); err == nil {
		goBin = p
	} else if goroot := os.Getenv("GOROOT"); goroot != "" {
		// sudo often resets PATH to one without the Go toolchain.
		goBin = filepath.Join(goroot, "bin", "go")
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// untarInto extracts a tar of regular files and directories into dir.
func untarInto(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("reading %s: %v", archive, err)
		}
		if !filepath.IsLocal(hdr.Name) {
			t.Fatalf("%s: entry %q leaves the directory", archive, hdr.Name)
		}
		path := filepath.Join(dir, hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o755)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
					err = os.WriteFile(path, b, 0o644)
				}
			}
		default:
			t.Fatalf("%s: entry %q is neither a file nor a directory (type %c)", archive, hdr.Name, hdr.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// fileSHA256 returns the hex SHA-256 of a file.
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
