package harness

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// HostBusybox is the static busybox binary PushBusybox copies into its image (Debian's
// busybox-static package).
const HostBusybox = "/bin/busybox"

// busyboxApplets are linked to /bin/busybox in the busybox image.
var busyboxApplets = []string{
	"sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "id", "wc", "head", "tail",
	"grep", "sha256sum", "mkdir", "touch", "rm", "ps", "test", "uname", "hostname", "date",
}

// imageTime is the creation and modification time in generated images, so that the same input
// gives the same digest.
var imageTime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// HostPlatform returns linux/GOARCH, the platform of the images this host can run.
func HostPlatform() v1.Platform {
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(t testing.TB, s string) v1.Platform {
	t.Helper()
	p, err := v1.ParsePlatform(s)
	if err != nil {
		t.Fatalf("harness: platform %q: %v", s, err)
	}
	return *p
}

// Digest returns the digest ("sha256:...") of an image or index.
func Digest(t testing.TB, m interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	h, err := m.Digest()
	if err != nil {
		t.Fatalf("harness: digest: %v", err)
	}
	return h.String()
}

// LayerDigests returns the digests of an image's (compressed) layers, bottom first.
func LayerDigests(t testing.TB, img v1.Image) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatalf("harness: layers: %v", err)
	}
	digests := make([]string, 0, len(layers))
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			t.Fatalf("harness: layer digest: %v", err)
		}
		digests = append(digests, h.String())
	}
	return digests
}

// newImage returns an OCI image of platform p made of layers, with cfg as its run config.
func newImage(p v1.Platform, cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		return nil, fmt.Errorf("appending layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant, cf.OSVersion = p.OS, p.Architecture, p.Variant, p.OSVersion
	cf.Created = v1.Time{Time: imageTime}
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting config: %w", err)
	}
	return img, nil
}

// RandomImage returns an OCI image for platform p with the given number of gzipped layers,
// each one tar holding layerSize random bytes. Every call gives a different image.
func RandomImage(t testing.TB, p v1.Platform, layers int, layerSize int64) v1.Image {
	t.Helper()
	ls := make([]v1.Layer, 0, layers)
	for range layers {
		l, err := random.Layer(layerSize, types.OCILayer)
		if err != nil {
			t.Fatalf("harness: random layer: %v", err)
		}
		ls = append(ls, l)
	}
	img, err := newImage(p, v1.Config{}, ls...)
	if err != nil {
		t.Fatalf("harness: random image: %v", err)
	}
	return img
}

// BusyboxImage returns a runnable OCI image for HostPlatform whose single layer holds the
// host's static /bin/busybox and links to it for common applets (/bin/sh, /bin/echo, /bin/cat,
// ...). Its default command is /bin/sh. It fails the test if /bin/busybox is missing or not
// static.
func BusyboxImage(t testing.TB) v1.Image {
	t.Helper()
	bin, err := readStaticBinary(HostBusybox)
	if err != nil {
		t.Fatalf("harness: %v: install Debian's busybox-static (`apt-get install -y busybox-static`)", err)
	}
	layerTar, err := busyboxLayerTar(bin)
	if err != nil {
		t.Fatalf("harness: busybox layer: %v", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatalf("harness: busybox layer: %v", err)
	}
	img, err := newImage(HostPlatform(), v1.Config{
		Cmd:        []string{"/bin/sh"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		WorkingDir: "/",
	}, layer)
	if err != nil {
		t.Fatalf("harness: busybox image: %v", err)
	}
	return img
}

// readStaticBinary reads an ELF executable, refusing one that needs a dynamic loader.
func readStaticBinary(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked, it cannot run in an image without libc", path)
		}
	}
	return b, nil
}

// busyboxLayerTar returns an uncompressed layer tar with the directories of a minimal root
// file system, /bin/busybox and the applet links.
func busyboxLayerTar(busybox []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "dev/", "etc/", "proc/", "root/", "sys/", "tmp/", "var/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: imageTime}); err != nil {
			return nil, err
		}
	}
	files := []struct {
		name string
		data string
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"},
		{"etc/group", "root:x:0:\n"},
	}
	for _, f := range files {
		if err := writeTarFile(tw, f.name, 0o644, []byte(f.data)); err != nil {
			return nil, err
		}
	}
	if err := writeTarFile(tw, "bin/busybox", 0o755, busybox); err != nil {
		return nil, err
	}
	for _, applet := range busyboxApplets {
		hdr := &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777, ModTime: imageTime}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeTarFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: imageTime}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// NewIndex returns an OCI image index holding the images, each described with its config's
// platform.
func NewIndex(t testing.TB, images ...v1.Image) v1.ImageIndex {
	t.Helper()
	adds := make([]mutate.IndexAddendum, 0, len(images))
	for _, img := range images {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatalf("harness: index: %v", err)
		}
		adds = append(adds, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: cf.Platform()},
		})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}
