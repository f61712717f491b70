package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/metrics"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/outage"
	pcontent "github.com/lifeboat-dev/lifeboat/plugin/content"
	psnapshot "github.com/lifeboat-dev/lifeboat/plugin/snapshot"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
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
			return serve(cmd.Context(), cfg, shutdownGrace)
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
// variable, which wins over the config file, which wins over the defaults. A variable set to
// "" counts as unset (as a template that fills in nothing leaves it), except
// LIFEBOAT_METRICS_ADDRESS, where "" turns metrics off as it does in the file.
func loadServeConfig(cmd *cobra.Command, f serveFlags) (config.Config, error) {
	explicit := cmd.Flags().Changed("config")
	if v, ok := serveEnv("config"); ok && !explicit {
		f.configPath, explicit = v, true
	}
	cfg, err := config.Load(f.configPath, explicit)
	if err != nil {
		return cfg, err
	}
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		} else if ev, ok := serveEnv(name); ok {
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
	if err := checkOutageMode(cmd, cfg.Outage.Mode, f.configPath); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// outageModes lists the outage modes for messages.
const outageModes = "dns, refused, blackhole, reset, http-<status> (400 to 599, e.g. http-503), slow and flaky"

// checkOutageMode refuses an outage mode that is not one, in a sentence naming where it was
// set: --simulate-outage, its environment variable, or [outage] mode in the file at path.
func checkOutageMode(cmd *cobra.Command, mode, path string) error {
	if mode == "" || (outage.Spec{Mode: mode}).Validate() == nil {
		return nil
	}
	what := fmt.Sprintf("outage.mode %q in %s", mode, path)
	if cmd.Flags().Changed("simulate-outage") {
		what = fmt.Sprintf("--simulate-outage %q", mode)
	} else if _, ok := serveEnv("simulate-outage"); ok {
		what = fmt.Sprintf("%s=%q", envName("simulate-outage"), mode)
	}
	return fmt.Errorf("%s is not an outage mode; the modes are %s", what, outageModes)
}

// serveEnv returns the value of the environment variable of the serve flag name, and whether
// it counts as set: an empty value does not, but for metrics-address.
func serveEnv(name string) (string, bool) {
	v, ok := os.LookupEnv(envName(name))
	if v == "" && name != "metrics-address" {
		return "", false
	}
	return v, ok
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
// lets the requests in flight finish for up to grace, cancels those still running, and closes
// the cache once none is left. A stop is not an error, even one that cut requests.
//
// Every address is claimed before anything is created: a port or socket that is taken stops
// start-up with nothing left behind, and so does any later failure to start.
func serve(ctx context.Context, cfg config.Config, grace time.Duration) (err error) {
	if err := setupLogging(cfg.Log); err != nil {
		return err
	}
	var bootOutage *outage.Spec
	if cfg.Outage.Mode != "" {
		spec := outage.Spec{Mode: cfg.Outage.Mode, Registries: cfg.Outage.Registries, For: time.Duration(cfg.Outage.For)}
		if err := spec.Validate(); err != nil {
			return fmt.Errorf("cannot simulate the outage [outage] asks for: %w", err)
		}
		bootOutage = &spec
	}

	// undo removes what start-up created when it fails; once every server runs, it is dropped.
	var undo undoList
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	lns, err := listenAll(cfg, &undo)
	if err != nil {
		return err
	}

	notify(ctx, "STATUS=opening the cache in "+cfg.Root)
	undo.removeCreated(cfg.Root)
	store, err := cache.Open(ctx, cfg.Root, cache.Options{MaxSize: int64(cfg.Cache.MaxSize)})
	if err != nil {
		if errdefs.IsUnavailable(err) {
			return fmt.Errorf("cannot start: the data root %s is in use by another lifeboat process", cfg.Root)
		}
		return fmt.Errorf("cannot open the cache in %s: %w", cfg.Root, err)
	}
	// The cache is closed last, once no server, request or fill uses it; not at all if a
	// request would not end.
	closeStore := true
	defer func() {
		if !closeStore {
			log.G(ctx).Error("leaving the cache open: requests still use it; the next start recovers it")
			return
		}
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

	// The addresses as listened on: with port 0, the port given.
	mirrorAddr, metricsAddr := lns.mirror.Addr().String(), ""
	if lns.metrics != nil {
		metricsAddr = lns.metrics.Addr().String()
	}
	svc := &admin.Service{
		Version: version, StartedAt: time.Now(), Store: store, Resolver: res, Outage: sim,
		MirrorURL: "http://" + mirrorAddr,
		Listeners: map[string]string{"mirror": mirrorAddr, "plugin": cfg.Plugin.Address, "admin": cfg.Admin.Address, "metrics": metricsAddr},
		Upstreams: configuredUpstreams(cfg),
	}
	if err := svc.Init(ctx); err != nil {
		return err
	}
	if bootOutage != nil {
		if _, err := sim.Start(ctx, *bootOutage); err != nil {
			return fmt.Errorf("cannot simulate the outage [outage] asks for: %w", err)
		}
	}
	plugins, err := newPluginServer(cfg, store, res)
	if err != nil {
		return err
	}

	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewCacheCollector(store), metrics.NewUpstreamCollector(res), metrics.NewOutageCollector(sim))
	mirrorMetrics := metrics.NewMirror(reg)
	svc.Answers = mirrorMetrics.Answers

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return runHTTP(gctx, "registry mirror", lns.mirror, mirror.New(mirror.FromResolver(res), mirror.Options{Observe: mirrorMetrics.Observe}), grace)
	})
	if lns.metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		g.Go(func() error { return runHTTP(gctx, "metrics", lns.metrics, mux, grace) })
	}
	g.Go(func() error { return runHTTP(gctx, "admin API", lns.admin, admin.Handler(svc), grace) })
	g.Go(func() error { return plugins.run(gctx, lns.plugin, grace) })
	undo = undoList{} // the servers own the listeners now, and the root is the cache's
	log.G(ctx).Info("lifeboat is running")
	// Every listener is open and the cache is recovered: a Type=notify unit counts as started
	// only now, so units ordered after lifeboat (containerd) find it answering.
	notify(ctx, fmt.Sprintf("READY=1\nSTATUS=serving the mirror on %s and the proxy plugins on %s", cfg.Mirror.Address, cfg.Plugin.Address))
	g.Go(func() error {
		<-gctx.Done()
		notify(ctx, "STOPPING=1\nSTATUS=stopping: draining in-flight requests")
		return nil
	})
	err = g.Wait()
	if errors.Is(err, admin.ErrHandlersRunning) {
		closeStore = false
	}
	log.G(ctx).Info("lifeboat stopped")
	return err
}

// configuredUpstreams are the registries the configuration names, and docker.io, the registry
// of names without one, with their endpoints.
func configuredUpstreams(cfg config.Config) map[string][]string {
	ups := map[string][]string{oci.DockerHub: oci.DefaultEndpoints(oci.DockerHub)}
	for host, r := range cfg.Registry {
		ups[host] = oci.DefaultEndpoints(host)
		if len(r.Endpoints) > 0 {
			ups[host] = r.Endpoints
		}
	}
	return ups
}

// listeners are the daemon's open addresses; metrics is nil when it is off.
type listeners struct {
	mirror, metrics, admin, plugin net.Listener
}

// listenAll claims every address of the daemon, or none: on failure what it opened is closed
// and the socket directories it made are removed. On success, undo closes them all.
func listenAll(cfg config.Config, undo *undoList) (*listeners, error) {
	var lns listeners
	tcp := func(name, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("cannot listen for %s on %s: %w", name, addr, err)
		}
		undo.add(func() { ln.Close() })
		return ln, nil
	}
	unix := func(name, path string) (net.Listener, error) {
		undo.removeCreated(filepath.Dir(path))
		ln, err := admin.Listen(path)
		if err != nil {
			return nil, fmt.Errorf("cannot start: %s socket: %w", name, err)
		}
		undo.add(func() { ln.Close() }) // which removes the socket file
		return ln, nil
	}
	var err error
	if lns.mirror, err = tcp("registry mirror", cfg.Mirror.Address); err != nil {
		return nil, err
	}
	if cfg.Metrics.Address != "" {
		if lns.metrics, err = tcp("metrics", cfg.Metrics.Address); err != nil {
			return nil, err
		}
	}
	if lns.plugin, err = unix("plugin", cfg.Plugin.Address); err != nil {
		return nil, err
	}
	if lns.admin, err = unix("admin", cfg.Admin.Address); err != nil {
		return nil, err
	}
	return &lns, nil
}

// undoList is what to undo, last first.
type undoList []func()

func (u *undoList) add(fn func()) { *u = append(*u, fn) }

func (u undoList) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// removeCreated arranges for dir, and the parents of it that do not exist now either, to be
// removed if they were created: dir with what is in it, the parents only if empty.
func (u *undoList) removeCreated(dir string) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(missing) == 0 {
		return
	}
	u.add(func() {
		os.RemoveAll(missing[0])
		for _, d := range missing[1:] {
			os.Remove(d)
		}
	})
}

// notify sends state to systemd's notification socket ($NOTIFY_SOCKET, set for Type=notify
// units); outside systemd it does nothing.
func notify(ctx context.Context, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.G(ctx).WithError(err).Warn("cannot notify systemd of lifeboat's state")
	}
}

// runHTTP serves h on ln until ctx ends, then drains it as admin.ServeHTTP does.
func runHTTP(ctx context.Context, name string, ln net.Listener, h http.Handler, grace time.Duration) error {
	log.G(ctx).WithField("address", ln.Addr().String()).Infof("serving the %s", name)
	cut, err := admin.ServeHTTP(ctx, ln, h, grace)
	if cut > 0 {
		log.G(ctx).WithField("server", name).WithField("cut", cut).WithField("grace", grace).
			Warnf("the shutdown deadline passed: %d requests in flight were cancelled", cut)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
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

// pluginServer serves containerd's proxy plugins, the content store and the snapshotter.
type pluginServer struct {
	srv *grpc.Server
	sn  *psnapshot.Snapshotter
	// active counts the calls running.
	active atomic.Int64
}

func newPluginServer(cfg config.Config, store *cache.Store, res *resolver.Resolver) (*pluginServer, error) {
	cs, err := pcontent.New(store, cfg.Plugin.ContentDelete)
	if err != nil {
		return nil, err
	}
	sn, err := psnapshot.New(filepath.Join(cfg.Root, "snapshots"), res.Layers())
	if err != nil {
		return nil, fmt.Errorf("cannot start the snapshotter: %w", err)
	}
	p := &pluginServer{sn: sn}
	p.srv = grpc.NewServer(grpc.MaxRecvMsgSize(pcontent.MaxMsgSize), grpc.MaxSendMsgSize(pcontent.MaxMsgSize),
		grpc.WaitForHandlers(true),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			p.active.Add(1)
			defer p.active.Add(-1)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			p.active.Add(1)
			defer p.active.Add(-1)
			return h(srv, ss)
		}))
	pcontent.Register(p.srv, cs)
	sn.Register(p.srv)
	return p, nil
}

// run serves on ln until ctx ends, then stops accepting and lets the calls in flight finish
// for up to grace; at the deadline it cancels those left. It returns once no call runs, and
// the snapshotter is closed.
func (p *pluginServer) run(ctx context.Context, ln net.Listener, grace time.Duration) error {
	log.G(ctx).WithField("address", ln.Addr().String()).Info("serving containerd proxy plugins: content, snapshotter")
	served := make(chan error, 1)
	go func() { served <- p.srv.Serve(ln) }()
	var serveErr error
	select {
	case serveErr = <-served:
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { p.srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		cut := p.active.Load()
		// Stop closes the connections, which cancels the calls, and waits for their handlers.
		go p.srv.Stop()
		log.G(ctx).WithField("server", "proxy plugins").WithField("cut", cut).WithField("grace", grace).
			Warnf("the shutdown deadline passed: %d calls in flight were cancelled", cut)
		select {
		case <-stopped:
		case <-time.After(grace + 10*time.Second):
			return fmt.Errorf("proxy plugins: %d calls: %w", p.active.Load(), admin.ErrHandlersRunning)
		}
	}
	if serveErr != nil {
		return fmt.Errorf("proxy plugins: %w", serveErr)
	}
	return p.sn.Close() // after the server: no call is left using it
}
