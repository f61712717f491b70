package cluster

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func writeKey(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return path
}

func TestLoadSecret(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{0xab}, 32)
	b64 := base64.StdEncoding.EncodeToString(key)
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		wantErr error
		says    []string // what the error must tell the operator
	}{
		{name: "as openssl prints it", content: b64 + "\n", mode: 0o600},
		{name: "white space around", content: " \t\n" + b64 + "\r\n\n", mode: 0o400},
		{name: "readable by group", content: b64, mode: 0o640, wantErr: errdefs.ErrFailedPrecondition, says: []string{"chmod 600", "0640"}},
		{name: "readable by all", content: b64, mode: 0o644, wantErr: errdefs.ErrFailedPrecondition, says: []string{"chmod 600"}},
		{name: "writable by group", content: b64, mode: 0o620, wantErr: errdefs.ErrFailedPrecondition, says: []string{"chmod 600"}},
		{name: "too short", content: base64.StdEncoding.EncodeToString(key[:16]), mode: 0o600, wantErr: errdefs.ErrInvalidArgument, says: []string{"openssl rand -base64 32"}},
		{name: "too long", content: base64.StdEncoding.EncodeToString(append(key, 1)), mode: 0o600, wantErr: errdefs.ErrInvalidArgument},
		{name: "not base64", content: strings.Repeat("!", 44), mode: 0o600, wantErr: errdefs.ErrInvalidArgument},
		{name: "raw bytes", content: string(key), mode: 0o600, wantErr: errdefs.ErrInvalidArgument},
		{name: "two keys", content: b64 + "\n" + b64 + "\n", mode: 0o600, wantErr: errdefs.ErrInvalidArgument},
		{name: "empty", content: "", mode: 0o600, wantErr: errdefs.ErrInvalidArgument},
		{name: "huge", content: strings.Repeat("A", 1<<20), mode: 0o600, wantErr: errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeKey(t, tc.content, tc.mode)
			got, err := LoadSecret(path)
			if tc.wantErr == nil {
				if err != nil || !bytes.Equal(got, key) {
					t.Fatalf("LoadSecret = %x, %v; want the key", got, err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || got != nil {
				t.Fatalf("LoadSecret = %x, %v; want %v", got, err, tc.wantErr)
			}
			for _, s := range append(tc.says, path) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "nope.key")
		_, err := LoadSecret(path)
		if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "openssl rand -base64 32 > "+path) {
			t.Fatalf("err = %v; want not found, naming the path and how to make a key", err)
		}
	})
	t.Run("owned by another user", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() != 0 {
			t.Skip("giving a file to another user needs root")
		}
		path := writeKey(t, b64, 0o600)
		if err := os.Chown(path, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		_, err := LoadSecret(path)
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("err = %v; want failed precondition", err)
		}
		for _, s := range []string{path, "uid 4242", "chown 0 " + path} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
		// Given back to root (the user this test runs as), it is the key again.
		if err := os.Chown(path, 0, 0); err != nil {
			t.Fatal(err)
		}
		if got, err := LoadSecret(path); err != nil || !bytes.Equal(got, key) {
			t.Fatalf("LoadSecret = %x, %v; want the key", got, err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSecret(dir); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("err = %v; want invalid argument", err)
		}
	})
}

func TestDerivedKeys(t *testing.T) {
	t.Parallel()
	a, b := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	if len(gossipKey(a)) != 32 || len(derive(a, caPurpose)) != 32 {
		t.Fatal("derived keys must be 32 bytes (AES-256, an Ed25519 seed)")
	}
	for _, pair := range [][2][]byte{
		{gossipKey(a), derive(a, caPurpose)},
		{gossipKey(a), gossipKey(b)},
		{derive(a, caPurpose), derive(b, caPurpose)},
		{gossipKey(a), a},
	} {
		if bytes.Equal(pair[0], pair[1]) {
			t.Fatal("derived keys must differ by purpose and by secret, and from the secret")
		}
	}
	if !bytes.Equal(gossipKey(a), gossipKey(bytes.Clone(a))) {
		t.Fatal("derivation must be deterministic")
	}
}

func TestCheckNodeName(t *testing.T) {
	t.Parallel()
	for name, ok := range map[string]bool{
		"node-a":                   true,
		"ip-10-0-0-5.ec2.internal": true,
		"a,b=c":                    true,
		strings.Repeat("n", 128):   true,
		"":                         false,
		strings.Repeat("n", 129):   false,
		"a b":                      false,
		"a\nb":                     false,
		"é":                        false,
	} {
		if err := CheckNodeName(name); (err == nil) != ok {
			t.Errorf("CheckNodeName(%.20q) = %v", name, err)
		}
	}
}
