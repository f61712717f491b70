package demo

import (
	"context"
	"fmt"
	"io"
	stdlog "log"
	"math/rand"
	"net"
	"net/http"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/daemon"
	"github.com/lifeboat-dev/lifeboat/internal/serving"
)

// startUpstream serves an in-memory registry on a free loopback port and pushes the demo's
// images to it.
func (d *tour) startUpstream(ctx context.Context) (stop func(), err error) {
	d.upstream = &countingHandler{h: registry.New(registry.Logger(stdlog.New(io.Discard, "", 0)))}
	addr, stop, err := serveLocal(d.upstream)
	if err != nil {
		return nil, fmt.Errorf("cannot start the demo registry: %w", err)
	}
	d.rep.Upstream = "http://" + addr
	// A fixed seed: the same images, and digests, on every run.
	rng := rand.NewSource(1)
	for _, img := range []struct {
		tag          string
		layers, size int64
	}{{cachedTag, layerCount, layerSize}, {newTag, 1, 1 << 20}} {
		im, err := random.Image(img.size, img.layers, random.WithSource(rng))
		if err != nil {
			stop()
			return nil, fmt.Errorf("cannot generate the demo image: %w", err)
		}
		info, err := push(ctx, addr, img.tag, im)
		if err != nil {
			stop()
			return nil, fmt.Errorf("cannot push the demo image to the demo registry: %w", err)
		}
		d.rep.Images = append(d.rep.Images, info)
	}
	return stop, nil
}

func push(ctx context.Context, addr, tag string, img v1.Image) (Image, error) {
	ref, err := name.ParseReference(addr+"/"+repository+":"+tag, name.Insecure)
	if err != nil {
		return Image{}, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return Image{}, err
	}
	m, err := img.Manifest()
	if err != nil {
		return Image{}, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return Image{}, err
	}
	dgst, err := img.Digest()
	if err != nil {
		return Image{}, err
	}
	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return Image{
		Ref: Registry + "/" + repository + ":" + tag, Digest: dgst.String(), Size: size, Layers: len(m.Layers),
	}, nil
}

// startLifeboat assembles lifeboat as `lifeboat serve` does, on a fresh root, with the demo
// registry as the only endpoint of Registry, and serves its registry mirror on a free loopback
// port.
func (d *tour) startLifeboat(ctx context.Context) (stop func(), err error) {
	cfg := config.Default()
	cfg.Root = filepath.Join(d.dir, "root")
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Resolve.UpstreamTimeout = config.Duration(UpstreamTimeout)
	cfg.Registry = map[string]config.Registry{Registry: {Endpoints: []string{d.rep.Upstream}}}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("demo configuration: %w", err)
	}
	// No grace: the demo stops lifeboat when no request is left, and a drain would wait for
	// connections a client opened but never used.
	lb, err := daemon.New(ctx, cfg, daemon.Options{Version: d.version, MirrorOnly: true})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ran := make(chan error, 1)
	go func() { ran <- lb.Run(runCtx) }()
	d.lb = lb
	d.mirror = lb.MirrorAddr()
	d.rep.Mirror = "http://" + d.mirror

	base := http.DefaultTransport.(*http.Transport).Clone()
	base.Proxy = nil // loopback only
	d.rec = &recorder{base: base}
	d.client = &http.Client{Transport: d.rec}
	d.plain = &http.Client{Transport: base}
	return func() {
		if lb.Outage.Status().Active {
			_, _ = lb.Outage.Stop(context.WithoutCancel(ctx)) // releases blackholed requests
		}
		base.CloseIdleConnections()
		cancel()
		<-ran
	}, nil
}

// serveLocal serves h on a free port of 127.0.0.1 until stop is called. stop closes the
// connections at once: the demo stops its servers when no request is left, and Shutdown would
// wait for connections a client opened but never used.
func serveLocal(h http.Handler) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: serving.ReadHeaderTimeout, IdleTimeout: serving.IdleTimeout}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // ends with http.ErrServerClosed
	}()
	return ln.Addr().String(), func() {
		_ = srv.Close()
		<-done
	}, nil
}
