package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Auth is containerd's docker Authorizer (core/remotes/docker/authorizer.go), kept per Client:
//
//   - A request goes out with whatever the Authorizer holds for the endpoint's host (nothing at
//     first: anonymous). A 401 hands the challenge to AddResponses (Bearer: realm, service;
//     Basic: the credentials), and the request is retried once with the new Authorization.
//   - Bearer tokens are cached by the Authorizer per scope; the scope is the repository's pull
//     scope, put in the ctx with docker.WithScope. Note that the Authorizer also keeps the scope
//     of the first challenge it saw for the host and asks for it with every later token.
//   - The Authorizer caches a failed token fetch for good (its result has no expiry), and it
//     fetches with the ctx of the request that asked first, while concurrent requests for the
//     same scope wait on that one fetch whatever their own ctx says. A long-lived client must
//     not let one caller's short deadline poison the cache, so authorize runs the fetch on a
//     ctx detached from the caller's (bounded by tokenTimeout), lets the caller leave when its
//     ctx ends, and replaces the whole Authorizer when a fetch fails. A final 401 replaces it
//     too, which drops a token the registry no longer accepts.

// newAuthorizer returns a fresh Authorizer for c.
func (c *Client) newAuthorizer() docker.Authorizer {
	return docker.NewDockerAuthorizer(
		docker.WithAuthClient(c.auth),
		docker.WithAuthCreds(c.creds),
		docker.WithAuthHeader(http.Header{"User-Agent": {c.ua}}),
	)
}

func (c *Client) currentAuthorizer() docker.Authorizer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.authorizer
}

// resetAuthorizer replaces old, if it is still the current Authorizer, with a fresh one.
func (c *Client) resetAuthorizer(old docker.Authorizer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.authorizer == old {
		c.authorizer = c.newAuthorizer()
	}
}

// authorize sets req's Authorization from a, fetching a token for scope ("" for none) if a
// needs one. The fetch runs detached from ctx, so that it completes (and is cached) even when
// the caller gives up; the caller waits for it only as long as ctx allows.
//
// Calls for one scope run one at a time: in containerd v2.4.2 a second Authorize for a scope
// whose token is being fetched reads the pending result's expiry without synchronization while
// the fetch writes it (authorizer.go doBearerAuth: a data race the race detector reports). Once
// a token is cached, a call takes microseconds, so the queue is short.
func (c *Client) authorize(ctx context.Context, a docker.Authorizer, req *http.Request, scope string) error {
	var flight chan struct{}
	for flight == nil {
		c.mu.Lock()
		busy, ok := c.flights[scope]
		if !ok {
			flight = make(chan struct{})
			c.flights[scope] = flight
		}
		c.mu.Unlock()
		if ok {
			select {
			case <-busy:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}

	u := *req.URL
	scratch := &http.Request{Method: req.Method, URL: &u, Header: http.Header{}}
	done := make(chan error, 1)
	go func() {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tokenTimeout)
		defer cancel()
		err := a.Authorize(actx, scratch)
		if err != nil {
			c.resetAuthorizer(a)
		}
		c.mu.Lock()
		delete(c.flights, scope)
		c.mu.Unlock()
		close(flight)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return err
		}
		if v := scratch.Header.Get("Authorization"); v != "" {
			req.Header.Set("Authorization", v)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// authError classifies an error from fetching a token. The token service is part of the
// endpoint: it being down or overloaded is an endpoint failure.
func authError(ctx context.Context, what string, err error) error {
	what += ": fetching a token"
	if ctx.Err() != nil {
		return ctxErr(ctx, what)
	}
	var us remoteerrors.ErrUnexpectedStatus
	if errors.As(err, &us) {
		class := classifyStatus(us.StatusCode, "")
		switch {
		case errdefs.IsUnavailable(class), errdefs.IsPermissionDenied(class):
		default:
			class = errdefs.ErrUnauthenticated
		}
		// us.Error() names the realm URL; the status says enough.
		return fmt.Errorf("%s: token service answered %d %s: %w", what, us.StatusCode, http.StatusText(us.StatusCode), class)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, ue.Err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrUnauthenticated)
}

// newCredentials returns the Authorizer's credential function: opts' username and password,
// else a docker config.json lookup, else none. Only the endpoint's own host gets credentials.
func newCredentials(registry, host string, opts Options) (func(string) (string, string, error), error) {
	switch {
	case opts.Username != "":
		user, pass := opts.Username, opts.Password
		return func(h string) (string, string, error) {
			if h != host {
				return "", "", nil
			}
			return user, pass, nil
		}, nil
	case opts.DockerConfig != "":
		path, err := expandHome(opts.DockerConfig)
		if err != nil {
			return nil, err
		}
		// A file that exists but cannot be used is a configuration error: say so now.
		if _, _, err := dockerConfigCredentials(path, registry, host); err != nil {
			return nil, err
		}
		return func(h string) (string, string, error) {
			if h != host {
				return "", "", nil
			}
			return dockerConfigCredentials(path, registry, host)
		}, nil
	}
	return func(string) (string, string, error) { return "", "", nil }, nil
}

func expandHome(path string) (string, error) {
	if path != "~" && !strings.HasPrefix(path, "~/") {
		return path, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("docker config %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(home, strings.TrimPrefix(path, "~")), nil
}

// dockerAuth is one "auths" entry of a docker config.json.
type dockerAuth struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

// dockerConfigCredentials reads path and returns the credentials for host (see
// Options.DockerConfig). A missing file, or no entry, means none. Errors never quote the file's
// content.
func dockerConfigCredentials(path, registry, host string) (string, string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("docker config: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	user, pass, err := lookupDockerConfig(data, registry, host)
	if err != nil {
		return "", "", fmt.Errorf("docker config %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	return user, pass, nil
}

// lookupDockerConfig finds the credentials for endpoint host of registry in a config.json.
func lookupDockerConfig(data []byte, registry, host string) (string, string, error) {
	var cfg struct {
		Auths map[string]dockerAuth `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		// A json.SyntaxError holds no content, but a type error could quote a value: keep it short.
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return "", "", fmt.Errorf("not valid JSON at offset %d", se.Offset)
		}
		return "", "", errors.New("not a docker config.json")
	}
	keys := make([]string, 0, len(cfg.Auths))
	for k := range cfg.Auths {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, want := range configHosts(registry, host) {
		for _, k := range keys {
			if normalizeConfigKey(k) != want {
				continue
			}
			a := cfg.Auths[k]
			switch {
			case a.Auth != "":
				raw, err := base64.StdEncoding.DecodeString(a.Auth)
				if err != nil {
					return "", "", fmt.Errorf("auths %q: auth is not base64", k)
				}
				user, pass, ok := strings.Cut(string(raw), ":")
				if !ok {
					return "", "", fmt.Errorf("auths %q: auth is not user:password", k)
				}
				return user, pass, nil
			case a.IdentityToken != "":
				// As containerd's CRI does: an identity token is a refresh token for the token
				// service, sent without a username.
				return "", a.IdentityToken, nil
			case a.Username != "" || a.Password != "":
				return a.Username, a.Password, nil
			}
		}
	}
	return "", "", nil
}

// configHosts lists the config.json keys (normalized) whose credentials may go to endpoint host
// of registry, in order of preference.
func configHosts(registry, host string) []string {
	hosts := []string{strings.ToLower(host)}
	canonical := host == registry ||
		(registry == "docker.io" && (host == "registry-1.docker.io" || host == "index.docker.io"))
	if canonical {
		hosts = append(hosts, strings.ToLower(registry))
		if registry == "docker.io" {
			hosts = append(hosts, "index.docker.io", "registry-1.docker.io")
		}
	}
	return slices.Compact(hosts)
}

// normalizeConfigKey turns "https://index.docker.io/v1/" into "index.docker.io".
func normalizeConfigKey(k string) string {
	k = strings.TrimPrefix(k, "https://")
	k = strings.TrimPrefix(k, "http://")
	k, _, _ = strings.Cut(k, "/")
	return strings.ToLower(k)
}

// logAuthRetry notes an auth retry: the challenge's scheme only, never its parameters.
func logAuthRetry(ctx context.Context, host, op string, resp *http.Response) {
	scheme, _, _ := strings.Cut(resp.Header.Get("WWW-Authenticate"), " ")
	log.G(ctx).WithFields(log.Fields{"endpoint": host, "request": op, "scheme": scheme}).Debug("upstream asked for auth, retrying")
}
