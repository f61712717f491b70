package upstream

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// tokenServer is a small Docker-style token service: GET with basic credentials, or the OAuth
// POST form containerd tries first. It grants repository:<repo>:pull for every repository to
// its user, and for public/... repositories to anyone; wrong credentials are a 401.
type tokenServer struct {
	srv        *httptest.Server
	user, pass string

	// hook, when set, runs first for every token request; a non-zero status is answered as is.
	hook func(r *http.Request) int

	requests atomic.Int64
	mu       sync.Mutex
	granted  map[string][]string // token → scopes
	asked    [][]string          // scopes of each request
}

func newTokenServer(t *testing.T, user, pass string) *tokenServer {
	ts := &tokenServer{user: user, pass: pass, granted: map[string][]string{}}
	ts.srv = serve(t, http.HandlerFunc(ts.serveHTTP))
	return ts
}

func (ts *tokenServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ts.requests.Add(1)
	if ts.hook != nil {
		if status := ts.hook(r); status != 0 {
			w.WriteHeader(status)
			return
		}
	}
	var user, pass, service string
	var scopes []string
	switch r.Method {
	case http.MethodGet:
		user, pass, _ = r.BasicAuth()
		scopes = r.URL.Query()["scope"]
		service = r.URL.Query().Get("service")
	case http.MethodPost:
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		user, pass = r.PostForm.Get("username"), r.PostForm.Get("password")
		scopes = strings.Fields(r.PostForm.Get("scope"))
		service = r.PostForm.Get("service")
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	if service != "test-registry" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	authenticated := user == ts.user && pass == ts.pass
	if (user != "" || pass != "") && !authenticated {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var grant []string
	for _, s := range scopes {
		repo, ok := strings.CutPrefix(s, "repository:")
		repo, ok2 := strings.CutSuffix(repo, ":pull")
		if ok && ok2 && (authenticated || strings.HasPrefix(repo, "public/")) {
			grant = append(grant, s)
		}
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	ts.mu.Lock()
	ts.granted[token] = grant
	ts.asked = append(ts.asked, scopes)
	ts.mu.Unlock()
	key := "token"
	if r.Method == http.MethodPost {
		key = "access_token"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{key: token, "expires_in": 300})
}

// allows reports whether token grants pulling repo (any valid token for repo "").
func (ts *tokenServer) allows(token, repo string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	scopes, ok := ts.granted[token]
	return ok && (repo == "" || slices.Contains(scopes, "repository:"+repo+":pull"))
}

func (ts *tokenServer) askedFor(scope string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, s := range ts.asked {
		if slices.Contains(s, scope) {
			return true
		}
	}
	return false
}

// bearerAuth makes the registry require a token from realm that grants the request's
// repository.
func bearerAuth(ts *tokenServer, realm string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			repo := repoOf(r.URL.Path)
			token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if ok && ts.allows(token, repo) {
				next.ServeHTTP(w, r)
				return
			}
			challenge := `Bearer realm="` + realm + `",service="test-registry"`
			if repo != "" {
				challenge += `,scope="repository:` + repo + `:pull"`
			}
			w.Header().Set("WWW-Authenticate", challenge)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		})
	}
}

// basicAuth makes the registry require basic credentials.
func basicAuth(user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); ok && u == user && p == pass {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="test-registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		})
	}
}

// repoOf returns the repository of a /v2/<repo>/<api>/<x> path, "" for /v2/.
func repoOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) < 4 {
		return ""
	}
	return strings.Join(parts[1:len(parts)-2], "/")
}

// dockerConfig writes a config.json with one auths entry and returns its path.
func dockerConfig(t *testing.T, key string, entry map[string]string) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"auths": map[string]any{key: entry}})
	must(t, err)
	path := filepath.Join(t.TempDir(), "config.json")
	must(t, os.WriteFile(path, b, 0o600))
	return path
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// debugCtx returns a ctx whose log.G logger writes everything, at debug level, to the buffer.
func debugCtx(t *testing.T) (context.Context, *syncBuffer) {
	buf := &syncBuffer{}
	l := logrus.New()
	l.SetOutput(buf)
	l.SetLevel(logrus.DebugLevel)
	return log.WithLogger(t.Context(), logrus.NewEntry(l)), buf
}

func TestBearerAuth(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.putManifestIn(t, "public/app", "v1", f.desc.MediaType, f.manifest)

	tests := []struct {
		name    string
		repo    string
		opts    func(host string) Options
		realm   func(ts *tokenServer) string
		hook    func(r *http.Request) int
		want    error
		failure bool
	}{
		{name: "credentials", repo: f.repo, opts: func(string) Options { return Options{Username: testUser, Password: testPassword} }},
		{name: "anonymous, public repository", repo: "public/app", opts: func(string) Options { return Options{} }},
		{name: "anonymous, private repository", repo: f.repo, opts: func(string) Options { return Options{} }, want: errdefs.ErrUnauthenticated},
		{name: "wrong password", repo: f.repo, opts: func(string) Options { return Options{Username: testUser, Password: testPassword + "x"} }, want: errdefs.ErrUnauthenticated},
		{name: "docker config", repo: f.repo, opts: func(host string) Options {
			return Options{DockerConfig: dockerConfig(t, host, map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))})}
		}},
		{name: "docker config, https key with path", repo: f.repo, opts: func(host string) Options {
			return Options{DockerConfig: dockerConfig(t, "https://"+host+"/v1/", map[string]string{"username": testUser, "password": testPassword})}
		}},
		{name: "docker config for another host", repo: f.repo, opts: func(string) Options {
			return Options{DockerConfig: dockerConfig(t, "other.example", map[string]string{"username": testUser, "password": testPassword})}
		}, want: errdefs.ErrUnauthenticated},
		{name: "token service refused", repo: f.repo, opts: func(string) Options { return Options{Username: testUser, Password: testPassword} },
			realm: func(*tokenServer) string { return refusedURL(t) + "/token" }, want: errdefs.ErrUnavailable, failure: true},
		{name: "token service 503", repo: f.repo, opts: func(string) Options { return Options{Username: testUser, Password: testPassword} },
			hook: func(*http.Request) int { return http.StatusServiceUnavailable }, want: errdefs.ErrUnavailable, failure: true},
		{name: "token service 403", repo: f.repo, opts: func(string) Options { return Options{Username: testUser, Password: testPassword} },
			hook: func(*http.Request) int { return http.StatusForbidden }, want: errdefs.ErrPermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTokenServer(t, testUser, testPassword)
			ts.hook = tt.hook
			realm := ts.srv.URL + "/token"
			if tt.realm != nil {
				realm = tt.realm(ts)
			}
			var regCount counter
			srv := f.serve(t, regCount.wrap, bearerAuth(ts, realm))
			c := newClient(t, srv.URL, tt.opts(strings.TrimPrefix(srv.URL, "http://")))
			ctx, logs := debugCtx(t)

			desc, _, err := c.HeadManifest(ctx, tt.repo, f.tag)
			checkErr(t, err, tt.want, tt.failure)
			_, body, err := c.GetManifest(ctx, tt.repo, f.desc.Digest.String())
			checkErr(t, err, tt.want, tt.failure)
			rc, size, err := c.GetBlob(ctx, tt.repo, f.layer)
			checkErr(t, err, tt.want, tt.failure)
			if err == nil {
				got, err := io.ReadAll(rc)
				must(t, err)
				rc.Close()
				if !bytes.Equal(got, f.layerRaw) || size != f.layerLen {
					t.Errorf("blob: %d bytes, size %d; want %d", len(got), size, f.layerLen)
				}
			}
			_, err = c.HeadBlob(ctx, tt.repo, f.layer)
			checkErr(t, err, tt.want, tt.failure)
			_, err = c.Tags(ctx, tt.repo)
			checkErr(t, err, tt.want, tt.failure)
			noSecret(t, logs.String())

			if tt.want != nil {
				return
			}
			if desc.Digest != f.desc.Digest || !bytes.Equal(body, f.manifest) {
				t.Errorf("HeadManifest = %v, GetManifest body %d bytes; want %v", desc, len(body), f.desc)
			}
			if n := ts.requests.Load(); n != 1 {
				t.Errorf("token requests = %d, want 1: the token is reused across requests", n)
			}
			if !ts.askedFor("repository:" + tt.repo + ":pull") {
				t.Errorf("no token request asked for repository:%s:pull", tt.repo)
			}
			// 1 anonymous attempt, then 1 request per call with the cached token.
			if n := regCount.get("all"); n != 6 {
				t.Errorf("registry requests = %d, want 6 (one 401, then one per call)", n)
			}
		})
	}
}

// A token fetch that outlives a caller's deadline, or fails, must not poison the client: the
// containerd Authorizer caches a failed fetch for good and fetches with the first caller's ctx.
func TestTokenCacheNotPoisoned(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	opts := Options{Username: testUser, Password: testPassword}

	t.Run("slow token service and a short deadline", func(t *testing.T) {
		t.Parallel()
		ts := newTokenServer(t, testUser, testPassword)
		release := make(chan struct{})
		ts.hook = func(r *http.Request) int {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return 0
		}
		srv := f.serve(t, bearerAuth(ts, ts.srv.URL+"/token"))
		c := newClient(t, srv.URL, opts)

		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		_, _, err := c.HeadManifest(ctx, f.repo, f.tag)
		if !errors.Is(err, context.DeadlineExceeded) || !IsEndpointFailure(err) {
			t.Fatalf("HeadManifest with a stuck token service = %v, want a deadline endpoint failure", err)
		}
		close(release)
		if _, _, err := c.HeadManifest(t.Context(), f.repo, f.tag); err != nil {
			t.Fatalf("HeadManifest after the token service answered: %v", err)
		}
		if n := ts.requests.Load(); n != 1 {
			t.Errorf("token requests = %d, want 1: the fetch the first caller gave up on completes and is reused", n)
		}
	})

	t.Run("token service fails once", func(t *testing.T) {
		t.Parallel()
		ts := newTokenServer(t, testUser, testPassword)
		var failed atomic.Bool
		ts.hook = func(*http.Request) int {
			if failed.CompareAndSwap(false, true) {
				return http.StatusBadGateway
			}
			return 0
		}
		srv := f.serve(t, bearerAuth(ts, ts.srv.URL+"/token"))
		c := newClient(t, srv.URL, opts)
		_, _, err := c.HeadManifest(t.Context(), f.repo, f.tag)
		checkErr(t, err, errdefs.ErrUnavailable, true)
		if _, _, err := c.HeadManifest(t.Context(), f.repo, f.tag); err != nil {
			t.Fatalf("HeadManifest after the token service recovered: %v", err)
		}
	})

	t.Run("registry stops accepting a cached token", func(t *testing.T) {
		t.Parallel()
		ts := newTokenServer(t, testUser, testPassword)
		srv := f.serve(t, bearerAuth(ts, ts.srv.URL+"/token"))
		c := newClient(t, srv.URL, opts)
		if _, _, err := c.HeadManifest(t.Context(), f.repo, f.tag); err != nil {
			t.Fatal(err)
		}
		ts.mu.Lock()
		clear(ts.granted) // every token issued so far is revoked; the 401s carry no error=
		ts.mu.Unlock()
		_, _, err := c.HeadManifest(t.Context(), f.repo, f.tag)
		checkErr(t, err, errdefs.ErrUnauthenticated, false)
		if _, _, err := c.HeadManifest(t.Context(), f.repo, f.tag); err != nil {
			t.Fatalf("HeadManifest after a final 401 should start over with a new token: %v", err)
		}
	})
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name string
		opts Options
		want error
	}{
		{name: "credentials", opts: Options{Username: testUser, Password: testPassword}},
		{name: "none", want: errdefs.ErrUnauthenticated},
		{name: "wrong password", opts: Options{Username: testUser, Password: "x" + testPassword}, want: errdefs.ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var count counter
			srv := f.serve(t, count.wrap, basicAuth(testUser, testPassword))
			c := newClient(t, srv.URL, tt.opts)
			ctx, logs := debugCtx(t)
			desc, _, err := c.HeadManifest(ctx, f.repo, f.tag)
			checkErr(t, err, tt.want, false)
			noSecret(t, logs.String())
			if tt.want != nil {
				return
			}
			if desc.Digest != f.desc.Digest {
				t.Errorf("digest = %s, want %s", desc.Digest, f.desc.Digest)
			}
			before := count.get("all")
			_, err = c.HeadBlob(ctx, f.repo, f.layer)
			must(t, err)
			if n := count.get("all") - before; n != 1 {
				t.Errorf("second call made %d requests, want 1: basic credentials are sent up front once known", n)
			}
		})
	}
}

func TestDockerConfigLookup(t *testing.T) {
	t.Parallel()
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	cfg := func(auths map[string]dockerAuth) []byte {
		b, err := json.Marshal(map[string]any{"auths": auths})
		must(t, err)
		return b
	}
	up := dockerAuth{Username: testUser, Password: testPassword}
	tests := []struct {
		name           string
		data           []byte
		registry, host string
		user, pass     string
		wantErr        bool
	}{
		{name: "docker.io key", data: cfg(map[string]dockerAuth{"docker.io": {Auth: b64(testUser + ":" + testPassword)}}), registry: "docker.io", host: "registry-1.docker.io", user: testUser, pass: testPassword},
		{name: "index v1 URL key", data: cfg(map[string]dockerAuth{"https://index.docker.io/v1/": up}), registry: "docker.io", host: "registry-1.docker.io", user: testUser, pass: testPassword},
		{name: "registry-1 key", data: cfg(map[string]dockerAuth{"registry-1.docker.io": up}), registry: "docker.io", host: "registry-1.docker.io", user: testUser, pass: testPassword},
		{name: "registry creds are not sent to a third-party mirror", data: cfg(map[string]dockerAuth{"docker.io": up}), registry: "docker.io", host: "mirror.gcr.io"},
		{name: "mirror's own entry", data: cfg(map[string]dockerAuth{"docker.io": {Username: "hub", Password: "hub"}, "mirror.gcr.io": up}), registry: "docker.io", host: "mirror.gcr.io", user: testUser, pass: testPassword},
		{name: "endpoint entry preferred", data: cfg(map[string]dockerAuth{"docker.io": {Username: "hub", Password: "hub"}, "https://registry-1.docker.io": up}), registry: "docker.io", host: "registry-1.docker.io", user: testUser, pass: testPassword},
		{name: "host:port", data: cfg(map[string]dockerAuth{"127.0.0.1:5000": up}), registry: "127.0.0.1:5000", host: "127.0.0.1:5000", user: testUser, pass: testPassword},
		{name: "http URL key", data: cfg(map[string]dockerAuth{"http://127.0.0.1:5000": up}), registry: "127.0.0.1:5000", host: "127.0.0.1:5000", user: testUser, pass: testPassword},
		{name: "other port", data: cfg(map[string]dockerAuth{"127.0.0.1:5001": up}), registry: "127.0.0.1:5000", host: "127.0.0.1:5000"},
		{name: "case-insensitive host", data: cfg(map[string]dockerAuth{"R.Example": up}), registry: "r.example", host: "r.example", user: testUser, pass: testPassword},
		{name: "identity token", data: cfg(map[string]dockerAuth{"r.example": {IdentityToken: testPassword}}), registry: "r.example", host: "r.example", pass: testPassword},
		{name: "password with colon", data: cfg(map[string]dockerAuth{"r.example": {Auth: b64(testUser + ":a:b")}}), registry: "r.example", host: "r.example", user: testUser, pass: "a:b"},
		{name: "no auths", data: []byte(`{"credsStore": "desktop"}`), registry: "r.example", host: "r.example"},
		{name: "auth not base64", data: cfg(map[string]dockerAuth{"r.example": {Auth: testPassword + "!"}}), registry: "r.example", host: "r.example", wantErr: true},
		{name: "auth without colon", data: cfg(map[string]dockerAuth{"r.example": {Auth: b64(testPassword)}}), registry: "r.example", host: "r.example", wantErr: true},
		{name: "not JSON", data: []byte(`{"auths": {"r.example": {"auth": "` + testPassword), registry: "r.example", host: "r.example", wantErr: true},
		{name: "wrong shape", data: []byte(`{"auths": {"r.example": "` + testPassword + `"}}`), registry: "r.example", host: "r.example", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			user, pass, err := lookupDockerConfig(tt.data, tt.registry, tt.host)
			if tt.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				noSecret(t, err.Error())
				return
			}
			must(t, err)
			if user != tt.user || pass != tt.pass {
				t.Errorf("credentials = %q, %q; want %q, %q", user, pass, tt.user, tt.pass)
			}
		})
	}
}

// Concurrent requests for one repository share one token fetch. Run with -race: containerd's
// Authorizer races on a pending token's expiry when two requests for a scope overlap.
func TestConcurrentRequestsShareToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ts := newTokenServer(t, testUser, testPassword)
	srv := f.serve(t, bearerAuth(ts, ts.srv.URL+"/token"))
	c := newClient(t, srv.URL, Options{Username: testUser, Password: testPassword})

	const n = 32
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			if i%2 == 0 {
				_, _, err := c.HeadManifest(t.Context(), f.repo, f.tag)
				errs <- err
				return
			}
			_, err := c.HeadBlob(t.Context(), f.repo, f.layer)
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}
	if got := ts.requests.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
}
