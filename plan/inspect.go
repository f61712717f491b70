package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// ImageSummary describes a cached image from the cache alone.
type ImageSummary struct {
	// Readiness is what Check would answer for the platform given to Inspect.
	Readiness
	// Digest is what the ref resolves to in the cache; empty when its tag is not cached.
	Digest digest.Digest
	// Platforms are what the image is for: the platforms of an index's manifests (attestation
	// manifests, "unknown/unknown", left out), or the os/arch of a lone manifest's config.
	// Empty, never null, when what would tell is not cached.
	Platforms []string
}

// Inspect describes the cached image ref: what it resolves to, its platforms, and whether it is
// complete for platform, with the same verdict as Check. Unlike Check it reads manifests without
// counting as a use of them, so that listing the cache does not change what eviction removes
// first. It sends nothing upstream. Errors are Check's.
func (p *Planner) Inspect(ctx context.Context, ref string, platform platforms.MatchComparer) (ImageSummary, error) {
	ir, err := parseImageRef(ref)
	if err != nil {
		return ImageSummary{}, err
	}
	sum := ImageSummary{Readiness: Readiness{Ref: ir.name, Missing: []string{}}, Platforms: []string{}}
	root := ocispec.Descriptor{Digest: ir.digest}
	if ir.digest == "" {
		cached, err := p.r.Local().Tag(ctx, ir.repoKey()+":"+ir.tag)
		if errdefs.IsNotFound(err) {
			sum.missing("tag "+ir.name, 0)
			sum.Partial = true
			return sum, nil
		}
		if err != nil {
			return ImageSummary{}, err
		}
		root = cached.Target
	}
	sum.Digest = root.Digest
	if err := p.inspectManifest(ctx, ir.repoKey(), root, platform, &sum, 0); err != nil {
		return ImageSummary{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	sum.Ready = len(sum.Missing) == 0
	return sum, nil
}

// inspectManifest is checkManifest reading through peekManifest, noting the image's platforms
// on the way.
func (p *Planner) inspectManifest(ctx context.Context, repoKey string, desc ocispec.Descriptor, platform platforms.MatchComparer, sum *ImageSummary, depth int) error {
	m, err := p.r.Local().Manifest(ctx, repoKey, desc, resolver.Read{Peek: true})
	if errdefs.IsNotFound(err) {
		sum.missing("manifest "+describe(desc), desc.Size)
		sum.Partial = true
		return nil
	}
	if err != nil {
		return err
	}
	if images.IsIndexType(m.Descriptor.MediaType) {
		if depth == 0 {
			sum.Platforms = indexPlatforms(m)
		}
		child, ok, err := platformManifest(m, platform, depth)
		if err != nil {
			return err
		}
		if !ok {
			sum.Missing = append(sum.Missing, "platform: index "+m.Descriptor.Digest.String()+" has no manifest for it")
			return nil
		}
		return p.inspectManifest(ctx, repoKey, child, platform, sum, depth+1)
	}
	blobs, err := imageBlobs(m)
	if err != nil {
		return err
	}
	if depth == 0 {
		sum.Platforms = p.configPlatforms(ctx, blobs[0].Descriptor)
	}
	for _, b := range blobs {
		if ok, err := p.r.Local().HasBlob(ctx, repoKey, b.Digest); err != nil {
			return err
		} else if !ok {
			sum.missing(b.kind+" "+describe(b.Descriptor), b.Size)
		}
	}
	return nil
}

// indexPlatforms lists the platforms of index m's manifests, in index order, each once.
func indexPlatforms(m resolver.Manifest) []string {
	out := []string{}
	var idx ocispec.Index
	if json.Unmarshal(m.Body, &idx) != nil {
		return out
	}
	for _, d := range idx.Manifests {
		if d.Platform == nil || d.Platform.OS == "unknown" || d.Platform.OS == "" {
			continue
		}
		if p := platforms.Format(*d.Platform); !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// configPlatforms reads the platform of an image from its config, if the config is cached.
func (p *Planner) configPlatforms(ctx context.Context, config ocispec.Descriptor) []string {
	b, err := p.store.Peek(ctx, config.Digest, oci.MaxManifestSize)
	if err != nil {
		return []string{}
	}
	var img ocispec.Image
	if json.Unmarshal(b, &img) != nil || img.OS == "" || img.Architecture == "" {
		return []string{}
	}
	return []string{platforms.Format(img.Platform)}
}
