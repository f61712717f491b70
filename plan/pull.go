package plan

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

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
	children := platformChild(platform)
	if all {
		children = everyChild
	}
	w := walk{read: p.fromMirror(ir), children: children, acc: planning{plan: &plan, seen: map[digest.Digest]bool{}}}
	if err := w.down(ctx, m, 0); err != nil {
		return PullPlan{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	return plan, nil
}

// fetching is what the accumulators of the walks that read through the mirror's paths (Warm,
// PlanPull) share: a manifest is read or the walk fails, and an index without the platform's
// manifest is errdefs.ErrNotFound.
type fetching struct{}

func (fetching) unread(ocispec.Descriptor) {} // not called: a read through the mirror fails instead

func (fetching) noPlatform(index resolver.Manifest) error {
	return fmt.Errorf("index %s has no manifest for the platform: %w", index.Descriptor.Digest, errdefs.ErrNotFound)
}

// planning is the accumulator of PlanPull's walk: it adds the manifests and blobs a pull
// fetches to plan, each once.
type planning struct {
	fetching
	plan *PullPlan
	seen map[digest.Digest]bool
}

func (a planning) manifest(_ context.Context, m resolver.Manifest, _ int, blobs []blob) (bool, error) {
	if a.seen[m.Descriptor.Digest] {
		return false, nil
	}
	a.seen[m.Descriptor.Digest] = true
	a.plan.Size += m.Descriptor.Size
	a.plan.manifestBytes += m.Descriptor.Size
	if images.IsIndexType(m.Descriptor.MediaType) {
		return true, nil
	}
	a.plan.Manifests = append(a.plan.Manifests, m.Descriptor)
	for _, b := range blobs {
		if err := checkDigest(b.Digest); err != nil {
			return false, fmt.Errorf("manifest %s names its %s by an %w", m.Descriptor.Digest, b.kind, err)
		}
		if !a.seen[b.Digest] {
			a.seen[b.Digest] = true
			a.plan.Blobs = append(a.plan.Blobs, b.Descriptor)
			a.plan.Size += b.Size
		}
	}
	return true, nil
}

// fromMirror reads the manifests an index of ir names through the mirror's own path (see
// childManifest).
func (p *Planner) fromMirror(ir imageRef) reader {
	return func(ctx context.Context, index digest.Digest, desc ocispec.Descriptor) (resolver.Manifest, bool, error) {
		m, err := p.childManifest(ctx, ir, index, desc)
		if err != nil {
			return resolver.Manifest{}, false, err
		}
		return m, true, nil
	}
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

// warmConcurrency is how many blobs Warm fetches at once (containerd's default for a pull).
const warmConcurrency = 3

// Warm fetches into the cache whatever a pull of ref for platform needs and the cache lacks,
// through the same paths as the mirror: the tag (revalidated as usual), the index, the
// platform's manifest, then the config and the layers, each read to its end. It returns once
// all of it is committed, so that Check finds it. Errors are those of Manifest and Blob:
// errdefs.ErrNotFound when something is neither cached nor obtainable from upstream.
func (p *Planner) Warm(ctx context.Context, ref string, platform platforms.MatchComparer) error {
	ir, err := parseImageRef(ref)
	if err != nil {
		return err
	}
	m, err := p.r.Manifest(ctx, ir.registry, ir.repository, ir.reference())
	if err != nil {
		return fmt.Errorf("%s: %w", ir.name, err)
	}
	var image warming
	w := walk{read: p.fromMirror(ir), children: platformChild(platform), acc: &image}
	if err := w.down(ctx, m, 0); err != nil {
		return fmt.Errorf("%s: %w", ir.name, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(warmConcurrency)
	for _, b := range image.blobs {
		g.Go(func() error {
			if ok, err := p.r.Local().HasBlob(gctx, ir.repoKey(), b.Digest); err != nil || ok {
				return err
			}
			if err := p.r.FetchBlob(gctx, ir.registry, ir.repository, b.Digest); err != nil {
				return fmt.Errorf("%s: %s %s: %w", ir.name, b.kind, b.Digest, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// warming is the accumulator of Warm's walk: it keeps the config and layers of the platform's
// image manifest.
type warming struct {
	fetching
	blobs []blob
}

func (a *warming) manifest(_ context.Context, _ resolver.Manifest, _ int, blobs []blob) (bool, error) {
	if blobs != nil {
		a.blobs = blobs
	}
	return true, nil
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
