package endpoints

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Client is what lifeboat needs of one upstream endpoint; *upstream.Client provides it.
// Errors follow errdefs: ErrNotFound when the registry says the thing does not exist,
// ErrUnavailable (or a context deadline) when the endpoint failed.
type Client interface {
	Endpoint() string
	Ping(ctx context.Context) error
	// HeadManifest also returns the registry's Date header of its answer (the zero time when
	// it sent none).
	HeadManifest(ctx context.Context, repo, reference string) (ocispec.Descriptor, time.Time, error)
	GetManifest(ctx context.Context, repo, reference string) (ocispec.Descriptor, []byte, error)
	GetBlob(ctx context.Context, repo string, dgst digest.Digest) (io.ReadCloser, int64, error)
	HeadBlob(ctx context.Context, repo string, dgst digest.Digest) (int64, error)
	Tags(ctx context.Context, repo string) ([]string, error)
	Referrers(ctx context.Context, repo string, dgst digest.Digest, artifactType string) ([]byte, string, error)
}

// RangeClient is a Client that can also send part of a blob (*upstream.Client can): a fill whose
// download broke after bytes reached clients resumes with it. GetBlobRange returns the bytes
// [off, off+length) and the whole blob's size; errors are GetBlob's.
type RangeClient interface {
	GetBlobRange(ctx context.Context, repo string, dgst digest.Digest, off, length int64) (io.ReadCloser, int64, error)
}

// Request is one request to an upstream endpoint, for metrics.
type Request struct {
	Registry, Endpoint string
	// Op is "head-manifest", "get-manifest", "get-blob" (until the headers), "blob-body" (the
	// body of a blob fill, with Bytes), "head-blob", "tags" or "referrers".
	Op       string
	Duration time.Duration
	Bytes    int64
	Err      error
}

// report passes a finished request to the table's observer, if any, unless the endpoint is
// forgotten (its metrics are gone, and stay gone).
func (e *Endpoint) Report(r Request) {
	if e.onRequest == nil || e.forgotten() {
		return
	}
	r.Registry, r.Endpoint = e.registry, e.client.Endpoint()
	e.onRequest(r)
}

// IsFailure tells failures of the endpoint (it is down, slow, or erroring) from answers
// (not found, denied) and from the caller giving up.
func IsFailure(err error) bool {
	return err != nil && (errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded))
}

// Health tune the circuit breaker of each endpoint.
type Health struct {
	// FailureThreshold is how many consecutive failures mark an endpoint down. A request that
	// waits out its deadline while the endpoint answers nothing else marks it down at once.
	FailureThreshold int
	// ProbeInterval is the first wait before probing a down endpoint; it doubles up to
	// ProbeMaxInterval.
	ProbeInterval, ProbeMaxInterval time.Duration
	// ProbeTimeout bounds one probe.
	ProbeTimeout time.Duration
}

func (o *Health) setDefaults() {
	if o.FailureThreshold <= 0 {
		o.FailureThreshold = 3
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = time.Second
	}
	if o.ProbeMaxInterval < o.ProbeInterval {
		o.ProbeMaxInterval = max(30*time.Second, o.ProbeInterval)
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 5 * time.Second
	}
}

// Status is an endpoint's health as shown by `lifeboat status` and the metrics.
type Status struct {
	Registry  string    `json:"registry"`
	Endpoint  string    `json:"endpoint"`
	Up        bool      `json:"up"`
	Since     time.Time `json:"since"`
	LastError string    `json:"lastError,omitempty"`
	Failures  int       `json:"consecutiveFailures"`
}

// Endpoint is one upstream endpoint with its circuit breaker: after FailureThreshold
// consecutive failures, or one request that waited out its deadline while the endpoint
// answered nothing at all, it is down and no request waits on it; a background probe (GET /v2/,
// exponential backoff) brings it back up.
type Endpoint struct {
	registry  string
	client    Client
	opts      Health
	stop      <-chan struct{}
	wake      chan struct{} // probes at once rather than at the next backoff step
	onRequest func(Request)
	// gone is closed when the table forgets the endpoint's registry; nil for a registry it
	// keeps. expire, when not nil, is asked before each probe whether the registry has been
	// forgotten for being idle: the probe then ends.
	gone   <-chan struct{}
	expire func() bool

	mu         sync.Mutex
	up         bool
	since      time.Time
	lastAnswer time.Time // of the last request the endpoint answered (success or not found alike)
	failures   int
	lastErr    string
	probing    bool
}

func newEndpoint(registry string, c Client, opts Health, stop <-chan struct{}) *Endpoint {
	return &Endpoint{registry: registry, client: c, opts: opts, stop: stop, wake: make(chan struct{}, 1), up: true, since: time.Now()}
}

func (e *Endpoint) usable() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.up
}

// observe records the outcome of a request to the endpoint, sent at start.
func (e *Endpoint) observe(ctx context.Context, start time.Time, err error) {
	if err != nil && !IsFailure(err) {
		err = nil // an answer, such as not found: the endpoint works
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil {
		e.failures = 0
		e.lastAnswer = time.Now()
		return
	}
	e.failures++
	e.lastErr = err.Error()
	// A request that waited out its whole deadline while the endpoint answered nothing else
	// (a blackholed registry) means every further client would wait as long: down at once.
	// When other requests were answered meanwhile the endpoint is slow, not gone (a loaded
	// registry), and timeouts count like quick errors (refused, reset, 503), which cost little.
	threshold := e.opts.FailureThreshold
	if errors.Is(err, context.DeadlineExceeded) && e.lastAnswer.Before(start) {
		threshold = 1
	}
	if e.up && e.failures >= threshold {
		e.up = false
		e.since = time.Now()
		log.G(ctx).WithField("registry", e.registry).WithField("endpoint", e.client.Endpoint()).
			WithError(err).Warn("upstream endpoint marked down")
		if !e.probing {
			e.probing = true
			go e.probe()
		}
	}
}

// probe pings the endpoint with exponential backoff until it answers, then marks it up.
func (e *Endpoint) probe() {
	ctx := context.Background()
	wait := e.opts.ProbeInterval
	select {
	case <-e.wake: // a wake-up from before this outage of the endpoint
	default:
	}
	for {
		t := time.NewTimer(wait)
		select {
		case <-e.stop:
			t.Stop()
			return
		case <-e.gone:
			t.Stop()
			e.endProbe()
			return
		case <-e.wake:
			t.Stop()
			wait = e.opts.ProbeInterval
		case <-t.C:
		}
		if e.expire != nil && e.expire() {
			e.endProbe()
			return
		}
		pctx, cancel := context.WithTimeout(ctx, e.opts.ProbeTimeout)
		err := e.client.Ping(pctx)
		cancel()
		e.mu.Lock()
		if err == nil {
			e.up, e.failures, e.probing = true, 0, false
			e.since = time.Now()
			e.lastAnswer = e.since
			e.mu.Unlock()
			log.G(ctx).WithField("registry", e.registry).WithField("endpoint", e.client.Endpoint()).Info("upstream endpoint is up again")
			return
		}
		e.lastErr = err.Error()
		e.mu.Unlock()
		wait = min(2*wait, e.opts.ProbeMaxInterval)
	}
}

// forgotten says whether the table has forgotten the endpoint's registry.
func (e *Endpoint) forgotten() bool {
	select {
	case <-e.gone:
		return true
	default:
		return false
	}
}

// endProbe records that the probe ended without the endpoint coming back.
func (e *Endpoint) endProbe() {
	e.mu.Lock()
	e.probing = false
	e.mu.Unlock()
}

// Name is the endpoint's URL.
func (e *Endpoint) Name() string { return e.client.Endpoint() }

func (e *Endpoint) status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Status{
		Registry: e.registry, Endpoint: e.client.Endpoint(), Up: e.up, Since: e.since,
		LastError: e.lastErr, Failures: e.failures,
	}
}

// errAllDown is returned when no endpoint of a registry is usable.
var errAllDown = errors.New("every upstream endpoint is down")

// Try calls fn on each usable endpoint of eps in order until one answers (succeeds, or fails
// with something other than an endpoint failure), and returns its answer and which endpoint it
// was. It returns the last error otherwise, wrapped as ErrUnavailable when no endpoint was usable
// at all. A failure within ctx's deadline counts against the endpoint's breaker; ctx cancelled
// by the caller does not.
func Try[T any](ctx context.Context, eps []*Endpoint, op string, fn func(context.Context, Client) (T, error)) (T, *Endpoint, error) {
	var zero T
	var lastErr error
	for _, ep := range eps {
		if !ep.usable() {
			continue
		}
		start := time.Now()
		v, err := fn(ctx, ep.client)
		ep.Report(Request{Op: op, Duration: time.Since(start), Err: err})
		if err != nil && ctx.Err() != nil {
			cause := context.Cause(ctx)
			if errors.Is(cause, context.Canceled) {
				return zero, nil, cause // the caller gave up: say nothing about the endpoint
			}
			if !errors.Is(err, cause) {
				err = fmt.Errorf("%w: %w", err, cause) // too slow: a failure of the endpoint
			}
		}
		ep.observe(ctx, start, err)
		if err == nil || !IsFailure(err) {
			return v, ep, err
		}
		lastErr = err
		if ctx.Err() != nil {
			break // the deadline is spent: no time for the next endpoint
		}
	}
	if lastErr == nil {
		// Every endpoint is down: say why, from what each last failed with.
		var why []string
		for _, ep := range eps {
			st := ep.status()
			why = append(why, fmt.Sprintf("%s since %s: %s", st.Endpoint, st.Since.Format(time.RFC3339), st.LastError))
		}
		lastErr = fmt.Errorf("%w (%s)", errAllDown, strings.Join(why, "; "))
	}
	if !errdefs.IsUnavailable(lastErr) {
		lastErr = fmt.Errorf("%w: %w", lastErr, errdefs.ErrUnavailable)
	}
	return zero, nil, lastErr
}
