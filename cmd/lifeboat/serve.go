package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/metrics"
	pcontent "github.com/lifeboat-dev/lifeboat/plugin/content"
	"github.com/lifeboat-dev/lifeboat/plugin/mirror"
	psnapshot "github.com/lifeboat-dev/lifeboat/plugin/snapshot"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/resolver/outage"
	"github.com/lifeboat-dev/lifeboat/resolver/upstream"
)

// shutdownGrace bounds how long in-flight requests may take to finish on SIGTERM.
const shutdownGrace = 10 * time.Second

type serveFlags struct {
	configPath     string
	root           string
	listen         string
	socket         string
	adminSocket    string
	metricsAddress string
	logLevel       string
	logFormat      string
	simulate       string
}

func newServeCommand() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the lifeboat daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadServeConfig(cmd, f)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.configPath, "config", config.DefaultPath, "configuration file")
	fl.StringVar(&f.root, "root", "", "data directory (default from config: /var/lib/lifeboat)")
	fl.StringVar(&f.listen, "listen", "", "registry mirror address (default 127.0.0.1:5100)")
	fl.StringVar(&f.socket, "socket", "", "containerd proxy plugin socket (default /run/lifeboat/lifeboat.sock)")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "admin socket for the lifeboat CLI (default /run/lifeboat/admin.sock)")
	fl.StringVar(&f.metricsAddress, "metrics-address", "", "Prometheus metrics address, empty string to disable (default 127.0.0.1:5101)")
	fl.StringVar(&f.logLevel, "log-level", "", "log level: trace, debug, info, warn, error (default info)")
	fl.StringVar(&f.logFormat, "log-format", "", "log format: text or json (default text)")
	fl.StringVar(&f.simulate, "simulate-outage", "", "start with a simulated upstream outage of this `mode` (dns, refused, blackhole, reset, http-<status>, slow, flaky)")
	return cmd
}

// loadServeConfig reads the config file and applies the flags that were set on top of it.
//
// Each flag also has an environment variable, LIFEBOAT_ and the flag's name in capitals with
// underscores (LIFEBOAT_ROOT, LIFEBOAT_LISTEN, LIFEBOAT_CONFIG, ...): a flag wins over its
// variable, which wins over the config file, which wins over the defaults.
func loadServeConfig(cmd *cobra.Command, f serveFlags) (config.Config, error) {
	explicit := cmd.Flags().Changed("config")
	if v, ok := os.LookupEnv(envName("config")); ok && !explicit {
		f.configPath, explicit = v, true
	}
	cfg, err := config.Load(f.configPath, explicit)
	if err != nil {
		return cfg, err
	}
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		} else if ev, ok := os.LookupEnv(envName(name)); ok {
			*dst = ev
		}
	}
	set("root", &cfg.Root, f.root)
	set("listen", &cfg.Mirror.Address, f.listen)
	set("socket", &cfg.Plugin.Address, f.socket)
	set("admin-socket", &cfg.Admin.Address, f.adminSocket)
	set("metrics-address", &cfg.Metrics.Address, f.metricsAddress)
	set("log-level", &cfg.Log.Level, f.logLevel)
	set("log-format", &cfg.Log.Format, f.logFormat)
	set("simulate-outage", &cfg.Outage.Mode, f.simulate)
	return cfg, cfg.Validate()
}

// envName is the environment variable of a serve flag: "metrics-address" → LIFEBOAT_METRICS_ADDRESS.
func envName(flag string) string {
	return "LIFEBOAT_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func setupLogging(cfg config.Log) error {
	if err := log.SetLevel(cfg.Level); err != nil {
		return fmt.Errorf("log level %q: %w", cfg.Level, errUsage)
	}
	format := log.TextFormat
	if cfg.Format == "json" {
		format = log.JSONFormat
	}
	return log.SetFormat(format)
}

// serve runs the daemon until ctx is cancelled (SIGINT or SIGTERM), then stops accepting,
// drains in-flight requests for up to shutdownGrace, and closes the cache.
func serve(ctx context.Context, cfg config.Config) error {
	if err := setupLogging(cfg.Log); err != nil {
		return err
	}
	var bootOutage *outage.Spec
	if cfg.Outage.Mode != "" {
		spec := outage.Spec{Mode: cfg.Outage.Mode, Registries: cfg.Outage.Registries, For: time.Duration(cfg.Outage.For)}
		if err := spec.Validate(); err != nil {
			return fmt.Errorf("outage simulation from the configuration: %w", err)
		}
		bootOutage = &spec
	}
	notify(ctx, "STATUS=opening the cache in "+cfg.Root)
	store, err := cache.Open(ctx, cfg.Root, cache.Options{MaxSize: int64(cfg.Cache.MaxSize)})
	if err != nil {
		if errdefs.IsUnavailable(err) {
			return fmt.Errorf("cannot start: the data root %s is in use by another lifeboat process", cfg.Root)
		}
		return fmt.Errorf("cannot open the cache in %s: %w", cfg.Root, err)
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.G(ctx).WithError(err).Error("closing the cache")
		}
	}()
	used, budget := store.Usage()
	log.G(ctx).WithField("root", cfg.Root).WithField("used", used).WithField("budget", budget).Info("cache open")

	sim := outage.New()
	reg := prometheus.NewRegistry()
	upstreamMetrics := metrics.NewUpstream(reg)
	res, err := newResolver(store, cfg, sim, upstreamMetrics.Observe)
	if err != nil {
		return err
	}
	defer res.Close()

	adminLn, err := admin.Listen(cfg.Admin.Address)
	if err != nil {
		return fmt.Errorf("cannot start: admin socket: %w", err)
	}
	svc := &admin.Service{
		Version: version, StartedAt: time.Now(), Store: store, Resolver: res, Outage: sim,
		MirrorURL: "http://" + cfg.Mirror.Address,
		Listeners: map[string]string{"mirror": cfg.Mirror.Address, "admin": cfg.Admin.Address, "metrics": cfg.Metrics.Address},
	}
	if err := svc.Init(ctx); err != nil {
		adminLn.Close()
		return err
	}
	if bootOutage != nil {
		if _, err := sim.Start(ctx, *bootOutage); err != nil {
			adminLn.Close()
			return fmt.Errorf("outage simulation from the configuration: %w", err)
		}
	}

	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewCacheCollector(store), metrics.NewUpstreamCollector(res), metrics.NewOutageCollector(sim))

	g, ctx := errgroup.WithContext(ctx)
	mirrorMetrics := metrics.NewMirror(reg)
	svc.Answers = mirrorMetrics.Answers
	if err := serveHTTP(ctx, g, "registry mirror", cfg.Mirror.Address, mirror.New(mirror.FromResolver(res), mirror.Options{Observe: mirrorMetrics.Observe})); err != nil {
		return err
	}
	if cfg.Metrics.Address != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if err := serveHTTP(ctx, g, "metrics", cfg.Metrics.Address, mux); err != nil {
			return err
		}
	}
	g.Go(func() error { return admin.Serve(ctx, adminLn, svc) })
	if err := servePlugins(ctx, g, cfg, store, res); err != nil {
		return err
	}
	log.G(ctx).Info("lifeboat is running")
	// Every listener is open and the cache is recovered: a Type=notify unit counts as started
	// only now, so units ordered after lifeboat (containerd) find it answering.
	notify(ctx, fmt.Sprintf("READY=1\nSTATUS=serving the mirror on %s and the proxy plugins on %s", cfg.Mirror.Address, cfg.Plugin.Address))
	g.Go(func() error {
		<-ctx.Done()
		notify(ctx, "STOPPING=1\nSTATUS=stopping: draining in-flight requests")
		return nil
	})
	err = g.Wait()
	log.G(ctx).Info("lifeboat stopped")
	return err
}

// notify sends state to systemd's notification socket ($NOTIFY_SOCKET, set for Type=notify
// units); outside systemd it does nothing.
func notify(ctx context.Context, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.G(ctx).WithError(err).Warn("cannot notify systemd of lifeboat's state")
	}
}

// serveHTTP listens on addr at once (so a taken port fails start-up with a clear error) and
// serves h until ctx ends, then shuts down gracefully.
func serveHTTP(ctx context.Context, g *errgroup.Group, name, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen for %s on %s: %w", name, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	log.G(ctx).WithField("address", ln.Addr().String()).Infof("serving %s", name)
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s server: %w", name, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return nil
}

// newResolver builds the resolver with one upstream client per configured endpoint.
// observe, when not nil, sees every upstream request (for metrics).
func newResolver(store *cache.Store, cfg config.Config, sim *outage.Simulator, observe func(resolver.UpstreamRequest)) (*resolver.Resolver, error) {
	endpoints := map[string][]string{}
	for host, r := range cfg.Registry {
		if len(r.Endpoints) > 0 {
			endpoints[host] = r.Endpoints
		}
	}
	newClient := func(registry, endpoint string) (resolver.Client, error) {
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
	res, err := resolver.New(store, resolver.Options{
		Policy:          cfg.Resolve.Policy,
		TagMaxAge:       time.Duration(cfg.Resolve.TagMaxAge),
		UpstreamTimeout: time.Duration(cfg.Resolve.UpstreamTimeout),
		Endpoints:       endpoints,
		NewClient:       newClient,
		ObserveUpstream: observe,
	})
	if err != nil {
		return nil, fmt.Errorf("upstream registries: %w", err)
	}
	return res, nil
}

// servePlugins serves containerd's proxy plugins, the content store and the snapshotter, on
// the plugin socket.
func servePlugins(ctx context.Context, g *errgroup.Group, cfg config.Config, store *cache.Store, res *resolver.Resolver) error {
	cs, err := pcontent.New(store, cfg.Plugin.ContentDelete)
	if err != nil {
		return err
	}
	sn, err := psnapshot.New(filepath.Join(cfg.Root, "snapshots"), res.Layers())
	if err != nil {
		return fmt.Errorf("cannot start the snapshotter: %w", err)
	}

	ln, err := admin.Listen(cfg.Plugin.Address)
	if err != nil {
		return fmt.Errorf("cannot start: plugin socket: %w", err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(pcontent.MaxMsgSize), grpc.MaxSendMsgSize(pcontent.MaxMsgSize))
	pcontent.Register(srv, cs)
	sn.Register(srv)
	log.G(ctx).WithField("address", cfg.Plugin.Address).Info("serving containerd proxy plugins: content, snapshotter")
	g.Go(func() error { return srv.Serve(ln) })
	g.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(shutdownGrace):
			srv.Stop()
		}
		return sn.Close() // after the server: no request is left using it
	})
	return nil
}
