package plan

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Remotes is a containerd remotes.Resolver backed by the resolver, for pulling in process
// (the CLI, tools built on lifeboat) with the same cache-first, stale-on-outage logic the
// mirror applies. It pulls only: Pusher answers ErrNotImplemented.
type Remotes struct{ r *resolver.Resolver }

var _ remotes.Resolver = (*Remotes)(nil)

// Remotes returns the resolver as a containerd remotes.Resolver.
func (p *Planner) Remotes() *Remotes { return &Remotes{r: p.r} }

// Resolve resolves ref ("docker.io/library/alpine:3.20", "alpine", or with a digest) to its
// normalized name and the descriptor of its index or manifest.
func (rr *Remotes) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	ir, err := parseImageRef(ref)
	if err != nil {
		return "", ocispec.Descriptor{}, err
	}
	m, err := rr.r.Manifest(ctx, ir.registry, ir.repository, ir.reference())
	if err != nil {
		return "", ocispec.Descriptor{}, err
	}
	return ir.name, m.Descriptor, nil
}

// Fetcher returns a fetcher of the repository of ref.
func (rr *Remotes) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	ir, err := parseImageRef(ref)
	if err != nil {
		return nil, err
	}
	return remotes.FetcherFunc(func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
		if images.IsManifestType(desc.MediaType) || images.IsIndexType(desc.MediaType) {
			m, err := rr.r.Manifest(ctx, ir.registry, ir.repository, desc.Digest.String())
			if err != nil {
				return nil, err
			}
			return io.NopCloser(bytes.NewReader(m.Body)), nil
		}
		b, err := rr.r.Blob(ctx, ir.registry, ir.repository, desc.Digest)
		if err != nil {
			return nil, err
		}
		rc, err := b.Reader(0, b.Descriptor.Size)
		if err != nil {
			b.Close()
			return nil, err
		}
		return &blobReadCloser{ReadCloser: rc, blob: b}, nil
	}), nil
}

// Pusher is not supported: lifeboat is a pull-through cache.
func (rr *Remotes) Pusher(ctx context.Context, ref string) (remotes.Pusher, error) {
	return nil, fmt.Errorf("push to %s: lifeboat only pulls: %w", ref, errdefs.ErrNotImplemented)
}

// blobReadCloser closes the blob with its reader.
type blobReadCloser struct {
	io.ReadCloser
	blob *resolver.Blob
}

func (b *blobReadCloser) Close() error {
	err := b.ReadCloser.Close()
	if cerr := b.blob.Close(); err == nil {
		err = cerr
	}
	return err
}
