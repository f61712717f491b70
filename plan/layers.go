package plan

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Layers gives the snapshotter the layer blobs it applies: from the cache, or fetched from the
// image's upstream while it is reachable.
type Layers struct {
	r     *resolver.Resolver
	store *cache.Store
}

// Layers returns the layer source for the snapshotter.
func (p *Planner) Layers() *Layers { return &Layers{r: p.r, store: p.store} }

// ReaderAt opens a cached layer. If it is not cached, ErrNotFound is returned.
func (l *Layers) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return l.store.ReaderAt(ctx, desc)
}

// FetchLayer fetches a layer of imageRef ("docker.io/library/alpine:3.20") into the cache
// through the registry mirror's own path (one fill per blob, verified before it is cached),
// and returns once it is committed.
func (l *Layers) FetchLayer(ctx context.Context, imageRef string, desc ocispec.Descriptor) error {
	ir, err := parseImageRef(imageRef)
	if err != nil {
		return err
	}
	return l.r.FetchBlob(ctx, ir.registry, ir.repository, desc.Digest)
}
