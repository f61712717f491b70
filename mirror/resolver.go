package mirror

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/resolver"
)

// FromResolver returns the Backend of r.
func FromResolver(r *resolver.Resolver) Backend { return resolverBackend{r} }

type resolverBackend struct{ r *resolver.Resolver }

var (
	_ Backend         = resolverBackend{}
	_ ManifestStatter = resolverBackend{}
)

func (b resolverBackend) Manifest(ctx context.Context, registry, repository, reference string) (resolver.Manifest, error) {
	return b.r.Manifest(ctx, registry, repository, reference)
}

func (b resolverBackend) StatManifest(ctx context.Context, registry, repository, reference string) (ocispec.Descriptor, resolver.CacheStatus, error) {
	return b.r.StatManifest(ctx, registry, repository, reference)
}

func (b resolverBackend) StatBlob(ctx context.Context, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, resolver.CacheStatus, error) {
	return b.r.StatBlob(ctx, registry, repository, dgst)
}

func (b resolverBackend) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (Blob, error) {
	blob, err := b.r.Blob(ctx, registry, repository, dgst)
	if err != nil {
		return nil, err // not a Blob holding a nil *resolver.Blob
	}
	return resolverBlob{blob}, nil
}

func (b resolverBackend) Tags(ctx context.Context, registry, repository string) ([]string, resolver.CacheStatus, error) {
	return b.r.Tags(ctx, registry, repository)
}

func (b resolverBackend) Referrers(ctx context.Context, registry, repository string, dgst digest.Digest, artifactType string) (ocispec.Index, error) {
	return b.r.Referrers(ctx, registry, repository, dgst, artifactType)
}

// resolverBlob is a *resolver.Blob as a Blob.
type resolverBlob struct{ b *resolver.Blob }

var _ Blob = resolverBlob{}

func (b resolverBlob) Descriptor() ocispec.Descriptor { return b.b.Descriptor }
func (b resolverBlob) Status() resolver.CacheStatus   { return b.b.Status }
func (b resolverBlob) Reader(off, length int64) (io.ReadCloser, error) {
	return b.b.Reader(off, length)
}
func (b resolverBlob) Close() error { return b.b.Close() }
