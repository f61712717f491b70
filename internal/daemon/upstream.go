package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/metrics"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// newResolver builds the resolver with one upstream client per configured endpoint, sending
// version in its User-Agent. um, when not nil, sees every upstream request and drops the series
// of the endpoints the resolver forgets (for metrics).
// peers is the cluster tier, nil for a single node; peerWait bounds a fill's wait for them
// (peer.Budget's PeerWait).
func newResolver(ctx context.Context, store *cache.Store, cfg config.Config, version string, sim *outage.Simulator, um *metrics.Upstream, peers resolver.Peers, peerWait time.Duration) (*resolver.Resolver, error) {
	var observe func(endpoints.Request)
	var forget func(registry, endpoint string)
	if um != nil {
		observe, forget = um.Observe, um.Forget
	}
	urls := map[string][]string{}
	for host, r := range cfg.Registry {
		if len(r.Endpoints) > 0 {
			urls[host] = r.Endpoints
		}
	}
	newClient := func(registry, endpoint string) (endpoints.Client, error) {
		rc := cfg.Registry[registry]
		opts := upstream.Options{
			Username: rc.Username, Password: rc.Password, DockerConfig: cfg.Auth.DockerConfig,
			CAFile: rc.CAFile, InsecureSkipVerify: rc.InsecureSkipVerify, UserAgent: "lifeboat/" + version,
		}
		base, err := upstream.NewTransport(opts)
		if err != nil {
			return nil, err
		}
		// The outage simulator sits inside the upstream transport, so that simulated failures
		// meet the breaker and stale serving exactly as real ones do.
		opts.Transport = sim.Wrap(registry, base)
		return upstream.New(registry, endpoint, opts)
	}
	res, err := resolver.New(ctx, store, resolver.Options{
		Policy:          cfg.Resolve.Policy,
		TagMaxAge:       time.Duration(cfg.Resolve.TagMaxAge),
		UpstreamTimeout: time.Duration(cfg.Resolve.UpstreamTimeout),
		Endpoints:       urls,
		NewClient:       newClient,
		ObserveUpstream: observe,
		ForgetUpstream:  forget,
		Registries:      cfg.MirroredRegistries(),
		AnyRegistry:     cfg.Mirror.AnyRegistry,
		OnDenied:        cfg.Resolve.OnDenied,
		Peers:           peers,
		PeerWait:        peerWait,
		NotShared:       cfg.NotShared(),

		MaxBlobSize:       int64(cfg.Cache.MaxBlobSize),
		VerifyBeforeSend:  verifyBeforeSend(cfg.Cache.VerifyBeforeSend),
		MaxFills:          cfg.Resolve.MaxFills,
		FillQueueTimeout:  time.Duration(cfg.Resolve.FillQueueTimeout),
		MaxAbandonedFills: cfg.Resolve.MaxAbandonedFills,
	})
	if err != nil {
		return nil, fmt.Errorf("upstream registries: %w", err)
	}
	return res, nil
}

// configuredUpstreams are the registries lifeboat mirrors ([mirror] registries and the
// [registry] tables), with their endpoints, for status.
func configuredUpstreams(cfg config.Config) map[string][]string {
	ups := map[string][]string{}
	for _, host := range cfg.MirroredRegistries() {
		ups[host] = oci.DefaultEndpoints(host)
		if r := cfg.Registry[host]; len(r.Endpoints) > 0 {
			ups[host] = r.Endpoints
		}
	}
	return ups
}

// verifyBeforeSend is [cache] verify_before_send as resolver.Options has it: "0" (no blob held
// whole) is negative there, where 0 means the default.
func verifyBeforeSend(v config.Size) int64 {
	if v == 0 {
		return -1
	}
	return int64(v)
}
