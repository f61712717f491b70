package launch

import (
	"strings"
	"testing"
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
