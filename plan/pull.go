package plan

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/resolver"
)

// PullPlan is what a pull of an image fetches.
type PullPlan struct {
	// Ref is the normalized reference.
	Ref string
	// Digest is what Ref resolved to: an index or a manifest.
	Digest digest.Digest
	// Manifests are the image manifests to pull: the platform's, or every one of the index.
	Manifests []ocispec.Descriptor
	// Blobs are their configs and layers, each once.
	Blobs []ocispec.Descriptor
	// Size adds up the indexes, manifests and blobs.
	Size int64

	repoKey       string
	manifestBytes int64
}

// PlanPull resolves ref as a pull does, through the same paths as the mirror (a tag is
// revalidated and its index and manifests are cached), and returns what the pull needs: the
// manifest for platform, or with all every manifest of the index, and their blobs. Errors are
// those of Manifest; errdefs.ErrNotFound also when an index has no manifest for platform.
func (p *Planner) PlanPull(ctx context.Context, ref string, platform platforms.MatchComparer, all bool) (PullPlan, error) {
	ir, err := parseImageRef(ref)
	if err != nil {
		return PullPlan{}, err
	}
	m, err := p.r.Manifest(ctx, ir.registry, ir.repository, ir.reference())
	if err != nil {
		return PullPlan{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	plan := PullPlan{Ref: ir.name, Digest: m.Descriptor.Digest, repoKey: ir.repoKey()}
	seen := map[digest.Digest]bool{}
	var walk func(m resolver.Manifest, depth int) error
	walk = func(m resolver.Manifest, depth int) error {
		if seen[m.Descriptor.Digest] {
			return nil
		}
		seen[m.Descriptor.Digest] = true
		plan.Size += m.Descriptor.Size
		plan.manifestBytes += m.Descriptor.Size
		if !images.IsIndexType(m.Descriptor.MediaType) {
			blobs, err := imageBlobs(m)
			if err != nil {
				return err
			}
			plan.Manifests = append(plan.Manifests, m.Descriptor)
			for _, b := range blobs {
				if err := checkDigest(b.Digest); err != nil {
					return fmt.Errorf("manifest %s names its %s by an %w", m.Descriptor.Digest, b.kind, err)
				}
				if !seen[b.Digest] {
					seen[b.Digest] = true
					plan.Blobs = append(plan.Blobs, b.Descriptor)
					plan.Size += b.Size
				}
			}
			return nil
		}
		var children []ocispec.Descriptor
		if all {
			if depth >= maxIndexDepth {
				return fmt.Errorf("index %s: indexes nested more than %d deep: %w", m.Descriptor.Digest, maxIndexDepth, errdefs.ErrNotImplemented)
			}
			var idx ocispec.Index
			if err := json.Unmarshal(m.Body, &idx); err != nil {
				return fmt.Errorf("index %s: %v: %w", m.Descriptor.Digest, err, errdefs.ErrDataLoss)
			}
			children = idx.Manifests
		} else {
			child, ok, err := platformManifest(m, platform, depth)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("index %s has no manifest for the platform: %w", m.Descriptor.Digest, errdefs.ErrNotFound)
			}
			children = []ocispec.Descriptor{child}
		}
		for _, c := range children {
			cm, err := p.childManifest(ctx, ir, m.Descriptor.Digest, c)
			if err != nil {
				return err
			}
			if err := walk(cm, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(m, 0); err != nil {
		return PullPlan{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	return plan, nil
}

// childManifest resolves c, a manifest that index names. Only by digest: an entry whose "digest"
// is not one (say "latest") must not resolve as a tag, which would put content the index never
// named into the pull.
func (p *Planner) childManifest(ctx context.Context, ir imageRef, index digest.Digest, c ocispec.Descriptor) (resolver.Manifest, error) {
	if err := checkDigest(c.Digest); err != nil {
		return resolver.Manifest{}, fmt.Errorf("index %s names a manifest by an %w", index, err)
	}
	m, err := p.r.Manifest(ctx, ir.registry, ir.repository, c.Digest.String())
	if err != nil {
		return resolver.Manifest{}, fmt.Errorf("manifest %s: %w", describe(c), err)
	}
	return m, nil
}

// Pull fetches into the cache what plan's manifests need and the cache lacks, with Warm, and
// returns once all of it is committed. Errors are Warm's.
func (p *Planner) Pull(ctx context.Context, plan PullPlan) error {
	for _, m := range plan.Manifests {
		if err := p.Warm(ctx, plan.repoKey+"@"+m.Digest.String(), platforms.All); err != nil {
			return err
		}
	}
	return nil
}

// PullProgress says how far a pull of plan got: the bytes of the plan in the cache, counting
// the blobs being downloaded by how much of them arrived, and those of its configs and layers
// alone.
func (p *Planner) PullProgress(ctx context.Context, plan PullPlan) (total, blobs int64) {
	for _, b := range plan.Blobs {
		if ok, _ := p.r.Local().HasBlob(ctx, plan.repoKey, b.Digest); ok {
			blobs += b.Size
			continue
		}
		if written, ok := p.r.Filling(plan.repoKey, b.Digest); ok {
			blobs += min(written, b.Size)
		}
	}
	return plan.manifestBytes + blobs, blobs
}
