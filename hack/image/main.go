// Command image builds lifeboat's container image, the one the Kubernetes DaemonSet runs, from
// a statically linked lifeboat binary, with go-containerregistry alone: no docker, no
// buildkit, no base image and no network. `make image` builds the binary and runs it.
//
// The image is one layer: /usr/local/bin/lifeboat and the directories the daemon uses
// (/etc/lifeboat, /var/lib/lifeboat, /run/lifeboat, /tmp). Its platform is read from the
// binary's ELF header, so it always says what the binary runs on. Every timestamp in it is
// SOURCE_DATE_EPOCH (0 if unset; `make image` passes the commit time), so the same binary
// gives the same image digest.
//
// It writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) as a tar archive:
// `ctr images import` reads it and names the image from the io.containerd.image.name
// annotation in index.json; extracted into a directory, `crane push DIR REF` pushes it with
// the same manifest digest.
//
// Usage:
//
//	image -binary FILE -version VERSION [-revision COMMIT] [-name REF] [-out FILE]
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// defaultRepository is where the image is named unless -name says otherwise; the DaemonSet
	// in deploy/kubernetes refers to it.
	defaultRepository = "ghcr.io/lifeboat-dev/lifeboat"
	// defaultSource is the org.opencontainers.image.source label.
	defaultSource = "https://github.com/lifeboat-dev/lifeboat"
	// binaryPath is where the binary goes in the image; the DaemonSet's command names it.
	binaryPath = "/usr/local/bin/lifeboat"

	// Annotations on the manifest's entry in index.json. containerd names an imported image
	// after the first (a full reference); the OCI image layout spec names a tag with the second.
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// layerDirs are the directories the layer holds besides the binary's, with their modes. The
// daemon creates its root and socket directories 0700 when they are missing; the image has them
// already, with that mode, as mount points for the DaemonSet's host directories and as they
// would be in a container run without mounts. /tmp is for anything that wants a temporary file.
var layerDirs = []struct {
	path string
	mode int64
}{
	{"etc/", 0o755},
	{"etc/lifeboat/", 0o755},
	{"run/", 0o755},
	{"run/lifeboat/", 0o700},
	{"tmp/", 0o1777},
	{"usr/", 0o755},
	{"usr/local/", 0o755},
	{"usr/local/bin/", 0o755},
	{"var/", 0o755},
	{"var/lib/", 0o755},
	{"var/lib/lifeboat/", 0o700},
}

// options are the command line, resolved.
type options struct {
	binary   string    // the static lifeboat binary
	version  string    // what `lifeboat version` prints; a label, and the default tag
	revision string    // the source commit, a label when known
	source   string    // the source repository URL, a label
	name     string    // the image reference: registry/repository:tag
	out      string    // the archive to write
	created  time.Time // every timestamp in the image
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // the flag package printed the usage
		}
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	opts, err := parseOptions(args, os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		return err
	}
	bin, err := os.ReadFile(opts.binary)
	if err != nil {
		return fmt.Errorf("reading the lifeboat binary: %w", err)
	}
	img, platform, err := buildImage(opts, bin)
	if err != nil {
		return err
	}
	if err := writeArchiveFile(opts.out, img, opts.name, platform); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s: %s (%s) %s\n", opts.out, opts.name, platform, digest)
	return nil
}

// parseOptions reads the flags, and the time from SOURCE_DATE_EPOCH (seconds since 1970,
// https://reproducible-builds.org/specs/source-date-epoch/).
func parseOptions(args []string, sourceDateEpoch string) (options, error) {
	var o options
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.StringVar(&o.binary, "binary", "", "the statically linked lifeboat binary (CGO_ENABLED=0 GOOS=linux go build ./cmd/lifeboat)")
	fs.StringVar(&o.version, "version", "", "the version the binary was built with (-ldflags \"-X main.version=...\")")
	fs.StringVar(&o.revision, "revision", "", "the source commit, for the org.opencontainers.image.revision label")
	fs.StringVar(&o.source, "source", defaultSource, "the source repository, for the org.opencontainers.image.source label")
	fs.StringVar(&o.name, "name", "", "the image reference, registry/repository:tag (default "+defaultRepository+":VERSION)")
	fs.StringVar(&o.out, "out", "bin/lifeboat-image.tar", "the OCI image layout archive to write")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q: every input is a flag", fs.Args())
	}
	if o.binary == "" || o.version == "" {
		return o, errors.New("-binary and -version are required (make image passes both)")
	}
	if o.name == "" {
		o.name = defaultRepository + ":" + o.version
		if _, err := name.NewTag(o.name, name.StrictValidation); err != nil {
			return o, fmt.Errorf("version %q cannot be an image tag (%v): pass -name", o.version, err)
		}
	}
	// Strict: containerd stores full names (docker.io/library/x:tag) and ggcr would otherwise
	// fill in index.docker.io or :latest, which containerd would not match.
	if _, err := name.NewTag(o.name, name.StrictValidation); err != nil {
		return o, fmt.Errorf("-name %q: %v; give registry, repository and tag, e.g. %s:v1.0.0", o.name, err, defaultRepository)
	}
	o.created = time.Unix(0, 0).UTC()
	if sourceDateEpoch != "" {
		sec, err := strconv.ParseInt(sourceDateEpoch, 10, 64)
		if err != nil || sec < 0 {
			return o, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds since 1970", sourceDateEpoch)
		}
		o.created = time.Unix(sec, 0).UTC()
	}
	return o, nil
}

// buildImage returns the image holding bin, and its platform.
func buildImage(o options, bin []byte) (v1.Image, v1.Platform, error) {
	platform, err := binaryPlatform(bin)
	if err != nil {
		return nil, v1.Platform{}, fmt.Errorf("%s: %w", o.binary, err)
	}
	layer, err := newLayer(bin, o.created)
	if err != nil {
		return nil, v1.Platform{}, fmt.Errorf("building the layer: %w", err)
	}

	labels := map[string]string{
		"org.opencontainers.image.title":   "lifeboat",
		"org.opencontainers.image.version": o.version,
		"org.opencontainers.image.source":  o.source,
	}
	if o.revision != "" {
		labels["org.opencontainers.image.revision"] = o.revision
	}
	if o.created.Unix() != 0 {
		labels["org.opencontainers.image.created"] = o.created.Format(time.RFC3339)
	}

	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: o.created},
			CreatedBy: "hack/image: " + binaryPath + " and the daemon's directories",
		},
	})
	if err != nil {
		return nil, v1.Platform{}, fmt.Errorf("adding the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, v1.Platform{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = platform.OS, platform.Architecture
	cf.Created = v1.Time{Time: o.created}
	cf.Config = v1.Config{
		Entrypoint: []string{binaryPath},
		Cmd:        []string{"serve"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		WorkingDir: "/",
		Labels:     labels,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, v1.Platform{}, fmt.Errorf("setting the config: %w", err)
	}
	// The same keys as manifest annotations, where the OCI spec defines them (the labels are
	// what docker and `crane config` show).
	return mutate.Annotations(img, labels).(v1.Image), platform, nil
}

// binaryPlatform returns the platform a Linux ELF executable runs on, and refuses a binary
// that needs a dynamic loader: the image has no libc, so it would fail to start with a
// puzzling "no such file or directory".
func binaryPlatform(bin []byte) (v1.Platform, error) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return v1.Platform{}, fmt.Errorf("not an ELF executable (the image is for Linux): %w", err)
	}
	defer f.Close()
	if f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		return v1.Platform{}, fmt.Errorf("built for %v, not Linux: build it with GOOS=linux", f.OSABI)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return v1.Platform{}, errors.New("dynamically linked; the image has no libc: build it with CGO_ENABLED=0")
		}
	}
	arch := ""
	switch f.Machine {
	case elf.EM_X86_64:
		arch = "amd64"
	case elf.EM_AARCH64:
		arch = "arm64"
	case elf.EM_386:
		arch = "386"
	case elf.EM_RISCV:
		arch = "riscv64"
	case elf.EM_S390:
		arch = "s390x"
	case elf.EM_PPC64:
		if f.Data == elf.ELFDATA2LSB {
			arch = "ppc64le"
		} else {
			arch = "ppc64"
		}
	default:
		// 32-bit arm is left out on purpose: its variant (v6, v7) is not in the ELF header.
		return v1.Platform{}, fmt.Errorf("ELF machine %v: hack/image knows amd64, arm64, 386, riscv64, s390x, ppc64 and ppc64le", f.Machine)
	}
	return v1.Platform{OS: "linux", Architecture: arch}, nil
}

// newLayer returns the gzipped layer holding the directories and the binary. The tar and the
// gzip stream depend only on bin and mtime.
func newLayer(bin []byte, mtime time.Time) (v1.Layer, error) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, d := range layerDirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d.path, Mode: d.mode, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: binaryPath[1:], Mode: 0o755, Size: int64(len(bin)), ModTime: mtime}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}

	// Compressed once here rather than by ggcr on each read of the layer (a digest, then the
	// archive). A zero gzip header has no name and no time.
	var gzBuf bytes.Buffer
	zw := gzip.NewWriter(&gzBuf)
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	gz := gzBuf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// writeArchiveFile writes the archive next to path and renames it into place, so that path is
// either the old archive or the whole new one.
func writeArchiveFile(path string, img v1.Image, ref string, platform v1.Platform) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename there is nothing left to remove
	if err := writeArchive(f, img, ref, platform); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Rename(f.Name(), path)
}

// writeArchive writes img as an OCI image layout in tar form: oci-layout, index.json naming
// the image, and the manifest, config and layer blobs. Its bytes depend only on the image, the
// name and the platform (every tar timestamp is the image's creation time).
func writeArchive(w io.Writer, img v1.Image, ref string, platform v1.Platform) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	mtime := cf.Created.Time

	manifestJSON, err := img.RawManifest()
	if err != nil {
		return err
	}
	manifestDigest, err := img.Digest()
	if err != nil {
		return err
	}
	// Written out rather than with mutate.AppendManifests, which also sets the descriptor's
	// artifactType to the config's media type: allowed, but not what an image's entry usually
	// says.
	indexJSON, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: types.OCIManifestSchema1,
			Size:      int64(len(manifestJSON)),
			Digest:    manifestDigest,
			Platform:  &platform,
			Annotations: map[string]string{
				annotationContainerdName: ref,
				annotationRefName:        tag.TagStr(),
			},
		}},
	})
	if err != nil {
		return err
	}
	layoutJSON, err := json.Marshal(struct {
		Version string `json:"imageLayoutVersion"`
	}{"1.0.0"})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	file := func(path string, data []byte) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	blob := func(h v1.Hash, data []byte) error {
		return file("blobs/"+h.Algorithm+"/"+h.Hex, data)
	}
	if err := file("oci-layout", layoutJSON); err != nil {
		return err
	}
	if err := file("index.json", indexJSON); err != nil {
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime}); err != nil {
			return err
		}
	}

	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		if err := blob(h, data); err != nil {
			return err
		}
	}
	configJSON, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	configDigest, err := img.ConfigName()
	if err != nil {
		return err
	}
	if err := blob(configDigest, configJSON); err != nil {
		return err
	}
	if err := blob(manifestDigest, manifestJSON); err != nil {
		return err
	}
	return tw.Close()
}
