package resolver

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

// What the image plans (package plan: drill, warm, pull, containerd's Remotes and the
// snapshotter's Layers) need of the resolver beyond serving single manifests and blobs.

// FetchBlob fetches a blob into the cache through the mirror's own path (Blob: one fill per
// blob, verified before it is cached), reads it to its end and returns once it is committed.
// Errors are Blob's; errdefs.ErrUnavailable when it was read but is not cached (the cache is
// full).
func (r *Resolver) FetchBlob(ctx context.Context, registry, repository string, dgst digest.Digest) error {
	b, err := r.Blob(ctx, registry, repository, dgst)
	if err != nil {
		return err
	}
	defer b.Close()
	rc, err := b.Reader(0, b.Descriptor.Size)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil {
		return err
	}
	// Readers finish as soon as the bytes are verified; the commit may still be running.
	if err := r.fills.Await(ctx, fill.Key{Registry: registry, Repository: repository, Digest: dgst}); err != nil {
		return err
	}
	if ok, err := r.local.HasBlob(ctx, registry+"/"+repository, dgst); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("blob %s was read but is not in the cache (is the cache full?): %w", dgst, errdefs.ErrUnavailable)
	}
	return nil
}

// PeerManifest reads the manifest dgst of registry/repository from a peer that holds it,
// verified against dgst, without caching it: for a drill, which learns from it what lies
// beneath and must change nothing. peer names who sent it; its status is Peer. Errors are
// those of peers.Manifest; errdefs.ErrInvalidArgument for a malformed dgst;
// errdefs.ErrFailedPrecondition when the peer sent other bytes.
func PeerManifest(ctx context.Context, peers Peers, registry, repository string, dgst digest.Digest) (_ Manifest, peer string, _ error) {
	if err := checkDigest(dgst); err != nil {
		return Manifest{}, "", err
	}
	mediaType, body, peer, err := peers.Manifest(ctx, registry, repository, dgst)
	if err == nil && (len(body) > oci.MaxManifestSize || dgst.Algorithm().FromBytes(body) != dgst) {
		err = fmt.Errorf("peer %s sent manifest %s with other bytes: %w", peer, dgst, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return Manifest{}, peer, err
	}
	if mediaType == "" {
		mediaType = sniffMediaType(body)
	}
	return Manifest{Descriptor: ocispec.Descriptor{MediaType: mediaType, Digest: dgst, Size: int64(len(body))}, Body: body, Status: Peer}, peer, nil
}
