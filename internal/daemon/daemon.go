// Package daemon assembles lifeboat: the cache, the resolver with its upstream clients and
// outage simulator, the admin service, and the servers in front of them (registry mirror,
// containerd proxy plugins, admin API, metrics). Every entry point builds its daemon here:
// `lifeboat serve` and the demo with New, the commands that work on a cache without the
// daemon with Open.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/serving"
	"github.com/lifeboat-dev/lifeboat/metrics"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/peer"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Options are what the configuration file does not say.
type Options struct {
	// Version is the version Status reports and upstream requests carry in their User-Agent.
	Version string
	// Grace bounds how long the requests in flight may take to finish once Run's context ends.
	Grace time.Duration
	// MirrorOnly serves the registry mirror alone, for a daemon inside another program (the
	// demo): no plugin or admin socket, no metrics, no word to systemd.
	MirrorOnly bool
}

// Daemon is an assembled lifeboat. Its parts are exported for the programs that embed one;
// they are closed by Run (or, for a daemon from Open, by Close), the cache last.
type Daemon struct {
	Store    *cache.Store
	Resolver *resolver.Resolver
	Outage   *outage.Simulator
	Admin    *admin.Service
	// Cluster and Peers are the cluster tier, nil unless [cluster] join is set.
	Cluster *cluster.Node
	Peers   *peer.Source

	cfg     config.Config
	opts    Options
	lns     *listeners // nil for Open
	plugins *pluginServer
	reg     *prometheus.Registry
	answers *metrics.Mirror
	left    bool // leaveCluster ran

	// mirrorAPI and peerAPI are the handlers of the mirror and of the peer listener (nil
	// without a cluster), built by New.
	mirrorAPI, peerAPI http.Handler
	// budget is the waits on peers, the resolver's included, from [resolve] upstream_timeout.
	budget peer.Budget
}

// New claims every address of cfg, opens the cache in cfg.Root and builds the daemon over it,
// ready for Run. cfg is valid (config.Config.Validate). Every address is claimed before
// anything is created: a port or socket that is taken stops New with nothing left behind, and
// so does any later failure.
func New(ctx context.Context, cfg config.Config, opts Options) (d *Daemon, err error) {
	var bootOutage *outage.Spec
	if cfg.Outage.Mode != "" {
		spec := cfg.Outage.Spec()
		if err := spec.Validate(); err != nil {
			return nil, fmt.Errorf("cannot simulate the outage [outage] asks for: %w", err)
		}
		bootOutage = &spec
	}
	var secret []byte
	if cfg.Cluster.Enabled() && !opts.MirrorOnly {
		if secret, err = cluster.LoadSecret(cfg.Cluster.SecretFile); err != nil {
			return nil, fmt.Errorf("cannot start the cluster tier: [cluster] secret_file: %w", err)
		}
	}

	// undo removes what New created when it fails; Run takes it over.
	var undo undoList
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	lns, err := listenAll(cfg, opts.MirrorOnly, &undo)
	if err != nil {
		return nil, err
	}

	if !opts.MirrorOnly {
		notify(ctx, "STATUS=opening the cache in "+cfg.Root)
	}
	undo.removeCreated(cfg.Root)
	d = &Daemon{cfg: cfg, opts: opts, lns: lns, reg: prometheus.NewRegistry(), Outage: outage.New()}
	if err := d.open(ctx, &undo, secret); err != nil {
		return nil, err
	}
	used, budget := d.Store.Usage()
	log.G(ctx).WithField("root", cfg.Root).WithField("used", used).WithField("budget", budget).Info("cache open")

	// The addresses as listened on: with port 0, the port given.
	mirrorAddr, metricsAddr := lns.mirror.Addr().String(), ""
	if lns.metrics != nil {
		metricsAddr = lns.metrics.Addr().String()
	}
	d.Admin = &admin.Service{
		Version: opts.Version, StartedAt: time.Now(), Store: d.Store, Resolver: d.Resolver, Outage: d.Outage,
		MirrorURL: "http://" + mirrorAddr,
		Listeners: map[string]string{"mirror": mirrorAddr, "plugin": cfg.Plugin.Address, "admin": cfg.Admin.Address, "metrics": metricsAddr},
		Upstreams: configuredUpstreams(cfg),
	}
	if opts.MirrorOnly {
		d.Admin.Listeners = map[string]string{"mirror": mirrorAddr}
	}
	if d.Cluster != nil {
		d.Admin.Listeners["peer"] = lns.peer.Addr().String()
		d.Admin.Listeners["gossip"] = cfg.Cluster.GossipAddress
		d.Admin.Cluster, d.Admin.Peers = d.Cluster, d.Peers
	}
	if err := d.Admin.Init(ctx); err != nil {
		return nil, err
	}
	if bootOutage != nil {
		if _, err := d.Outage.Start(ctx, *bootOutage); err != nil {
			return nil, fmt.Errorf("cannot simulate the outage [outage] asks for: %w", err)
		}
	}
	if !opts.MirrorOnly {
		if d.plugins, err = newPluginServer(cfg, d.Store, d.Resolver); err != nil {
			return nil, err
		}
		undo.add(func() { d.plugins.sn.Close() })
	}

	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewCacheCollector(d.Store), metrics.NewUpstreamCollector(d.Resolver), metrics.NewOutageCollector(d.Outage))
	if d.Cluster != nil {
		d.reg.MustRegister(metrics.NewClusterCollector(d.Cluster, d.Peers, d.Resolver), metrics.NewGossipCollector(d.Cluster))
	}
	d.answers = metrics.NewMirror(d.reg)
	d.Admin.Answers = d.answers.Answers
	if d.mirrorAPI, err = mirror.New(d.Resolver, mirror.Options{Observe: d.answers.Observe}); err != nil {
		return nil, err
	}
	if d.Cluster != nil {
		if d.peerAPI, err = d.peerHandler(); err != nil {
			return nil, err
		}
	}
	// Run owns the listeners and the parts now, and the root is the cache's.
	undo = nil
	return d, nil
}

// open opens the cache, joins the cluster when [cluster] join is set (secret is its key), and
// builds the resolver over them, with one upstream client per configured endpoint behind the
// outage simulator; undo learns to close them.
func (d *Daemon) open(ctx context.Context, undo *undoList, secret []byte) error {
	store, err := cache.Open(ctx, d.cfg.Root, cache.Options{MaxSize: int64(d.cfg.Cache.MaxSize)})
	if err != nil {
		if errdefs.IsUnavailable(err) {
			return fmt.Errorf("cannot start: the data root %s is in use by another lifeboat process", d.cfg.Root)
		}
		return fmt.Errorf("cannot open the cache in %s: %w", d.cfg.Root, err)
	}
	undo.add(func() { d.closeStore(ctx) })
	d.Store = store
	// The waits on peers, the resolver's included, all come from one budget.
	d.budget = peer.NewBudget(time.Duration(d.cfg.Resolve.UpstreamTimeout))
	budget := d.budget
	var peers resolver.Peers // a nil *peer.Source would not be a nil Peers
	if d.lns != nil && d.lns.peer != nil {
		node, source, err := d.startCluster(ctx, secret, d.lns.peer, budget)
		if err != nil {
			return err
		}
		undo.add(func() { d.leaveCluster(ctx) })
		d.Cluster, d.Peers, peers = node, source, source
	}
	upstreamMetrics := metrics.NewUpstream(d.reg)
	res, err := newResolver(ctx, store, d.cfg, d.opts.Version, d.Outage, upstreamMetrics, peers, budget.PeerWait)
	if err != nil {
		return err
	}
	undo.add(func() { res.Close() })
	d.Resolver = res
	return nil
}

// MirrorAddr is the address the registry mirror listens on ("127.0.0.1:5100"), with the port
// given when the configuration asked for port 0.
func (d *Daemon) MirrorAddr() string { return d.lns.mirror.Addr().String() }

// Run serves until ctx ends, then stops accepting, lets the requests in flight finish for up to
// Options.Grace, cancels those still running, and closes the daemon's parts once none is left:
// the cache last, or not at all if a request would not end. A stop is not an error, even one
// that cut requests. Run is called once, after New.
func (d *Daemon) Run(ctx context.Context) error {
	grace := d.opts.Grace
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHTTP(gctx, "registry mirror", d.lns.mirror, d.mirrorAPI, grace) })
	if d.lns.metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
		if d.cfg.Metrics.Pprof {
			handlePprof(mux)
		}
		g.Go(func() error { return serveHTTP(gctx, "metrics", d.lns.metrics, mux, grace) })
	}
	if d.lns.admin != nil {
		g.Go(func() error { return serveHTTP(gctx, "admin API", d.lns.admin, admin.Handler(d.Admin), grace) })
	}
	if d.plugins != nil {
		g.Go(func() error { return d.plugins.run(gctx, d.lns.plugin, grace) })
	}
	if d.Cluster != nil {
		g.Go(func() error {
			return serveHTTP(gctx, "cluster peer listener", d.Cluster.Listener(d.lns.peer), d.peerAPI, grace)
		})
	}
	log.G(ctx).Info("lifeboat is running")
	if !d.opts.MirrorOnly {
		// Every listener is open and the cache is recovered: a Type=notify unit counts as
		// started only now, so units ordered after lifeboat (containerd) find it answering.
		notify(ctx, fmt.Sprintf("READY=1\nSTATUS=serving the mirror on %s and the proxy plugins on %s", d.cfg.Mirror.Address, d.cfg.Plugin.Address))
		g.Go(func() error {
			<-gctx.Done()
			notify(ctx, "STOPPING=1\nSTATUS=stopping: draining in-flight requests")
			return nil
		})
	}
	err := g.Wait()
	// The servers closed their listeners (and the plugin server its snapshotter); this node
	// leaves the cluster, so that the others stop asking it; the cache is closed last, once no
	// server, request or fill uses it; not at all if a request would not end.
	d.leaveCluster(ctx)
	d.Resolver.Close()
	if errors.Is(err, serving.ErrHandlersRunning) {
		log.G(ctx).Error("leaving the cache open: requests still use it; the next start recovers it")
	} else {
		d.closeStore(ctx)
	}
	log.G(ctx).Info("lifeboat stopped")
	return err
}

// leaveCluster leaves the cluster, if this node is in one, once.
func (d *Daemon) leaveCluster(ctx context.Context) {
	if d.Cluster == nil || d.left {
		return
	}
	d.left = true
	d.Peers.Close() // the probes of peers that are down
	if err := d.Cluster.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("leaving the cluster")
	}
}

func (d *Daemon) closeStore(ctx context.Context) {
	if err := d.Store.Close(); err != nil {
		log.G(ctx).WithError(err).Error("closing the cache")
	}
}
