package resolver

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// Bounds of the registries mirrored with Options.AnyRegistry that are not listed.
const (
	// DefaultMaxOtherRegistries is how many unlisted registries are kept at once; a new one
	// makes the resolver forget the least recently used.
	DefaultMaxOtherRegistries = 64
	// DefaultOtherRegistryIdle is how long an unlisted registry may go unasked before the probe
	// of a down endpoint of it forgets the registry rather than probe on.
	DefaultOtherRegistryIdle = 10 * time.Minute
)

// ErrNotMirrored says a request named a registry the resolver does not mirror: one neither in
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
	eps    []*endpoint
	listed bool          // in Options.Registries or Options.Endpoints: never forgotten
	used   time.Time     // last looked up; under regMu
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
func (r *Resolver) ProbeNow() {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	for _, reg := range r.registries {
		for _, ep := range reg.eps {
			select {
			case ep.wake <- struct{}{}:
			default:
			}
		}
	}
}

// Endpoints reports the health of every endpoint in use.
func (r *Resolver) Endpoints() []EndpointStatus {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	var out []EndpointStatus
	for _, reg := range r.registries {
		for _, ep := range reg.eps {
			out = append(out, ep.status())
		}
	}
	slices.SortFunc(out, func(a, b EndpointStatus) int {
		return strings.Compare(a.Registry+" "+a.Endpoint, b.Registry+" "+b.Endpoint)
	})
	return out
}

// endpoints returns the registry's endpoints, creating them on first use. A registry the
// resolver does not mirror is refused (ErrNotMirrored) before anything is created for it.
func (r *Resolver) endpoints(registry string) ([]*endpoint, error) {
	if !oci.ValidHost(registry) {
		return nil, fmt.Errorf("invalid registry name %q: %w", registry, errdefs.ErrInvalidArgument)
	}
	urls, listed := r.listed[registry]
	if !listed && !r.opts.AnyRegistry {
		return nil, notMirroredError{registry}
	}
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if reg, ok := r.registries[registry]; ok {
		reg.used = time.Now()
		return reg.eps, nil
	}
	if r.closed {
		return nil, fmt.Errorf("registry %s: the resolver is closed: %w", registry, errdefs.ErrUnavailable)
	}
	if len(urls) == 0 {
		urls = oci.DefaultEndpoints(registry)
	}
	reg := &registryEndpoints{name: registry, listed: listed, used: time.Now(), gone: make(chan struct{})}
	for _, u := range urls {
		c, err := r.opts.NewClient(registry, u)
		if err != nil {
			return nil, fmt.Errorf("registry %s endpoint %s: %w", registry, u, err)
		}
		ep := newEndpoint(registry, c, r.opts.Health, r.stop)
		ep.onRequest = r.opts.ObserveUpstream
		if !listed {
			ep.gone = reg.gone
			ep.expire = func() bool { return r.forgetIdle(reg) }
		}
		reg.eps = append(reg.eps, ep)
	}
	if !listed {
		r.makeRoomLocked()
	}
	r.registries[registry] = reg
	return reg.eps, nil
}

// makeRoomLocked forgets the least recently used unlisted registries until there is room for
// one more. The caller holds regMu.
func (r *Resolver) makeRoomLocked() {
	for {
		var oldest *registryEndpoints
		n := 0
		for _, reg := range r.registries {
			if reg.listed {
				continue
			}
			n++
			if oldest == nil || reg.used.Before(oldest.used) {
				oldest = reg
			}
		}
		if n < r.opts.MaxOtherRegistries {
			return
		}
		r.forgetLocked(oldest)
	}
}

// forgetIdle forgets reg if it has gone unasked for Options.OtherRegistryIdle, and says
// whether it is forgotten. The probes of its down endpoints call it before each attempt.
func (r *Resolver) forgetIdle(reg *registryEndpoints) bool {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.registries[reg.name] != reg {
		return true // forgotten already
	}
	if time.Since(reg.used) < r.opts.OtherRegistryIdle {
		return false
	}
	r.forgetLocked(reg)
	return true
}

// forgetLocked drops reg: its status entries go, its probes end, its idle connections close,
// and Options.ForgetUpstream drops what the metrics keep of its endpoints. Requests and fills
// that hold its endpoints finish with them. The caller holds regMu.
func (r *Resolver) forgetLocked(reg *registryEndpoints) {
	delete(r.registries, reg.name)
	close(reg.gone)
	for _, ep := range reg.eps {
		if c, ok := ep.client.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
		if r.opts.ForgetUpstream != nil {
			r.opts.ForgetUpstream(reg.name, ep.client.Endpoint())
		}
	}
}
