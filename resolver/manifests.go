package resolver

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// manifestFetcher fetches manifests by digest into the cache: from the peers when the registry
// is shared, else from the registry; verified against their digest, linked to their
// repository, and told to the cluster.
type manifestFetcher struct {
	local      Local
	cache      *cache.Store
	flights    *flights
	peering    *peering
	mismatches *atomic.Int64 // upstream manifests that failed verification
}

// fetch gets a manifest by digest from upstream, verifies it and caches it: one
// upstream request for all the callers asking for it at once, and none when it was cached
// meanwhile (by a request that finished just before this one asked).
//
// The peers, when the registry is shared, are asked first: a manifest they provide has the
// status Peer.
func (f *manifestFetcher) fetch(ctx context.Context, eps []*endpoints.Endpoint, registry, repo string, dgst digest.Digest) (Manifest, error) {
	if err := checkDigest(dgst); err != nil {
		return Manifest{}, err
	}
	repoKey := registry + "/" + repo
	if peers := f.peering.of(registry); peers != nil {
		m, err := f.fromPeers(ctx, peers, registry, repo, dgst)
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil {
			return Manifest{}, ctx.Err()
		}
		logPeerMiss(ctx, err, "manifest "+repoKey+"@"+dgst.String())
	}
	return upstreamOnce(ctx, f.flights, "get "+repoKey+"@"+dgst.String(), func(ctx context.Context) (Manifest, error) {
		if m, err := f.local.Manifest(ctx, repoKey, ocispec.Descriptor{Digest: dgst}, Read{}); err == nil {
			return m, nil
		}
		return f.download(ctx, eps, registry, repo, dgst)
	})
}

// download gets a manifest by digest from upstream, verifies it with its digest's own
// algorithm (sha256 or sha512) and caches it.
func (f *manifestFetcher) download(ctx context.Context, eps []*endpoints.Endpoint, registry, repo string, dgst digest.Digest) (Manifest, error) {
	type got struct {
		desc ocispec.Descriptor
		body []byte
	}
	g, _, err := endpoints.Try(ctx, eps, "get-manifest", func(ctx context.Context, c endpoints.Client) (got, error) {
		desc, body, err := c.GetManifest(ctx, repo, dgst.String())
		return got{desc, body}, err
	})
	if err != nil {
		return Manifest{}, err
	}
	if len(g.body) > oci.MaxManifestSize {
		return Manifest{}, fmt.Errorf("manifest %s is %d bytes: %w", dgst, len(g.body), errdefs.ErrFailedPrecondition)
	}
	if actual := dgst.Algorithm().FromBytes(g.body); actual != dgst {
		f.mismatches.Add(1)
		return Manifest{}, fmt.Errorf("upstream manifest %s has digest %s: %w", dgst, actual, errdefs.ErrFailedPrecondition)
	}
	return f.store(ctx, registry, repo, dgst, g.desc.MediaType, g.body)
}

// store caches a manifest whose body verified against dgst, linked to the repository,
// and tells the cluster.
func (f *manifestFetcher) store(ctx context.Context, registry, repo string, dgst digest.Digest, mediaType string, body []byte) (Manifest, error) {
	repoKey := registry + "/" + repo
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: dgst, Size: int64(len(body))}
	if desc.MediaType == "" {
		desc.MediaType = sniffMediaType(body)
	}
	err := content.WriteBlob(ctx, f.cache.LinkingTo(repoKey), manifestRefPrefix+repoKey+"@"+dgst.String(), bytes.NewReader(body), desc)
	if err != nil && !errdefs.IsAlreadyExists(err) {
		return Manifest{}, fmt.Errorf("cache manifest %s: %w", dgst, err)
	}
	f.peering.cached(registry, repo, dgst)
	return Manifest{Descriptor: desc, Body: body}, nil
}

// fromPeers gets a manifest by digest from a peer, verifies it and caches it, linked
// to the repository: one request for all the callers asking at once, bounded by the upstream
// timeout. Its status is Peer.
func (f *manifestFetcher) fromPeers(ctx context.Context, peers Peers, registry, repo string, dgst digest.Digest) (Manifest, error) {
	repoKey := registry + "/" + repo
	return upstreamOnce(ctx, f.flights, "peer get "+repoKey+"@"+dgst.String(), func(ctx context.Context) (Manifest, error) {
		if m, err := f.local.Manifest(ctx, repoKey, ocispec.Descriptor{Digest: dgst}, Read{}); err == nil {
			return m, nil
		}
		pm, _, err := PeerManifest(ctx, peers, registry, repo, dgst)
		if err != nil {
			return Manifest{}, err
		}
		m, err := f.store(ctx, registry, repo, dgst, pm.Descriptor.MediaType, pm.Body)
		m.Status = Peer
		return m, err
	})
}
