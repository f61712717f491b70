package resolver

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Resolver answers the registry mirror and the CLI. It is safe for concurrent use.
//
// Errors: errdefs.ErrNotFound when the thing is neither cached nor obtainable from upstream
// (including every upstream being down); errdefs.ErrInvalidArgument for malformed names,
// references or digests; errdefs.ErrFailedPrecondition when upstream content fails
// verification or is too large; anything else is an internal error.
type Resolver struct{}

// Manifest resolves reference (a tag or a digest) in repository ("library/alpine") of
// registry ("docker.io") to a manifest or index.
func (r *Resolver) Manifest(ctx context.Context, registry, repository, reference string) (Manifest, error) {
	return Manifest{}, fmt.Errorf("manifest: %w", errdefs.ErrNotImplemented)
}

// StatBlob reports a blob's descriptor without transferring it: from the cache, or with an
// upstream HEAD.
func (r *Resolver) StatBlob(ctx context.Context, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, CacheStatus, error) {
	return ocispec.Descriptor{}, "", fmt.Errorf("stat blob: %w", errdefs.ErrNotImplemented)
}

// Blob opens a blob for reading: from the cache, or by starting (or joining) the one upstream
// fill of that blob. It returns once the size is known, before the bytes have arrived.
func (r *Resolver) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*Blob, error) {
	return nil, fmt.Errorf("blob: %w", errdefs.ErrNotImplemented)
}

// Tags lists repository's tags, sorted: upstream's list when reachable, the cached tags
// otherwise.
func (r *Resolver) Tags(ctx context.Context, registry, repository string) ([]string, CacheStatus, error) {
	return nil, "", fmt.Errorf("tags: %w", errdefs.ErrNotImplemented)
}

// Referrers returns the referrers index of dgst, filtered by artifactType when it is not empty.
func (r *Resolver) Referrers(ctx context.Context, registry, repository string, dgst digest.Digest, artifactType string) (ocispec.Index, error) {
	return ocispec.Index{}, fmt.Errorf("referrers: %w", errdefs.ErrNotImplemented)
}
