package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Open opens the cache in cfg.Root and builds the daemon's parts over it, for a command that
// works on the cache while the daemon is not running: no address is claimed, nothing is
// fetched from an upstream (a fetch fails with errdefs.ErrUnavailable), no outage is in force,
// and hosts.toml files are left as they are. Its Admin service is complete. The caller closes
// it with Close. An error from cache.Open is returned as it is: errdefs.ErrUnavailable when a
// running daemon holds the root.
func Open(ctx context.Context, cfg config.Config, opts Options) (*Daemon, error) {
	store, err := cache.Open(ctx, cfg.Root, cache.Options{MaxSize: int64(cfg.Cache.MaxSize)})
	if err != nil {
		return nil, err
	}
	res, err := resolver.New(ctx, store, resolver.Options{
		Registries:  cfg.MirroredRegistries(),
		AnyRegistry: cfg.Mirror.AnyRegistry,
		NewClient: func(registry, _ string) (endpoints.Client, error) {
			return nil, fmt.Errorf("%s: the daemon is not running, nothing is fetched: %w", registry, errdefs.ErrUnavailable)
		},
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	d := &Daemon{cfg: cfg, opts: opts, Store: store, Resolver: res, Outage: outage.New()}
	d.Admin = &admin.Service{
		Version: opts.Version, StartedAt: time.Now(), Store: store, Resolver: res, Outage: d.Outage,
		Listeners: map[string]string{},
	}
	return d, nil
}

// Close closes a daemon from Open: the resolver, then the cache.
func (d *Daemon) Close() error {
	d.Resolver.Close()
	return d.Store.Close()
}
