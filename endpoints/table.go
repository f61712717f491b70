// Package endpoints is the table of the registries lifeboat mirrors, each with its upstream
// endpoints and their health: a circuit breaker per endpoint, probed back up in the background,
// and Try, which asks a registry's usable endpoints in order. It knows nothing of caching; the
// clients it holds come from package upstream, through Options.NewClient.
package endpoints

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// Bounds of the registries mirrored with Options.AnyRegistry that are not listed.
const (
	// DefaultMaxOtherRegistries is how many unlisted registries are kept at once; a new one
	// makes the table forget the least recently used.
	DefaultMaxOtherRegistries = 64
	// DefaultOtherRegistryIdle is how long an unlisted registry may go unasked before the probe
	// of a down endpoint of it forgets the registry rather than probe on.
	DefaultOtherRegistryIdle = 10 * time.Minute
)

// Options configure a Table.
type Options struct {
	// Endpoints lists the endpoint URLs of registries, tried in order. Each registry named here
	// is mirrored.
	Endpoints map[string][]string
	// Registries are mirrored too, with oci.DefaultEndpoints unless Endpoints lists theirs. A
	// registry in neither is refused with ErrNotMirrored before any upstream is contacted.
	Registries []string
	// AnyRegistry mirrors every registry asked for, listed or not, with oci.DefaultEndpoints for
	// those not listed. At most MaxOtherRegistries unlisted registries (default
	// DefaultMaxOtherRegistries) are kept at once, the least recently used forgotten first; one
	// unasked for OtherRegistryIdle (default DefaultOtherRegistryIdle) is forgotten by the probe
	// of its down endpoints, which then ends.
	AnyRegistry        bool
	MaxOtherRegistries int
	OtherRegistryIdle  time.Duration
	// Forget, when set, is called for each endpoint of an unlisted registry the table forgets,
	// so that what the metrics keep by registry and endpoint can go too.
	Forget func(registry, endpoint string)
	// NewClient makes the client of one endpoint of a registry.
	NewClient func(registry, endpoint string) (Client, error)
	// Health tunes the circuit breakers.
	Health Health
	// Observe, when set, is called after every request to an endpoint (for metrics).
	Observe func(Request)
}

// Table is the registries in use, each with its endpoints. Safe for concurrent use.
type Table struct {
	opts   Options
	listed map[string][]string // the registries mirrored, with their endpoint URLs
	stop   chan struct{}       // closed by Close: the probes end

	mu         sync.Mutex
	registries map[string]*registryEndpoints // in use
	closed     bool
}

// New returns the table opts describe, with the endpoints of the listed registries that name
// theirs made at once (the others are made on first use). Close it to stop its probes.
// Errors: errdefs.ErrInvalidArgument for a malformed registry name or a missing NewClient;
// NewClient's.
func New(opts Options) (*Table, error) {
	if opts.NewClient == nil {
		return nil, fmt.Errorf("the endpoints need a client factory: %w", errdefs.ErrInvalidArgument)
	}
	if opts.MaxOtherRegistries <= 0 {
		opts.MaxOtherRegistries = DefaultMaxOtherRegistries
	}
	if opts.OtherRegistryIdle <= 0 {
		opts.OtherRegistryIdle = DefaultOtherRegistryIdle
	}
	opts.Health.setDefaults()
	listed, err := listRegistries(opts)
	if err != nil {
		return nil, err
	}
	t := &Table{opts: opts, listed: listed, stop: make(chan struct{}), registries: map[string]*registryEndpoints{}}
	for registry, urls := range listed {
		if len(urls) == 0 {
			continue // a registry with the default endpoints: created on first use
		}
		if _, err := t.Get(registry); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// Close stops the probes. Requests that hold endpoints finish with them; Get refuses new ones.
func (t *Table) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		close(t.stop)
	}
}

// ErrNotMirrored says a request named a registry the table does not mirror: one neither in
// Options.Registries nor in Options.Endpoints, without Options.AnyRegistry. Nothing was asked
// of any upstream. errors.Is(err, ErrNotMirrored) and errdefs.IsNotFound(err) both hold.
var ErrNotMirrored = errors.New("registry is not mirrored")

// notMirroredError is ErrNotMirrored for one registry.
type notMirroredError struct{ registry string }

func (e notMirroredError) Error() string {
	return "registry " + e.registry + " is not mirrored by this lifeboat"
}

func (e notMirroredError) Is(target error) bool {
	return target == ErrNotMirrored || target == errdefs.ErrNotFound
}

// registryEndpoints are the endpoints of one registry in use, with what it takes to forget them.
type registryEndpoints struct {
	name   string
	eps    []*Endpoint
	listed bool          // in Options.Registries or Options.Endpoints: never forgotten
	used   time.Time     // last looked up; under the table's lock
	gone   chan struct{} // closed when the registry is forgotten: its probes end
}

// listRegistries returns the registries opts names, normalized, each with its endpoint URLs
// (nil for oci.DefaultEndpoints).
func listRegistries(opts Options) (map[string][]string, error) {
	listed := map[string][]string{}
	add := func(name string, urls []string) error {
		reg, ok := oci.NormalizeHost(name)
		if !ok {
			return fmt.Errorf("invalid registry name %q: %w", name, errdefs.ErrInvalidArgument)
		}
		if len(urls) > 0 || listed[reg] == nil {
			listed[reg] = urls
		}
		return nil
	}
	for _, name := range opts.Registries {
		if err := add(name, nil); err != nil {
			return nil, err
		}
	}
	for name, urls := range opts.Endpoints {
		if err := add(name, urls); err != nil {
			return nil, err
		}
	}
	return listed, nil
}

// ProbeNow makes every down endpoint probe its upstream at once, as when a simulated outage
// ends, instead of at the next step of its backoff.
func (t *Table) ProbeNow() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, reg := range t.registries {
		for _, ep := range reg.eps {
			select {
			case ep.wake <- struct{}{}:
			default:
			}
		}
	}
}

// Statuses reports the health of every endpoint in use.
func (t *Table) Statuses() []Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Status
	for _, reg := range t.registries {
		for _, ep := range reg.eps {
			out = append(out, ep.status())
		}
	}
	slices.SortFunc(out, func(a, b Status) int {
		return strings.Compare(a.Registry+" "+a.Endpoint, b.Registry+" "+b.Endpoint)
	})
	return out
}

// Get returns the registry's endpoints, creating them on first use. A registry the table does
// not mirror is refused (ErrNotMirrored) before anything is created for it; a malformed name is
// errdefs.ErrInvalidArgument.
func (t *Table) Get(registry string) ([]*Endpoint, error) {
	if !oci.ValidHost(registry) {
		return nil, fmt.Errorf("invalid registry name %q: %w", registry, errdefs.ErrInvalidArgument)
	}
	urls, listed := t.listed[registry]
	if !listed && !t.opts.AnyRegistry {
		return nil, notMirroredError{registry}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if reg, ok := t.registries[registry]; ok {
		reg.used = time.Now()
		return reg.eps, nil
	}
	if t.closed {
		return nil, fmt.Errorf("registry %s: lifeboat is shutting down: %w", registry, errdefs.ErrUnavailable)
	}
	if len(urls) == 0 {
		urls = oci.DefaultEndpoints(registry)
	}
	reg := &registryEndpoints{name: registry, listed: listed, used: time.Now(), gone: make(chan struct{})}
	for _, u := range urls {
		c, err := t.opts.NewClient(registry, u)
		if err != nil {
			return nil, fmt.Errorf("registry %s endpoint %s: %w", registry, u, err)
		}
		ep := newEndpoint(registry, c, t.opts.Health, t.stop)
		ep.onRequest = t.opts.Observe
		if !listed {
			ep.gone = reg.gone
			ep.expire = func() bool { return t.forgetIdle(reg) }
		}
		reg.eps = append(reg.eps, ep)
	}
	if !listed {
		t.makeRoomLocked()
	}
	t.registries[registry] = reg
	return reg.eps, nil
}

// makeRoomLocked forgets the least recently used unlisted registries until there is room for
// one more. The caller holds the table's lock.
func (t *Table) makeRoomLocked() {
	for {
		var oldest *registryEndpoints
		n := 0
		for _, reg := range t.registries {
			if reg.listed {
				continue
			}
			n++
			if oldest == nil || reg.used.Before(oldest.used) {
				oldest = reg
			}
		}
		if n < t.opts.MaxOtherRegistries {
			return
		}
		t.forgetLocked(oldest)
	}
}

// forgetIdle forgets reg if it has gone unasked for Options.OtherRegistryIdle, and says
// whether it is forgotten. The probes of its down endpoints call it before each attempt.
func (t *Table) forgetIdle(reg *registryEndpoints) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.registries[reg.name] != reg {
		return true // forgotten already
	}
	if time.Since(reg.used) < t.opts.OtherRegistryIdle {
		return false
	}
	t.forgetLocked(reg)
	return true
}

// forgetLocked drops reg: its status entries go, its probes end, its idle connections close,
// and Options.Forget drops what the metrics keep of its endpoints. Requests and fills that hold
// its endpoints finish with them. The caller holds the table's lock.
func (t *Table) forgetLocked(reg *registryEndpoints) {
	delete(t.registries, reg.name)
	close(reg.gone)
	for _, ep := range reg.eps {
		if c, ok := ep.client.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
		if t.opts.Forget != nil {
			t.opts.Forget(reg.name, ep.client.Endpoint())
		}
	}
}
