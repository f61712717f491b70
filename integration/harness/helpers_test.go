package harness

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestBusyboxLayerTar(t *testing.T) {
	t.Parallel()
	bin := []byte("\x7fELF not really")
	layer, err := busyboxLayerTar(bin)
	if err != nil {
		t.Fatal(err)
	}
	entries := make(map[string]*tar.Header)
	var busybox []byte
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[hdr.Name] = hdr
		if hdr.Name == "bin/busybox" {
			if busybox, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !bytes.Equal(busybox, bin) {
		t.Errorf("bin/busybox holds %q, want %q", busybox, bin)
	}
	if h := entries["bin/busybox"]; h == nil || h.Mode&0o111 == 0 {
		t.Errorf("bin/busybox missing or not executable: %+v", h)
	}
	for _, applet := range []string{"sh", "echo", "cat"} {
		h := entries["bin/"+applet]
		if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s is %+v, want a symlink to busybox", applet, h)
		}
	}
	again, err := busyboxLayerTar(bin)
	if err != nil || !bytes.Equal(again, layer) {
		t.Errorf("busyboxLayerTar is not deterministic (err %v)", err)
	}
}
