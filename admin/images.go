package admin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/plan"
)

// ImagesRequest asks for the cached images.
type ImagesRequest struct {
	// Platform is the one COMPLETE is judged for ("linux/amd64"); the daemon's own if empty.
	Platform string `json:"platform,omitempty"`
}

// ImagesReport lists the cached images, sorted by ref.
type ImagesReport struct {
	Platform string  `json:"platform"`
	Images   []Image `json:"images"`
	// Cluster is true when the cluster tier is on and Image.Peers was asked for.
	Cluster bool `json:"cluster,omitempty"`
}

// Image is one cached ref.
type Image struct {
	// Ref is the normalized name ("docker.io/library/alpine:3.20").
	Ref string `json:"ref"`
	// Digest is what Ref resolves to in the cache: an index or a manifest.
	Digest digest.Digest `json:"digest"`
	// Platforms are those of an index's manifests, or the one of a lone manifest's config;
	// empty when what would tell is not cached.
	Platforms []string `json:"platforms"`
	// Size adds up the cached blobs reachable from the ref.
	Size int64 `json:"size"`
	// LastUsed is when the ref was last verified or its target read, as eviction orders refs.
	LastUsed time.Time `json:"lastUsed"`
	Pinned   bool      `json:"pinned"`
	// Complete is true when everything a pull for the report's platform needs is cached.
	Complete bool `json:"complete"`
	// Missing says what a pull would lack, as a drill does; empty when Complete.
	Missing []string `json:"missing"`
	// Error says why the image could not be inspected; it is then not complete.
	Error string `json:"error,omitempty"`
	// Peers name the peers of the cluster that hold Digest, sorted; absent when the cluster
	// tier is off or could not tell in time.
	Peers []string `json:"peers,omitempty"`
}

// RefRequest names a cached image ("alpine:3.20" is normalized).
type RefRequest struct {
	Ref string `json:"ref"`
}

// RefResult says what pin, unpin or rm did to a ref.
type RefResult struct {
	// Ref is the normalized name.
	Ref    string        `json:"ref"`
	Digest digest.Digest `json:"digest"`
	// Pinned is whether the ref is pinned now (false after rm).
	Pinned bool `json:"pinned"`
	// Changed is false when there was nothing to do (pin of a pinned ref, unpin of an unpinned
	// one).
	Changed bool `json:"changed"`
}

// GCRequest asks for an eviction pass now.
type GCRequest struct {
	DryRun bool `json:"dryRun,omitempty"`
}

// GCReport says what an eviction pass removed or, in a dry run, would remove.
type GCReport struct {
	DryRun bool `json:"dryRun"`
	cache.EvictionPlan
	// UsedBytes is the cache's usage after the pass (before it, in a dry run).
	UsedBytes   int64 `json:"usedBytes"`
	BudgetBytes int64 `json:"budgetBytes"`
	// TargetBytes is the usage the pass brings the cache down to: the low watermark.
	TargetBytes int64 `json:"targetBytes"`
}

// VerifyRequest asks for every cached blob to be rehashed.
type VerifyRequest struct {
	// Repair quarantines corrupt blobs and drops them and missing ones from the index, so that
	// the next use fetches them again.
	Repair bool `json:"repair,omitempty"`
}

// parsePlatform parses a platform, the daemon's own if p is empty.
func parsePlatform(p string) (ocispec.Platform, error) {
	if p == "" {
		return platforms.DefaultSpec(), nil
	}
	spec, err := platforms.Parse(p)
	if err != nil {
		return spec, fmt.Errorf("platform %q: %v: %w", p, err, errdefs.ErrInvalidArgument)
	}
	return spec, nil
}

// Images lists the cached refs with what they hold, from the cache alone. Listing is not a use
// of the images: it changes nothing eviction goes by.
func (s *Service) Images(ctx context.Context, req ImagesRequest) (ImagesReport, error) {
	spec, err := parsePlatform(req.Platform)
	if err != nil {
		return ImagesReport{}, err
	}
	platform := platforms.Only(spec)
	usages, err := s.Store.RefUsages(ctx)
	if err != nil {
		return ImagesReport{}, fmt.Errorf("list cached images: %w", err)
	}
	rep := ImagesReport{Platform: platforms.FormatAll(platforms.Normalize(spec)), Images: make([]Image, 0, len(usages))}
	for _, u := range usages {
		img := Image{
			Ref: u.Name, Digest: u.Target.Digest, Platforms: []string{}, Size: u.Size,
			LastUsed: u.LastUsed, Pinned: u.Pinned, Missing: []string{},
		}
		sum, err := s.plans().Inspect(ctx, u.Name, platform)
		switch {
		case ctx.Err() != nil:
			return ImagesReport{}, ctx.Err()
		case err != nil:
			img.Error = err.Error()
		default:
			img.Platforms, img.Complete, img.Missing = sum.Platforms, sum.Ready, sum.Missing
		}
		rep.Images = append(rep.Images, img)
	}
	slices.SortFunc(rep.Images, func(a, b Image) int { return strings.Compare(a.Ref, b.Ref) })
	if s.Peers != nil {
		rep.Cluster = true
		dgsts := make([]digest.Digest, 0, len(rep.Images))
		for _, img := range rep.Images {
			dgsts = append(dgsts, img.Digest)
		}
		held := s.holders(ctx, dgsts)
		for i, img := range rep.Images {
			rep.Images[i].Peers = held[img.Digest]
		}
	}
	return rep, nil
}

// cachedRef normalizes the request's ref and returns it as cached. An uncached ref gives
// ErrNotFound; a malformed one ErrInvalidArgument.
func (s *Service) cachedRef(ctx context.Context, req RefRequest) (cache.Ref, error) {
	name, err := plan.NormalizeRef(req.Ref)
	if err != nil {
		return cache.Ref{}, err
	}
	ref, err := s.Store.GetRef(ctx, name)
	if errdefs.IsNotFound(err) {
		return cache.Ref{}, fmt.Errorf("%s is not cached: %w", name, errdefs.ErrNotFound)
	}
	return ref, err
}

// Pin keeps the image and every blob it reaches out of eviction.
func (s *Service) Pin(ctx context.Context, req RefRequest) (RefResult, error) {
	ref, err := s.cachedRef(ctx, req)
	if err != nil {
		return RefResult{}, err
	}
	if err := s.Store.Pin(ctx, ref.Name); err != nil {
		return RefResult{}, err
	}
	log.G(ctx).WithField("ref", ref.Name).Info("pinned")
	return RefResult{Ref: ref.Name, Digest: ref.Target.Digest, Pinned: true, Changed: !ref.Pinned}, nil
}

// Unpin makes the image evictable again. Unpinning a ref that is not pinned changes nothing.
func (s *Service) Unpin(ctx context.Context, req RefRequest) (RefResult, error) {
	ref, err := s.cachedRef(ctx, req)
	if err != nil {
		return RefResult{}, err
	}
	err = s.Store.Unpin(ctx, ref.Name)
	if err != nil && !errdefs.IsNotFound(err) {
		return RefResult{}, err
	}
	if err == nil {
		log.G(ctx).WithField("ref", ref.Name).Info("unpinned")
	}
	return RefResult{Ref: ref.Name, Digest: ref.Target.Digest, Changed: err == nil}, nil
}

// Remove forgets the ref and its pin. Its blobs stay cached until eviction removes them.
func (s *Service) Remove(ctx context.Context, req RefRequest) (RefResult, error) {
	ref, err := s.cachedRef(ctx, req)
	if err != nil {
		return RefResult{}, err
	}
	if err := s.Store.DeleteRef(ctx, ref.Name); errdefs.IsNotFound(err) {
		return RefResult{}, fmt.Errorf("%s is not cached: %w", ref.Name, errdefs.ErrNotFound)
	} else if err != nil {
		return RefResult{}, err
	}
	log.G(ctx).WithField("ref", ref.Name).Info("removed from the cached images")
	return RefResult{Ref: ref.Name, Digest: ref.Target.Digest, Changed: true}, nil
}

// GC runs an eviction pass now, down to the low watermark.
func (s *Service) GC(ctx context.Context, req GCRequest) (GCReport, error) {
	target := s.Store.EvictTarget()
	plan, err := s.Store.GC(ctx, req.DryRun)
	if err != nil {
		return GCReport{}, fmt.Errorf("eviction: %w", err)
	}
	if plan.Refs == nil {
		plan.Refs = []string{}
	}
	if plan.Blobs == nil {
		plan.Blobs = []digest.Digest{}
	}
	used, budget := s.Store.Usage()
	log.G(ctx).WithFields(log.Fields{"dry_run": req.DryRun, "refs": len(plan.Refs), "blobs": len(plan.Blobs), "bytes": plan.Bytes, "used": used}).Info("gc")
	return GCReport{DryRun: req.DryRun, EvictionPlan: plan, UsedBytes: used, BudgetBytes: budget, TargetBytes: target}, nil
}

// Verify rehashes every cached blob and, with Repair, removes the bad ones.
func (s *Service) Verify(ctx context.Context, req VerifyRequest) (cache.VerifyReport, error) {
	rep, err := s.Store.Verify(ctx, req.Repair)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return rep, err
		}
		return rep, fmt.Errorf("verify: %w", err)
	}
	if rep.Corrupt == nil {
		rep.Corrupt = []digest.Digest{}
	}
	if rep.Missing == nil {
		rep.Missing = []digest.Digest{}
	}
	log.G(ctx).WithFields(log.Fields{"checked": rep.Checked, "corrupt": len(rep.Corrupt), "missing": len(rep.Missing), "repair": req.Repair}).Info("verify")
	return rep, nil
}
