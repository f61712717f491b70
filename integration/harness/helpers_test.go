package harness

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestUnescapeMountPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{name: "plain", in: "/tmp/lbctd1/root", want: "/tmp/lbctd1/root"},
		{name: "space", in: `/tmp/a\040b`, want: "/tmp/a b"},
		{name: "backslash", in: `/tmp/a\134b`, want: `/tmp/a\b`},
		{name: "trailing backslash", in: `/tmp/a\`, want: `/tmp/a\`},
		{name: "not octal", in: `/tmp/a\9zz`, want: `/tmp/a\9zz`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := unescapeMountPath(tt.in); got != tt.want {
				t.Errorf("unescapeMountPath(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestStatFields(t *testing.T) {
	t.Parallel()
	stat := "4242 (containerd-shim) (x) Z 1 4242 4242 0 -1"
	if !isZombie(stat) {
		t.Errorf("isZombie(%q) = false, want true", stat)
	}
	f := statFields(stat)
	if len(f) < 2 || f[1] != "1" {
		t.Errorf("statFields(%q) = %q, want ppid 1 second", stat, f)
	}
	if isZombie("1 (sleep) S 0 1 1") {
		t.Error("a sleeping process is reported as a zombie")
	}
}

func TestShimSocket(t *testing.T) {
	t.Parallel()
	a := shimSocket("/tmp/lbctd1/c.sock", "ns", "id", false)
	b := shimSocket("/tmp/lbctd1/c.sock", "ns", "id", true)
	c := shimSocket("/tmp/lbctd2/c.sock", "ns", "id", false)
	if a == b || a == c || !strings.HasPrefix(a, shimSocketDir+"/") || len(a) != len(shimSocketDir)+1+64 {
		t.Errorf("shim sockets %q, %q, %q: want distinct %s/<sha256 hex>", a, b, c, shimSocketDir)
	}
}

func TestHostsTOML(t *testing.T) {
	t.Parallel()
	got := HostsTOML("127.0.0.1:5000",
		HostEntry{URL: "http://127.0.0.1:5001"},
		HostEntry{URL: "http://127.0.0.1:5002", Capabilities: []string{"pull"}, DialTimeout: time.Second},
	)
	want := `server = "http://127.0.0.1:5000"

[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]

[host."http://127.0.0.1:5002"]
  capabilities = ["pull"]
  dial_timeout = "1s"
`
	if got != want {
		t.Errorf("HostsTOML:\n%s\nwant:\n%s", got, want)
	}
}

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
