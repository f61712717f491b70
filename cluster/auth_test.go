package cluster

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	if len(gossipKey(a)) != 32 || len(tokenKey(a)) != 32 {
		t.Fatal("derived keys must be 32 bytes (AES-256, HMAC-SHA256)")
	}
	for _, pair := range [][2][]byte{
		{gossipKey(a), tokenKey(a)},
		{gossipKey(a), gossipKey(b)},
		{tokenKey(a), tokenKey(b)},
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

// signerAt is a signer whose clock reads at.
func signerAt(node string, secret []byte, at time.Time) *Signer {
	s := NewSigner(node, secret)
	s.now = func() time.Time { return at }
	return s
}

func signed(t *testing.T, s *Signer, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Sign(req)
	return req
}

// received is req as a server sees it: the request line's URI, the headers.
func received(req *http.Request) *http.Request {
	in := httptest.NewRequest(req.Method, req.URL.RequestURI(), nil)
	in.Header = req.Header.Clone()
	return in
}

func TestSignerRoundTrip(t *testing.T) {
	t.Parallel()
	secret := bytes.Repeat([]byte{7}, 32)
	now := time.Unix(1_800_000_000, 0)
	a := signerAt("node-a", secret, now)
	b := signerAt("node-b", secret, now)
	for _, url := range []string{
		"http://10.0.0.1:5102/v2/library/alpine/blobs/sha256:abc",
		"http://10.0.0.1:5102/v2/library/alpine/manifests/3.20?ns=docker.io",
		"http://10.0.0.1:5102/lifeboat/v1/lookup?k=docker.io%2Flibrary%2Falpine%3A3.20",
		"http://10.0.0.1:5102/a%20b/c",
	} {
		req := signed(t, a, http.MethodGet, url)
		if got := req.Header.Get(HeaderPeer); got != "node-a" {
			t.Fatalf("%s = %q", HeaderPeer, got)
		}
		for _, r := range []*http.Request{req, received(req)} {
			if node, err := b.Verify(r); err != nil || node != "node-a" {
				t.Fatalf("%s: Verify = %q, %v", url, node, err)
			}
		}
	}
	// Through a real server, as the bytes go.
	var gotNode string
	var gotErr error
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotNode, gotErr = b.Verify(r)
	}))
	defer srv.Close()
	resp, err := srv.Client().Do(signed(t, a, http.MethodPost, srv.URL+"/lifeboat/v1/announce?x=1&y=%2F"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if gotErr != nil || gotNode != "node-a" {
		t.Fatalf("over HTTP: Verify = %q, %v", gotNode, gotErr)
	}
}

func TestSignerRefuses(t *testing.T) {
	t.Parallel()
	secret := bytes.Repeat([]byte{7}, 32)
	now := time.Unix(1_800_000_000, 0)
	verifier := signerAt("home", secret, now)
	const url = "http://10.0.0.1:5102/lifeboat/v1/lookup?k=x"
	good := func() *http.Request { return signed(t, signerAt("node-a", secret, now), http.MethodGet, url) }
	sigOf := func(r *http.Request) string {
		h := r.Header.Get(HeaderAuthorization)
		return h[strings.LastIndex(h, "sig=")+4:]
	}
	for _, tc := range []struct {
		name string
		req  func() *http.Request
	}{
		{"wrong key", func() *http.Request {
			return signed(t, signerAt("node-a", bytes.Repeat([]byte{8}, 32), now), http.MethodGet, url)
		}},
		{"tampered path", func() *http.Request {
			r := good()
			r.URL.Path = "/lifeboat/v1/announce"
			return r
		}},
		{"tampered query", func() *http.Request {
			r := good()
			r.URL.RawQuery = "k=y"
			return r
		}},
		{"tampered method", func() *http.Request {
			r := good()
			r.Method = http.MethodPost
			return r
		}},
		{"tampered node", func() *http.Request {
			r := good()
			r.Header.Set(HeaderAuthorization, strings.Replace(r.Header.Get(HeaderAuthorization), "node=node-a", "node=node-b", 1))
			r.Header.Set(HeaderPeer, "node-b")
			return r
		}},
		{"tampered time", func() *http.Request {
			r := good()
			r.Header.Set(HeaderAuthorization, strings.Replace(r.Header.Get(HeaderAuthorization), ",ts=1800000000", ",ts=1800000001", 1))
			return r
		}},
		{"peer header names another node", func() *http.Request {
			r := good()
			r.Header.Set(HeaderPeer, "node-b")
			return r
		}},
		{"peer header missing", func() *http.Request {
			r := good()
			r.Header.Del(HeaderPeer)
			return r
		}},
		{"too old", func() *http.Request {
			return signed(t, signerAt("node-a", secret, now.Add(-TokenSkew-time.Second)), http.MethodGet, url)
		}},
		{"in the future", func() *http.Request {
			return signed(t, signerAt("node-a", secret, now.Add(TokenSkew+time.Second)), http.MethodGet, url)
		}},
		{"node name too long", func() *http.Request {
			return signed(t, signerAt(strings.Repeat("n", 129), secret, now), http.MethodGet, url)
		}},
		{"node name with a space", func() *http.Request {
			return signed(t, signerAt("node a", secret, now), http.MethodGet, url)
		}},
		{"node name with a control byte", func() *http.Request {
			return signed(t, signerAt("node\x01", secret, now), http.MethodGet, url)
		}},
		{"token twice", func() *http.Request {
			r := good()
			r.Header.Add(HeaderAuthorization, r.Header.Get(HeaderAuthorization))
			return r
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if node, err := verifier.Verify(tc.req()); !errors.Is(err, errdefs.ErrUnauthenticated) || node != "" {
				t.Fatalf("Verify = %q, %v; want unauthenticated", node, err)
			}
		})
	}
	t.Run("at the edges of the skew", func(t *testing.T) {
		for _, d := range []time.Duration{-TokenSkew, TokenSkew} {
			r := signed(t, signerAt("node-a", secret, now.Add(d)), http.MethodGet, url)
			if _, err := verifier.Verify(r); err != nil {
				t.Fatalf("%s off: %v", d, err)
			}
		}
	})

	// Malformed headers, each with the peer header set to the node it names.
	r := good()
	sig := sigOf(r)
	for _, h := range []string{
		"",
		"Lifeboat-HMAC",
		"Lifeboat-HMAC ",
		"Bearer abc",
		"lifeboat-hmac node=node-a,ts=1800000000,sig=" + sig,
		"Lifeboat-HMAC  node=node-a,ts=1800000000,sig=" + sig,
		"Lifeboat-HMAC node=node-a,ts=1800000000",
		"Lifeboat-HMAC node=node-a,sig=" + sig,
		"Lifeboat-HMAC ts=1800000000,sig=" + sig + ",node=node-a",
		"Lifeboat-HMAC node=,ts=1800000000,sig=" + sig,
		"Lifeboat-HMAC node=node-a,ts=,sig=" + sig,
		"Lifeboat-HMAC node=node-a,ts=-1800000000,sig=" + sig,
		"Lifeboat-HMAC node=node-a,ts=+1800000000,sig=" + sig,
		"Lifeboat-HMAC node=node-a,ts=1.8e9,sig=" + sig,
		"Lifeboat-HMAC node=node-a,ts=99999999999999999999999,sig=" + sig,
		"Lifeboat-HMAC node=node-a,ts=1800000000,sig=",
		"Lifeboat-HMAC node=node-a,ts=1800000000,sig=" + sig[:62],
		"Lifeboat-HMAC node=node-a,ts=1800000000,sig=" + sig + "00",
		"Lifeboat-HMAC node=node-a,ts=1800000000,sig=" + strings.Repeat("zz", 32),
		"Lifeboat-HMAC node=node-a,ts=1800000000,sig=" + sig + " ",
		"Lifeboat-HMAC node=node-a,ts=1800000000,sig=" + strings.Repeat("0", 64),
		"Lifeboat-HMAC node=" + strings.Repeat("a", 100_000) + ",ts=1800000000,sig=" + sig,
	} {
		req := good()
		req.Header.Set(HeaderAuthorization, h)
		if node, _, _, ok := parseToken(h); ok {
			req.Header.Set(HeaderPeer, node)
		}
		if node, err := verifier.Verify(req); !errors.Is(err, errdefs.ErrUnauthenticated) || node != "" {
			t.Errorf("header %.80q: Verify = %q, %v; want unauthenticated", h, node, err)
		}
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
	// A name with commas still round-trips: the token's fields are found from the end.
	secret := bytes.Repeat([]byte{7}, 32)
	req := signed(t, NewSigner("a,ts=1,sig=b", secret), http.MethodGet, "http://x/")
	if node, err := NewSigner("home", secret).Verify(req); err != nil || node != "a,ts=1,sig=b" {
		t.Fatalf("Verify = %q, %v", node, err)
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add("Lifeboat-HMAC node=node-a,ts=1800000000,sig=" + strings.Repeat("ab", 32))
	f.Add("Lifeboat-HMAC node=a,ts=1,sig=,ts=2,sig=")
	verifier := NewSigner("home", bytes.Repeat([]byte{7}, 32))
	f.Fuzz(func(t *testing.T, h string) {
		node, ts, sig, ok := parseToken(h)
		if ok && (len(sig) != 32 || ts == "" || !strings.Contains(h, node)) {
			t.Fatalf("parseToken(%q) = %q, %q, %x", h, node, ts, sig)
		}
		// No header made up without the key passes.
		req := httptest.NewRequest(http.MethodGet, "/lifeboat/v1/lookup", nil)
		req.Header.Set(HeaderAuthorization, h)
		req.Header.Set(HeaderPeer, node)
		if got, err := verifier.Verify(req); err == nil || got != "" {
			t.Fatalf("Verify accepted %q as %q", h, got)
		}
	})
}
