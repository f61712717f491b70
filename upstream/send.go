package upstream

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

func validateRepo(repo string) error {
	if !oci.ValidRepository(repo) {
		return fmt.Errorf("repository name %q: %w", printable(repo, 300), errdefs.ErrInvalidArgument)
	}
	return nil
}

// url returns the endpoint URL of path, with query.
func (c *Client) url(path string, query url.Values) *url.URL {
	u := *c.base
	u.Path = path
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	return &u
}

// send makes a request to u (on the endpoint) with the endpoint's auth, the bearer token scoped
// to repo's pull scope (repo "" for none). It returns the response if its status is 2xx; any
// other answer becomes a classified error and its body is drained and closed. On a 401 from the
// endpoint it gives the challenge to the Authorizer and tries once more.
func (c *Client) send(ctx context.Context, method string, u *url.URL, repo string, accept ...string) (*http.Response, error) {
	var header http.Header
	if len(accept) > 0 {
		header = http.Header{"Accept": {strings.Join(accept, ", ")}}
	}
	return c.sendWith(ctx, method, u, repo, header)
}

// sendWith is send with header's fields added to the request (an Accept, a Range).
func (c *Client) sendWith(ctx context.Context, method string, u *url.URL, repo string, header http.Header) (*http.Response, error) {
	op := method + " " + u.Path
	what := "upstream " + c.base.Host + ": " + op
	var scope string
	if repo != "" {
		scope = "repository:" + repo + ":pull"
		ctx = docker.WithScope(ctx, scope)
	}
	a := c.currentAuthorizer()
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrInvalidArgument)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", c.ua)
		if err := c.authorize(ctx, a, req, scope); err != nil {
			return nil, authError(ctx, what, err)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			return nil, transportError(ctx, what, err)
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return resp, nil
		}
		// Only a challenge from the endpoint itself is answered, never one from a redirect
		// target: that would hand the endpoint's credentials to another host.
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 && resp.Request.URL.Host == c.base.Host {
			drainClose(resp.Body)
			logAuthRetry(ctx, c.base.Host, op, resp)
			if err := a.AddResponses(ctx, []*http.Response{resp}); err != nil {
				// The Authorizer's message names schemes, never credentials.
				return nil, fmt.Errorf("%s: 401 Unauthorized, cannot authenticate: %v: %w", what, err, errdefs.ErrUnauthenticated)
			}
			continue
		}
		serr := newStatusError(c.base.Host, op, resp)
		drainClose(resp.Body)
		if resp.StatusCode == http.StatusUnauthorized {
			c.resetAuthorizer(a)
		}
		return nil, serr
	}
}

// drainClose reads a little of body, so the connection can be reused, and closes it.
func drainClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, maxErrorBody)
	_ = body.Close()
}

// readAll reads resp's body, at most limit bytes: more is ErrFailedPrecondition. A short or
// broken body is an endpoint failure.
func readAll(ctx context.Context, what string, resp *http.Response, limit int64) ([]byte, error) {
	defer drainClose(resp.Body)
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%s: body of %d bytes is too large (limit %d): %w", what, resp.ContentLength, limit, errdefs.ErrFailedPrecondition)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, transportError(ctx, what+": reading body", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: body is too large (limit %d bytes): %w", what, limit, errdefs.ErrFailedPrecondition)
	}
	return b, nil
}
