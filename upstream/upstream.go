// Package upstream is the HTTP client for one upstream registry endpoint: the pull side of the
// OCI distribution API (manifests, blobs, tags, referrers) with Docker-style auth, TLS options
// and an exact error classification.
//
// It does no failover, retries (other than the one auth retry after a 401) or health tracking:
// the resolver keeps one *Client per endpoint and owns that policy. What the resolver needs to
// drive it is the error classification:
//
//   - errdefs.ErrNotFound: 404, or a MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN error body.
//   - errdefs.ErrUnauthenticated: 401 after the auth retry, or credentials the token service or
//     the Authorizer refused; errdefs.ErrPermissionDenied: 403.
//   - errdefs.ErrUnavailable: 408, 429, 5xx, connection refused or reset, DNS and TLS failures,
//     timeouts (including the caller's ctx deadline, which then also wraps
//     context.DeadlineExceeded), truncated bodies, and the same failures of the token service
//     a Bearer challenge names. IsEndpointFailure is true for exactly these; RetryAfter
//     reports a 429's (or 503's) Retry-After.
//   - context.Canceled when the caller's ctx was canceled: not an endpoint failure.
//   - errdefs.ErrInvalidArgument for a malformed repository, reference, digest or endpoint,
//     checked before any request is made; errdefs.ErrFailedPrecondition for content that fails
//     verification, is too large, or breaks the protocol.
//
// Requests go to /v2/<repo>/... on the endpoint and never carry ?ns=: upstream endpoints are
// real registries (or mirrors that serve one registry's namespace at their root), not
// multi-registry mirrors like lifeboat itself.
//
// Credentials never appear in errors or logs: endpoint URLs with userinfo are refused, errors
// name the request by method and path only (never a redirect target, which may carry a signed
// query), and no header is ever formatted into a message.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// Timeouts of the transport NewTransport builds.
const (
	DialTimeout           = 5 * time.Second
	TLSHandshakeTimeout   = 5 * time.Second
	ResponseHeaderTimeout = 30 * time.Second

	// tokenTimeout bounds one token fetch. Token fetches run detached from the caller's ctx
	// (see Client.authorize), so this is what bounds them.
	tokenTimeout = 30 * time.Second
	// maxRedirects is how many redirects a request may follow (blobs redirect to storage).
	maxRedirects = 10
)

// Options configures a Client. The zero value is an anonymous client with the system roots.
type Options struct {
	// Username and Password are basic-auth or token-service credentials; both may be empty
	// (anonymous), and a Password without a Username is ignored. They are sent to this
	// endpoint (and to the token service its challenge names) only.
	Username, Password string
	// DockerConfig is the path of a docker config.json ("~/" is expanded). When Username is
	// empty, credentials are looked up in its "auths" entries: an entry keyed by the endpoint's
	// host ("host:port", with or without a scheme and a path such as "/v1/"), or, when the
	// endpoint is the registry's own (its host is the registry, or registry-1.docker.io /
	// index.docker.io for docker.io), an entry keyed by the registry ("docker.io",
	// "https://index.docker.io/v1/"). Registry credentials are thus never sent to a
	// third-party mirror endpoint. The file is read when a credential is needed, so a rewritten
	// file is picked up; a missing file means anonymous; credsStore and credHelpers are not
	// supported.
	DockerConfig string
	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string
	// InsecureSkipVerify disables TLS certificate verification.
	InsecureSkipVerify bool
	// Transport is the base transport. nil: NewTransport(opts). A *http.Transport is cloned and
	// CAFile / InsecureSkipVerify are applied to the clone's TLS config. Any other
	// RoundTripper (a wrapper, such as the outage simulator's) is used as is: it cannot be
	// reached into, so build it around NewTransport(opts), which has the TLS options applied:
	//
	//	base, err := upstream.NewTransport(opts)
	//	opts.Transport = simulator.Wrap(registry, base)
	//	c, err := upstream.New(registry, endpoint, opts)
	Transport http.RoundTripper
	// UserAgent is sent with every request, token requests included. Default "lifeboat".
	UserAgent string
}

// Client talks to one endpoint of one registry. It is safe for concurrent use. Bearer tokens
// are cached per repository scope and shared by all requests.
type Client struct {
	registry string
	endpoint string   // as given, normalized: scheme://host
	base     *url.URL // scheme and host of the endpoint
	ua       string

	http *http.Client // follows redirects, strips Authorization off the endpoint's host
	auth *http.Client // token fetches: bounded by a timeout

	creds func(host string) (string, string, error)

	mu         sync.Mutex
	authorizer docker.Authorizer        // replaced when it has cached a failure (see auth.go)
	flights    map[string]chan struct{} // scope → closed when its Authorize call is done
}

// New returns a client for endpoint ("https://registry-1.docker.io", "http://127.0.0.1:5000"),
// one of the endpoints of registry ("docker.io"). The endpoint must be an http or https URL with
// a host, no userinfo, query or fragment, and no path other than "/". Errors:
// errdefs.ErrInvalidArgument for a bad registry, endpoint, CA file or docker config.
func New(registry, endpoint string, opts Options) (*Client, error) {
	if err := validateRegistry(registry); err != nil {
		return nil, err
	}
	base, err := parseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	rt, err := baseTransport(opts)
	if err != nil {
		return nil, err
	}
	creds, err := newCredentials(registry, base.Host, opts)
	if err != nil {
		return nil, err
	}
	c := &Client{
		registry: registry,
		endpoint: base.String(),
		base:     base,
		ua:       opts.UserAgent,
		creds:    creds,
		flights:  map[string]chan struct{}{},
	}
	if c.ua == "" {
		c.ua = "lifeboat"
	}
	c.http = &http.Client{Transport: rt, CheckRedirect: c.checkRedirect}
	c.auth = &http.Client{Transport: rt, Timeout: tokenTimeout}
	c.authorizer = c.newAuthorizer()
	return c, nil
}

// Registry returns the registry this endpoint serves ("docker.io").
func (c *Client) Registry() string { return c.registry }

// Endpoint returns the endpoint URL, scheme://host ("https://registry-1.docker.io").
func (c *Client) Endpoint() string { return c.endpoint }

// checkRedirect follows up to maxRedirects redirects and never sends the Authorization header
// meant for the endpoint to another host. net/http alone would: it keeps the header for the same
// host name on another port and for subdomains.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	if req.URL.Host != c.base.Host || req.URL.Scheme != c.base.Scheme {
		req.Header.Del("Authorization")
	}
	return nil
}

func validateRegistry(registry string) error {
	if registry == "" {
		return fmt.Errorf("registry name is empty: %w", errdefs.ErrInvalidArgument)
	}
	u, err := url.Parse("dummy://" + registry)
	if err != nil || u.Host != registry || u.User != nil {
		return fmt.Errorf("registry %q is not a host[:port]: %w", registry, errdefs.ErrInvalidArgument)
	}
	return nil
}

func parseEndpoint(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		// url.Parse quotes the input, which could hold a password: keep only the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("endpoint is not a URL (%v): %w", err, errdefs.ErrInvalidArgument)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("endpoint scheme %q: only http and https are supported: %w", u.Scheme, errdefs.ErrInvalidArgument)
	case u.User != nil:
		return nil, fmt.Errorf("endpoint %s://%s: credentials in the URL are not supported, use the username and password options: %w", u.Scheme, u.Host, errdefs.ErrInvalidArgument)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("endpoint %q has no host: %w", endpoint, errdefs.ErrInvalidArgument)
	case u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("endpoint %q: only scheme://host[:port] is supported, without a path or query: %w", endpoint, errdefs.ErrInvalidArgument)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// NewTransport returns the transport New builds when Options.Transport is nil: a clone of
// http.DefaultTransport (proxy from the environment, HTTP/2) with a 5 s dial timeout, a 5 s TLS
// handshake timeout, a 30 s response header timeout, kept-alive idle connections, no
// transparent compression, and opts.CAFile and opts.InsecureSkipVerify applied. Wrap it to add
// behavior (fault injection) and pass the wrapper as Options.Transport. Errors: errdefs.ErrInvalidArgument for a CA file
// that cannot be read or holds no certificate.
func NewTransport(opts Options) (*http.Transport, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = TLSHandshakeTimeout
	t.ResponseHeaderTimeout = ResponseHeaderTimeout
	t.MaxIdleConns = 100
	t.MaxIdleConnsPerHost = 16
	t.IdleConnTimeout = 90 * time.Second
	// Blob bytes must arrive as stored: no transparent gzip (its digest would not match).
	t.DisableCompression = true
	if err := applyTLS(t, opts); err != nil {
		return nil, err
	}
	return t, nil
}

func baseTransport(opts Options) (http.RoundTripper, error) {
	switch t := opts.Transport.(type) {
	case nil:
		return NewTransport(opts)
	case *http.Transport:
		t = t.Clone()
		if err := applyTLS(t, opts); err != nil {
			return nil, err
		}
		return t, nil
	default:
		return t, nil
	}
}

// applyTLS adds opts' TLS settings to t's TLS config (a copy of it; t is already a clone).
func applyTLS(t *http.Transport, opts Options) error {
	if opts.CAFile == "" && !opts.InsecureSkipVerify {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.TLSClientConfig != nil {
		cfg = t.TLSClientConfig.Clone()
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return fmt.Errorf("reading CA file: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		pool := cfg.RootCAs
		if pool != nil {
			pool = pool.Clone()
		} else if pool, err = x509.SystemCertPool(); err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("CA file %s holds no PEM certificate: %w", opts.CAFile, errdefs.ErrInvalidArgument)
		}
		cfg.RootCAs = pool
	}
	if opts.InsecureSkipVerify {
		cfg.InsecureSkipVerify = true
	}
	t.TLSClientConfig = cfg
	return nil
}

// ctxErr is the error for a request that ended because ctx did. A deadline is an endpoint
// failure (the resolver set it because the endpoint was too slow); a cancellation is not.
func ctxErr(ctx context.Context, what string) error {
	if errors.Is(context.Cause(ctx), context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, context.DeadlineExceeded)
	}
	return fmt.Errorf("%s: %w", what, context.Canceled)
}
