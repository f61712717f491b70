package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"github.com/coreos/go-systemd/v22/daemon"
	"google.golang.org/grpc"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/serving"
	"github.com/lifeboat-dev/lifeboat/plan"
	pcontent "github.com/lifeboat-dev/lifeboat/plugin/content"
	psnapshot "github.com/lifeboat-dev/lifeboat/plugin/snapshot"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// SetupLogging sets the level and format of lifeboat's log (github.com/containerd/log).
func SetupLogging(cfg config.Log) error {
	if err := log.SetLevel(cfg.Level); err != nil {
		return fmt.Errorf("log level %q is not one of trace, debug, info, warn, error", cfg.Level)
	}
	format := log.TextFormat
	if cfg.Format == "json" {
		format = log.JSONFormat
	}
	return log.SetFormat(format)
}

// notify sends state to systemd's notification socket ($NOTIFY_SOCKET, set for Type=notify
// units); outside systemd it does nothing.
func notify(ctx context.Context, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.G(ctx).WithError(err).Warn("cannot notify systemd of lifeboat's state")
	}
}

// serveHTTP serves h on ln until ctx ends, then drains it (serving.HTTP).
func serveHTTP(ctx context.Context, name string, ln net.Listener, h http.Handler, grace time.Duration) error {
	log.G(ctx).WithField("address", ln.Addr().String()).Infof("serving the %s", name)
	cut, err := serving.HTTP(ctx, ln, h, grace)
	return served(ctx, name, cut, grace, err)
}

// served logs the requests a server's stop cut, and names the server in its error.
func served(ctx context.Context, name string, cut int, grace time.Duration, err error) error {
	if cut > 0 {
		log.G(ctx).WithField("server", name).WithField("cut", cut).WithField("grace", grace).
			Warnf("the shutdown deadline passed: %d requests in flight were cancelled", cut)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// pluginServer serves containerd's proxy plugins, the content store and the snapshotter.
type pluginServer struct {
	srv *serving.GRPCServer
	sn  *psnapshot.Snapshotter
}

func newPluginServer(cfg config.Config, store *cache.Store, res *resolver.Resolver) (*pluginServer, error) {
	cs, err := pcontent.New(store, cfg.Plugin.ContentDelete)
	if err != nil {
		return nil, err
	}
	sn, err := psnapshot.New(filepath.Join(cfg.Root, "snapshots"), plan.New(res, store).Layers())
	if err != nil {
		return nil, fmt.Errorf("cannot start the snapshotter: %w", err)
	}
	p := &pluginServer{sn: sn, srv: serving.NewGRPCServer(grpc.MaxRecvMsgSize(pcontent.MaxMsgSize), grpc.MaxSendMsgSize(pcontent.MaxMsgSize))}
	pcontent.Register(p.srv.Server, cs)
	sn.Register(p.srv.Server)
	return p, nil
}

// run serves on ln until ctx ends, then drains as the HTTP servers do. It returns once no call
// runs, and the snapshotter is closed.
func (p *pluginServer) run(ctx context.Context, ln net.Listener, grace time.Duration) error {
	const name = "proxy plugins"
	log.G(ctx).WithField("address", ln.Addr().String()).Info("serving containerd proxy plugins: content, snapshotter")
	cut, err := p.srv.Serve(ctx, ln, grace)
	if err := served(ctx, name, cut, grace, err); err != nil {
		return err
	}
	return p.sn.Close() // after the server: no call is left using it
}
