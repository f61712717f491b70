package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containerd/containerd/v2/core/images"
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
	root, ok, err := p.cachedRoot(ctx, ir)
	if err != nil {
		return ImageSummary{}, err
	}
	if !ok {
		sum.missingTag(ir)
		return sum, nil
	}
	sum.Digest = root.Digest
	acc := summary{lacks: lacks{local: p.r.Local(), repoKey: ir.repoKey(), rd: &sum.Readiness}, p: p, sum: &sum}
	w := walk{read: p.cached(ir.repoKey(), resolver.Read{Peek: true}), children: platformChild(platform), acc: acc}
	if err := w.from(ctx, root); err != nil {
		return ImageSummary{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	sum.Ready = len(sum.Missing) == 0
	return sum, nil
}

// summary is lacks noting, on the way, the image's platforms from its root: an index's, or
// those in a lone manifest's config.
type summary struct {
	lacks
	p   *Planner
	sum *ImageSummary
}

func (a summary) manifest(ctx context.Context, m resolver.Manifest, depth int, blobs []blob) (bool, error) {
	if depth == 0 {
		if images.IsIndexType(m.Descriptor.MediaType) {
			a.sum.Platforms = indexPlatforms(m)
		} else {
			a.sum.Platforms = a.p.configPlatforms(ctx, blobs[0].Descriptor)
		}
	}
	return a.lacks.manifest(ctx, m, depth, blobs)
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
