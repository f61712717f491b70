// Package plan is what pulling a whole image needs, over the resolver's single manifests and
// blobs: the readiness check of a drill (could this node, or the cluster, serve a pull with
// every upstream down?), the description of a cached image, warming, pull plans and their
// progress, and the image-level adapters containerd uses: Remotes, a remotes.Resolver for
// pulling in process, and Layers, the snapshotter's source of layer blobs.
//
// It works through the resolver's exported API only, so that a plan fetches exactly as the
// mirror does: cache first, one fill per blob, verified before it is cached.
package plan

import (
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Planner plans and checks pulls of whole images over a resolver and its cache.
type Planner struct {
	r *resolver.Resolver
	// store is the resolver's cache, read directly for what is not a repository's: an image's
	// config peeked for its platform, and layers the snapshotter applies by digest.
	store *cache.Store
}

// New returns the planner of the resolver r, whose cache is store.
func New(r *resolver.Resolver, store *cache.Store) *Planner {
	return &Planner{r: r, store: store}
}

// imageRef is a parsed, normalized image reference.
type imageRef struct {
	name       string // normalized, as given to Readiness.Ref
	registry   string // "docker.io"
	repository string // "library/alpine"
	tag        string // empty for digest references
	digest     digest.Digest
}

func (ir imageRef) repoKey() string { return ir.registry + "/" + ir.repository }

// reference is what the registry is asked for: the digest, else the tag.
func (ir imageRef) reference() string {
	if ir.digest != "" {
		return ir.digest.String()
	}
	return ir.tag
}

// parseImageRef normalizes ref as containerd and docker do: "alpine" is
// "docker.io/library/alpine:latest". A reference with a digest is pulled by its digest (a tag
// beside it is ignored, as containerd does).
func parseImageRef(ref string) (imageRef, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return imageRef{}, fmt.Errorf("image reference %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	named = reference.TagNameOnly(named)
	ir := imageRef{name: named.String(), registry: reference.Domain(named), repository: reference.Path(named)}
	if c, ok := named.(reference.Canonical); ok {
		ir.digest = c.Digest()
	} else if t, ok := named.(reference.Tagged); ok {
		ir.tag = t.Tag()
	}
	if !oci.ValidRepository(ir.repository) {
		return imageRef{}, fmt.Errorf("invalid repository name %q: %w", ir.repository, errdefs.ErrInvalidArgument)
	}
	if !oci.ValidHost(ir.registry) {
		return imageRef{}, fmt.Errorf("invalid registry name %q: %w", ir.registry, errdefs.ErrInvalidArgument)
	}
	return ir, nil
}

// NormalizeRef returns the normalized name of an image reference, as the cache records refs:
// "alpine" is "docker.io/library/alpine:latest". A malformed reference gives
// errdefs.ErrInvalidArgument.
func NormalizeRef(ref string) (string, error) {
	ir, err := parseImageRef(ref)
	return ir.name, err
}

// checkDigest refuses a digest that is not one (errdefs.ErrInvalidArgument), as the resolver
// does: an index or a manifest names what it holds by a digest it may have got wrong.
func checkDigest(dgst digest.Digest) error {
	_, err := oci.ParseDigest(string(dgst))
	return err
}
