package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/resolver"
)

// walk is the one walk down an image: from its root through indexes to the image manifests a
// pull fetches, and their configs and layers, no deeper than maxIndexDepth indexes. Every plan
// is one: Check and Inspect read the cache (Check as a use, Inspect a peek), the peer check
// reads the cache or else the peers, Warm and PlanPull read through the mirror's paths; each
// gathers what it is after in its accumulator.
type walk struct {
	read     reader
	children chooser
	acc      accumulator
}

// A reader reads the manifest desc, which index names ("" for the root). ok is false when the
// manifest cannot be had, which is no error: the walk tells its accumulator and goes no deeper
// there.
type reader func(ctx context.Context, index digest.Digest, desc ocispec.Descriptor) (m resolver.Manifest, ok bool, err error)

// A chooser chooses the manifests of index m, at depth, that the walk follows: the platform's
// (platformChild) or all of them (everyChild). ok is false when none is for the platform.
type chooser func(m resolver.Manifest, depth int) (_ []ocispec.Descriptor, ok bool, _ error)

// An accumulator gathers what a walk finds. An error it returns ends the walk with that error.
type accumulator interface {
	// unread is told that the manifest desc could not be read.
	unread(desc ocispec.Descriptor)
	// noPlatform is told that index has no manifest for the platform.
	noPlatform(index resolver.Manifest) error
	// manifest is told of each manifest read, at its depth (0 for the root): an index, with
	// nil blobs, before the walk follows its manifests (unless deeper is false), or an image
	// manifest with its config and layers.
	manifest(ctx context.Context, m resolver.Manifest, depth int, blobs []blob) (deeper bool, _ error)
}

// maxIndexDepth bounds indexes nested in indexes.
const maxIndexDepth = 4

// from walks down from root, read with w.read.
func (w walk) from(ctx context.Context, root ocispec.Descriptor) error {
	m, ok, err := w.read(ctx, "", root)
	if err != nil {
		return err
	}
	if !ok {
		w.acc.unread(root)
		return nil
	}
	return w.down(ctx, m, 0)
}

// down walks down from m, read at depth.
func (w walk) down(ctx context.Context, m resolver.Manifest, depth int) error {
	if !images.IsIndexType(m.Descriptor.MediaType) {
		blobs, err := imageBlobs(m)
		if err != nil {
			return err
		}
		_, err = w.acc.manifest(ctx, m, depth, blobs)
		return err
	}
	if deeper, err := w.acc.manifest(ctx, m, depth, nil); err != nil || !deeper {
		return err
	}
	children, ok, err := w.children(m, depth)
	if err != nil {
		return err
	}
	if !ok {
		return w.acc.noPlatform(m)
	}
	for _, c := range children {
		cm, ok, err := w.read(ctx, m.Descriptor.Digest, c)
		if err != nil {
			return err
		}
		if !ok {
			w.acc.unread(c)
			continue
		}
		if err := w.down(ctx, cm, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// cached reads manifests from this node's cache, linked to repoKey, as how says.
func (p *Planner) cached(repoKey string, how resolver.Read) reader {
	return func(ctx context.Context, _ digest.Digest, desc ocispec.Descriptor) (resolver.Manifest, bool, error) {
		m, err := p.r.Local().Manifest(ctx, repoKey, desc, how)
		if errdefs.IsNotFound(err) {
			return resolver.Manifest{}, false, nil
		}
		if err != nil {
			return resolver.Manifest{}, false, err
		}
		return m, true, nil
	}
}

// platformChild follows the manifest a pull for platform fetches (platformManifest).
func platformChild(platform platforms.MatchComparer) chooser {
	return func(m resolver.Manifest, depth int) ([]ocispec.Descriptor, bool, error) {
		child, ok, err := platformManifest(m, platform, depth)
		if err != nil || !ok {
			return nil, ok, err
		}
		return []ocispec.Descriptor{child}, true, nil
	}
}

// everyChild follows every manifest of an index.
func everyChild(m resolver.Manifest, depth int) ([]ocispec.Descriptor, bool, error) {
	if err := checkDepth(m, depth); err != nil {
		return nil, false, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(m.Body, &idx); err != nil {
		return nil, false, fmt.Errorf("index %s: %v: %w", m.Descriptor.Digest, err, errdefs.ErrDataLoss)
	}
	return idx.Manifests, true, nil
}

// checkDepth refuses index m at depth when it is nested too deep.
func checkDepth(m resolver.Manifest, depth int) error {
	if depth >= maxIndexDepth {
		return fmt.Errorf("index %s: indexes nested more than %d deep: %w", m.Descriptor.Digest, maxIndexDepth, errdefs.ErrNotImplemented)
	}
	return nil
}

// platformManifest chooses the manifest a containerd pull of index m for platform fetches, as
// containerd's images.FilterPlatforms and images.LimitManifests do: the best match, entries
// without a platform last. ok is false if nothing matches.
func platformManifest(m resolver.Manifest, platform platforms.MatchComparer, depth int) (_ ocispec.Descriptor, ok bool, _ error) {
	if err := checkDepth(m, depth); err != nil {
		return ocispec.Descriptor{}, false, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(m.Body, &idx); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("cached index %s: %v: %w", m.Descriptor.Digest, err, errdefs.ErrDataLoss)
	}
	var descs []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if d.Platform == nil || platform.Match(*d.Platform) {
			descs = append(descs, d)
		}
	}
	if len(descs) == 0 {
		return ocispec.Descriptor{}, false, nil
	}
	sort.SliceStable(descs, func(i, j int) bool {
		if descs[i].Platform == nil {
			return false
		}
		if descs[j].Platform == nil {
			return true
		}
		return platform.Less(*descs[i].Platform, *descs[j].Platform)
	})
	return descs[0], true, nil
}

// blob is a blob an image manifest refers to: its config or one of its layers.
type blob struct {
	kind string // "config" or "layer"
	ocispec.Descriptor
}

// imageBlobs lists the config and layers of image manifest m, which a pull fetches.
func imageBlobs(m resolver.Manifest) ([]blob, error) {
	if !images.IsManifestType(m.Descriptor.MediaType) {
		return nil, fmt.Errorf("manifest %s has media type %q, which containerd does not pull: %w", m.Descriptor.Digest, m.Descriptor.MediaType, errdefs.ErrNotImplemented)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(m.Body, &man); err != nil {
		return nil, fmt.Errorf("cached manifest %s: %v: %w", m.Descriptor.Digest, err, errdefs.ErrDataLoss)
	}
	blobs := []blob{{"config", man.Config}}
	for _, l := range man.Layers {
		blobs = append(blobs, blob{"layer", l})
	}
	return blobs, nil
}

// describe names a descriptor for a Readiness: "sha256:...", "sha256:... for linux/arm64".
func describe(d ocispec.Descriptor) string {
	s := d.Digest.String()
	if d.Platform != nil {
		s += " for " + platforms.FormatAll(*d.Platform)
	}
	return s
}
