package oci

import (
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
)

func TestNormalizeHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string // want "" for refused
	}{
		{"docker.io", "docker.io"},
		{"ghcr.io", "ghcr.io"},
		{"GHCR.IO", "ghcr.io"},
		{"index.docker.io", "docker.io"},
		{"Index.Docker.IO", "docker.io"},
		{"index.docker.io:443", "index.docker.io:443"},
		{"registry-1.docker.io", "registry-1.docker.io"},
		{"localhost", "localhost"},
		{"localhost:5000", "localhost:5000"},
		{"registry.local:65535", "registry.local:65535"},
		{"127.0.0.1:5000", "127.0.0.1:5000"},
		{"single", "single"},
		{"a-b.c-d", "a-b.c-d"},
		{"[::1]:5000", "[::1]:5000"},
		{"[::1]", "[::1]"},
		{"[0:0:0:0:0:0:0:1]:5000", "[::1]:5000"},
		{"[2001:DB8::1]", "[2001:db8::1]"},
		{"", ""},
		{":5000", ""},
		{"host:", ""},
		{"host:0", ""},
		{"host:65536", ""},
		{"host:99999", ""},
		{"host:05000", ""},
		{"host:+5000", ""},
		{"host:50a", ""},
		{"-host", ""},
		{"host-", ""},
		{"bad_host.io", ""},
		{"a..b", ""},
		{".a", ""},
		{"a.", ""},
		{"not a host", ""},
		{"https://docker.io", ""},
		{"docker.io/library", ""},
		{"user@host", ""},
		{"[::1", ""},
		{"[::1]x", ""},
		{"[127.0.0.1]", ""},
		{"[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"},
		{"[fe80::1%eth0]", ""},
		{"::1", ""},
		{strings.Repeat("a", 256), ""},
		{strings.Repeat("a", 255), strings.Repeat("a", 255)},
	} {
		got, ok := NormalizeHost(tc.in)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
		if ValidHost(tc.in) != ok {
			t.Errorf("ValidHost(%q) = %v, NormalizeHost says %v", tc.in, !ok, ok)
		}
		// What is normalized stays so.
		if ok {
			if again, _ := NormalizeHost(got); again != got {
				t.Errorf("NormalizeHost(%q) = %q, then %q", tc.in, got, again)
			}
		}
	}
}

func TestLooksLikeHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"ghcr.io", true},
		{"localhost", true},
		{"host:5000", true},
		{"[::1]:5000", true},
		{"library", false},
		{"Localhost", false},
		{"localhost2", false},
	} {
		if got := LooksLikeHost(tc.s); got != tc.want {
			t.Errorf("LooksLikeHost(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

// IsLoopback is containerd's docker.IsLocalhost.
func TestIsLoopback(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		registry string
		want     bool
	}{
		{"localhost", true},
		{"localhost:5000", true},
		{"127.0.0.1", true},
		{"127.0.0.1:5000", true},
		{"127.1.2.3:80", true},
		{"[::1]:5000", true},
		{"[::1]", false}, // net.SplitHostPort keeps the brackets without a port, as in containerd
		{"localhost.corp", false},
		{"docker.io", false},
		{"10.0.0.1:5000", false},
		{"[2001:db8::1]:5000", false},
	} {
		if got := IsLoopback(tc.registry); got != tc.want {
			t.Errorf("IsLoopback(%q) = %v, want %v", tc.registry, got, tc.want)
		}
		if containerd := docker.IsLocalhost(tc.registry); containerd != tc.want {
			t.Errorf("%q: containerd's IsLocalhost says %v", tc.registry, containerd)
		}
	}
}

func TestDefaultEndpoints(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		registry string
		want     []string
	}{
		{"docker.io", []string{"https://registry-1.docker.io"}},
		{"ghcr.io", []string{"https://ghcr.io"}},
		{"registry.example:5000", []string{"https://registry.example:5000"}},
		{"localhost.corp", []string{"https://localhost.corp"}},
		{"localhost", []string{"https://localhost"}},
		{"localhost:443", []string{"https://localhost:443"}},
		{"127.0.0.1:80", []string{"http://127.0.0.1:80"}},
		{"localhost:5000", []string{"https://localhost:5000", "http://localhost:5000"}},
		{"127.0.0.1:5000", []string{"https://127.0.0.1:5000", "http://127.0.0.1:5000"}},
		{"[::1]:5000", []string{"https://[::1]:5000", "http://[::1]:5000"}},
	} {
		if got := DefaultEndpoints(tc.registry); !slices.Equal(got, tc.want) {
			t.Errorf("DefaultEndpoints(%q) = %q, want %q", tc.registry, got, tc.want)
		}
	}
}
