package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"
)

// fakeELF returns a 64-bit ELF header, with a PT_INTERP program header if dynamic: enough for
// binaryPlatform, and for an image (which does not run it).
func fakeELF(t *testing.T, machine elf.Machine, data elf.Data, osabi elf.OSABI, dynamic bool) []byte {
	t.Helper()
	var order binary.ByteOrder = binary.LittleEndian
	if data == elf.ELFDATA2MSB {
		order = binary.BigEndian
	}
	hdr := elf.Header64{
		Ident:     [elf.EI_NIDENT]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(data), byte(elf.EV_CURRENT), byte(osabi)},
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(machine),
		Version:   uint32(elf.EV_CURRENT),
		Ehsize:    64,
		Phentsize: 56,
	}
	if dynamic {
		hdr.Phoff, hdr.Phnum = 64, 1
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, order, hdr); err != nil {
		t.Fatal(err)
	}
	if dynamic {
		if err := binary.Write(&buf, order, elf.Prog64{Type: uint32(elf.PT_INTERP)}); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestBinaryPlatform(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		bin     []byte
		want    string // platform, or "" for an error
		wantErr string
	}{
		{name: "amd64", bin: fakeELF(t, elf.EM_X86_64, elf.ELFDATA2LSB, elf.ELFOSABI_NONE, false), want: "linux/amd64"},
		{name: "arm64", bin: fakeELF(t, elf.EM_AARCH64, elf.ELFDATA2LSB, elf.ELFOSABI_NONE, false), want: "linux/arm64"},
		{name: "ppc64le", bin: fakeELF(t, elf.EM_PPC64, elf.ELFDATA2LSB, elf.ELFOSABI_NONE, false), want: "linux/ppc64le"},
		{name: "s390x", bin: fakeELF(t, elf.EM_S390, elf.ELFDATA2MSB, elf.ELFOSABI_LINUX, false), want: "linux/s390x"},
		{name: "dynamic", bin: fakeELF(t, elf.EM_X86_64, elf.ELFDATA2LSB, elf.ELFOSABI_NONE, true), wantErr: "CGO_ENABLED=0"},
		{name: "freebsd", bin: fakeELF(t, elf.EM_X86_64, elf.ELFDATA2LSB, elf.ELFOSABI_FREEBSD, false), wantErr: "GOOS=linux"},
		{name: "unknown machine", bin: fakeELF(t, elf.EM_SPARCV9, elf.ELFDATA2MSB, elf.ELFOSABI_NONE, false), wantErr: "EM_SPARCV9"},
		{name: "not ELF", bin: []byte("#!/bin/sh\necho lifeboat\n"), wantErr: "not an ELF executable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := binaryPlatform(tt.bin)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("binaryPlatform: %v, %v; want an error containing %q", p, err, tt.wantErr)
				}
				return
			}
			if err != nil || p.String() != tt.want {
				t.Fatalf("binaryPlatform: %v, %v; want %s", p, err, tt.want)
			}
		})
	}
}

func TestParseOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		epoch   string
		want    options // name and created only
		wantErr string
	}{
		{
			name: "defaults",
			args: []string{"-binary", "b", "-version", "v1.2.3"},
			want: options{name: defaultRepository + ":v1.2.3", created: time.Unix(0, 0)},
		},
		{
			name:  "name and epoch",
			args:  []string{"-binary", "b", "-version", "v1", "-name", "registry.example:5000/ops/lifeboat:v1-rc1"},
			epoch: "1700000000",
			want:  options{name: "registry.example:5000/ops/lifeboat:v1-rc1", created: time.Unix(1700000000, 0)},
		},
		{name: "no version", args: []string{"-binary", "b"}, wantErr: "-version are required"},
		{name: "version not a tag", args: []string{"-binary", "b", "-version", "1.0+build"}, wantErr: "pass -name"},
		{name: "name without registry", args: []string{"-binary", "b", "-version", "v1", "-name", "lifeboat:v1"}, wantErr: "give registry, repository and tag"},
		{name: "name without tag", args: []string{"-binary", "b", "-version", "v1", "-name", "ghcr.io/x/lifeboat"}, wantErr: "give registry, repository and tag"},
		{name: "bad epoch", args: []string{"-binary", "b", "-version", "v1"}, epoch: "yesterday", wantErr: "SOURCE_DATE_EPOCH"},
		{name: "stray argument", args: []string{"-binary", "b", "-version", "v1", "out.tar"}, wantErr: "every input is a flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, err := parseOptions(tt.args, tt.epoch)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseOptions: %v; want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.name != tt.want.name || !o.created.Equal(tt.want.created) {
				t.Errorf("parseOptions: name %q created %s; want %q %s", o.name, o.created, tt.want.name, tt.want.created)
			}
		})
	}
}

// TestArchiveIsReproducible: the same binary and options give the same archive, byte for byte,
// and another time gives another one (so the first check can fail).
func TestArchiveIsReproducible(t *testing.T) {
	t.Parallel()
	bin := append(fakeELF(t, elf.EM_X86_64, elf.ELFDATA2LSB, elf.ELFOSABI_NONE, false), "lifeboat"...)
	archive := func(epoch string) []byte {
		o, err := parseOptions([]string{"-binary", "lifeboat", "-version", "v1", "-revision", "abc"}, epoch)
		if err != nil {
			t.Fatal(err)
		}
		img, p, err := buildImage(o, bin)
		if err != nil {
			t.Fatal(err)
		}
		if p.String() != "linux/amd64" {
			t.Fatalf("platform %v", p)
		}
		var buf bytes.Buffer
		if err := writeArchive(&buf, img, o.name, p); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	a, b, c := archive("1700000000"), archive("1700000000"), archive("1700000001")
	if !bytes.Equal(a, b) {
		t.Error("two archives of the same binary differ")
	}
	if bytes.Equal(a, c) {
		t.Error("archives with different SOURCE_DATE_EPOCH are the same: the time is not in them")
	}
}

// TestDaemonSetImage: the DaemonSet runs the image `make image` names by default, and the
// binary where the image has it.
func TestDaemonSetImage(t *testing.T) {
	t.Parallel()
	const path = "../../deploy/kubernetes/daemonset.yaml"
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var images, commands []string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "image: "); ok {
			images = append(images, v)
		}
		if v, ok := strings.CutPrefix(line, "command: "); ok {
			commands = append(commands, v)
		}
	}
	// The init container (configure containerd) and the daemon run the same image.
	if len(images) == 0 {
		t.Errorf("%s: no image", path)
	}
	for _, image := range images {
		if !strings.HasPrefix(image, defaultRepository+":") && !strings.HasPrefix(image, defaultRepository+"@") {
			t.Errorf("%s: image %q, want one of repository %s (hack/image's default)", path, image, defaultRepository)
		}
	}
	if len(commands) != len(images) {
		t.Errorf("%s: %d commands for %d containers", path, len(commands), len(images))
	}
	for _, c := range commands {
		if !strings.HasPrefix(c, `["`+binaryPath+`"`) {
			t.Errorf("%s: command %s, want one that runs %s", path, c, binaryPath)
		}
	}
}
