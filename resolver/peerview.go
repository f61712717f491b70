package resolver

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

// PeerView is what this node serves to the other nodes of its cluster: its cache, and nothing
// it would have to ask anyone else for, so that requests never go round the cluster. A
// registry whose content is not shared (Options.NotShared) is refused by every method, before
// anything else, as not mirrored. The one exception to "its cache only" is explicit:
// Coalescing's blobs, which the digest's home fills from the registry for the cluster.
//
// It has the methods of the mirror's Backend, so that the peer listener serves it with the
// mirror's handler. Errors are the resolver's; what is not cached is errdefs.ErrNotFound.
type PeerView struct {
	r *Resolver
	// coalesce fills a blob this node does not hold from the registry (never from peers).
	coalesce bool
}

// ForPeers returns what this node serves to its peers.
func (r *Resolver) ForPeers() PeerView { return PeerView{r: r} }

// Coalescing returns the view for the requests that ask this node, the home of a blob, to fill
// it from the registry for the cluster: one fill however many nodes ask. Its fills stream to
// the peer as the bytes arrive, with only the last byte held back until the blob verified (the
// peer verifies the bytes itself).
func (v PeerView) Coalescing() PeerView { return PeerView{r: v.r, coalesce: true} }

// notSharedError refuses a peer's request for a registry whose content is not shared.
// errors.Is(err, endpoints.ErrNotMirrored) and errdefs.IsNotFound(err) both hold: to peers the registry
// is not mirrored.
type notSharedError struct{ registry string }

func (e notSharedError) Error() string {
	return "registry " + e.registry + " is not shared with peers by this lifeboat"
}

func (e notSharedError) Is(target error) bool {
	return target == endpoints.ErrNotMirrored || target == errdefs.ErrNotFound
}

// endpoints refuses a registry that is not shared, then one that is not mirrored; it returns
// the registry's endpoints (for a coalesced fill).
func (v PeerView) endpoints(registry, repository string) ([]*endpoints.Endpoint, error) {
	if !v.r.peering.shared(registry) {
		return nil, notSharedError{registry}
	}
	if err := checkRepository(repository); err != nil {
		return nil, err
	}
	return v.r.upstreams.Get(registry)
}

// notHeld is the error of a peer's request for what this node does not hold.
func notHeld(what string) error {
	return fmt.Errorf("%s is not cached on this node: %w", what, errdefs.ErrNotFound)
}

// Manifest answers from the cache alone: a digest linked to the repository, or a tag as this
// node cached it (peers resolve tags through the cluster's index, not through this API).
func (v PeerView) Manifest(ctx context.Context, registry, repository, reference string) (Manifest, error) {
	return v.manifest(ctx, registry, repository, reference, Read{})
}

// StatManifest is Manifest without the body.
func (v PeerView) StatManifest(ctx context.Context, registry, repository, reference string) (ocispec.Descriptor, CacheStatus, error) {
	m, err := v.manifest(ctx, registry, repository, reference, Read{DescriptorOnly: true})
	return m.Descriptor, m.Status, err
}

func (v PeerView) manifest(ctx context.Context, registry, repository, reference string, how Read) (Manifest, error) {
	if _, err := v.endpoints(registry, repository); err != nil {
		return Manifest{}, err
	}
	dgst, err := oci.ParseReference(reference)
	if err != nil {
		return Manifest{}, err
	}
	repoKey := registry + "/" + repository
	desc := ocispec.Descriptor{Digest: dgst}
	if dgst == "" {
		ref, err := v.r.local.Tag(ctx, repoKey+":"+reference)
		if errdefs.IsNotFound(err) {
			return Manifest{}, notHeld("tag " + repoKey + ":" + reference)
		}
		if err != nil {
			return Manifest{}, err
		}
		desc = ref.Target
	}
	m, err := v.r.local.Manifest(ctx, repoKey, desc, how)
	if errdefs.IsNotFound(err) {
		return Manifest{}, notHeld("manifest " + repoKey + "@" + desc.Digest.String())
	}
	if err != nil {
		return Manifest{}, err
	}
	m.Status = Hit
	return m, nil
}

// StatBlob describes a cached blob; a coalescing view asks the registry for one it lacks.
func (v PeerView) StatBlob(ctx context.Context, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, CacheStatus, error) {
	eps, err := v.blobArgs(registry, repository, dgst)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if desc, err := v.r.local.StatBlob(ctx, registry+"/"+repository, dgst); err == nil {
		return desc, Hit, nil
	}
	if !v.coalesce {
		return ocispec.Descriptor{}, "", notHeld("blob " + registry + "/" + repository + "@" + dgst.String())
	}
	return v.r.headBlob(ctx, eps, registry, repository, dgst)
}

// Blob opens a cached blob; a coalescing view fills one it lacks from the registry, streamed to
// the peer as it arrives.
func (v PeerView) Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*Blob, error) {
	eps, err := v.blobArgs(registry, repository, dgst)
	if err != nil {
		return nil, err
	}
	if b, err := v.r.local.Blob(ctx, registry+"/"+repository, dgst); err == nil {
		return b, nil
	}
	if !v.coalesce {
		return nil, notHeld("blob " + registry + "/" + repository + "@" + dgst.String())
	}
	key := fill.Key{Registry: registry, Repository: repository, Digest: dgst}
	return v.r.fillBlob(ctx, key, v.r.blobSources(key, eps, nil), true)
}

func (v PeerView) blobArgs(registry, repository string, dgst digest.Digest) ([]*endpoints.Endpoint, error) {
	eps, err := v.endpoints(registry, repository)
	if err != nil {
		return nil, err
	}
	return eps, checkDigest(dgst)
}

// Tags lists the repository's cached tags.
func (v PeerView) Tags(ctx context.Context, registry, repository string) ([]string, CacheStatus, error) {
	if _, err := v.endpoints(registry, repository); err != nil {
		return nil, "", err
	}
	tags, err := v.r.local.Tags(ctx, registry, repository)
	if err == nil && len(tags) == 0 {
		err = notHeld("repository " + registry + "/" + repository)
	}
	if err != nil {
		return nil, "", err
	}
	return tags, Hit, nil
}

// Referrers are not cached: peers get an empty index.
func (v PeerView) Referrers(ctx context.Context, registry, repository string, dgst digest.Digest, artifactType string) (ocispec.Index, error) {
	if _, err := v.blobArgs(registry, repository, dgst); err != nil {
		return ocispec.Index{}, err
	}
	return emptyIndex(), nil
}
