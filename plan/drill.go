package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dev/lifeboat/internal/size"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Readiness says whether lifeboat alone, with every upstream down, could serve a complete pull
// of an image for a platform.
type Readiness struct {
	// Ref is the normalized reference checked ("docker.io/library/alpine:3.20").
	Ref string `json:"ref"`
	// Ready is true when everything a pull needs is cached and linked to the repository.
	Ready bool `json:"ready"`
	// Missing lists what a pull would fail on, one short item each, in pull order: "tag
	// docker.io/library/alpine:3.20", "manifest sha256:... for linux/arm64 (1.6 KiB)", "layer
	// sha256:... (3.1 MiB)". Empty, never null, when Ready.
	Missing []string `json:"missing"`
	// MissingBytes adds up the sizes of the missing items, from their descriptors.
	MissingBytes int64 `json:"missingBytes"`
	// Partial means something missing (the tag, a manifest) hides what lies beneath it: more
	// may be missing than is listed, and MissingBytes is a lower bound.
	Partial bool `json:"partial"`
	// ServedBy says who could serve the pull with every upstream down: ServedByThisNode,
	// "peer <name>" ("peers <a>, <b>" when several hold what this node lacks) when the
	// cluster's peers hold all that this node lacks, or ServedByNothing. Check sets it.
	ServedBy string `json:"servedBy,omitempty"`
	// Peers names the peers that hold what this node lacks, when they hold all of it.
	Peers []string `json:"peers,omitempty"`
}

// What can serve an image (Readiness.ServedBy), besides "peer <name>".
const (
	ServedByThisNode = "this node"
	ServedByNothing  = "nothing"
)

func (rd *Readiness) missing(item string, n int64) {
	if n > 0 {
		item += " (" + size.Format(n) + ")"
	}
	rd.Missing = append(rd.Missing, item)
	rd.MissingBytes += max(n, 0)
}

// maxIndexDepth bounds indexes nested in indexes.
const maxIndexDepth = 4

// Check decides, from the cache alone, whether lifeboat could serve a complete pull of ref for
// platform with every upstream down: the tag as cached (what a stale answer would serve), the
// index, the platform's manifest chosen from it as containerd chooses, the config and every
// layer, each cached and linked to the repository. It sends nothing upstream, whatever the
// state of the upstreams, so it is safe to run on a production node at any time. With a
// cluster, for an image this node cannot serve alone, it asks the peers who holds what it
// lacks (reading the tag and manifests it lacks from them, without caching them), and says in
// Readiness.ServedBy whether the peers could serve it.
//
// What is missing is a Readiness, not an error. Errors: errdefs.ErrInvalidArgument for a
// malformed reference; errdefs.ErrNotImplemented for a cached manifest of a kind containerd
// cannot pull either; anything else is an internal error.
func (p *Planner) Check(ctx context.Context, ref string, platform platforms.MatchComparer) (Readiness, error) {
	ir, err := parseImageRef(ref)
	if err != nil {
		return Readiness{}, err
	}
	rd := Readiness{Ref: ir.name, Missing: []string{}}
	root := ocispec.Descriptor{Digest: ir.digest}
	if ir.digest == "" {
		cached, err := p.r.Local().Tag(ctx, ir.repoKey()+":"+ir.tag)
		if errdefs.IsNotFound(err) {
			rd.missing("tag "+ir.name, 0)
			rd.Partial = true
			if err := p.checkServedBy(ctx, ir, platform, &rd); err != nil {
				return Readiness{}, fmt.Errorf("%s: %w", ir.name, err)
			}
			return rd, nil
		}
		if err != nil {
			return Readiness{}, err
		}
		root = cached.Target
	}
	if err := p.checkManifest(ctx, ir.repoKey(), root, platform, &rd, 0); err != nil {
		return Readiness{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	rd.Ready = len(rd.Missing) == 0
	if err := p.checkServedBy(ctx, ir, platform, &rd); err != nil {
		return Readiness{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	return rd, nil
}

// checkManifest checks desc, an index or a manifest, and what a pull would fetch below it.
func (p *Planner) checkManifest(ctx context.Context, repoKey string, desc ocispec.Descriptor, platform platforms.MatchComparer, rd *Readiness, depth int) error {
	m, err := p.r.Local().Manifest(ctx, repoKey, desc, resolver.Read{})
	if errdefs.IsNotFound(err) {
		rd.missing("manifest "+describe(desc), desc.Size)
		rd.Partial = true
		return nil
	}
	if err != nil {
		return err
	}
	if images.IsIndexType(m.Descriptor.MediaType) {
		child, ok, err := platformManifest(m, platform, depth)
		if err != nil {
			return err
		}
		if !ok {
			rd.Missing = append(rd.Missing, "platform: index "+m.Descriptor.Digest.String()+" has no manifest for it")
			return nil
		}
		return p.checkManifest(ctx, repoKey, child, platform, rd, depth+1)
	}
	blobs, err := imageBlobs(m)
	if err != nil {
		return err
	}
	for _, b := range blobs {
		if ok, err := p.r.Local().HasBlob(ctx, repoKey, b.Digest); err != nil {
			return err
		} else if !ok {
			rd.missing(b.kind+" "+describe(b.Descriptor), b.Size)
		}
	}
	return nil
}

// platformManifest chooses the manifest a containerd pull of index m for platform fetches, as
// containerd's images.FilterPlatforms and images.LimitManifests do: the best match, entries
// without a platform last. ok is false if nothing matches.
func platformManifest(m resolver.Manifest, platform platforms.MatchComparer, depth int) (_ ocispec.Descriptor, ok bool, _ error) {
	if depth >= maxIndexDepth {
		return ocispec.Descriptor{}, false, fmt.Errorf("index %s: indexes nested more than %d deep: %w", m.Descriptor.Digest, maxIndexDepth, errdefs.ErrNotImplemented)
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
	for depth := 0; images.IsIndexType(m.Descriptor.MediaType); depth++ {
		child, ok, err := platformManifest(m, platform, depth)
		if err != nil {
			return fmt.Errorf("%s: %w", ir.name, err)
		}
		if !ok {
			return fmt.Errorf("%s: index %s has no manifest for the platform: %w", ir.name, m.Descriptor.Digest, errdefs.ErrNotFound)
		}
		if m, err = p.childManifest(ctx, ir, m.Descriptor.Digest, child); err != nil {
			return fmt.Errorf("%s: %w", ir.name, err)
		}
	}
	blobs, err := imageBlobs(m)
	if err != nil {
		return fmt.Errorf("%s: %w", ir.name, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(warmConcurrency)
	for _, b := range blobs {
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

// peerCheckTimeout bounds what Check asks the peers about one image.
const peerCheckTimeout = 10 * time.Second

// checkServedBy sets rd.ServedBy: this node when it is ready, else, with a cluster, the peers
// when they hold all this node lacks (see checkPeers), else nothing.
func (p *Planner) checkServedBy(ctx context.Context, ir imageRef, platform platforms.MatchComparer, rd *Readiness) error {
	if rd.Ready {
		rd.ServedBy = ServedByThisNode
		return nil
	}
	rd.ServedBy = ServedByNothing
	peers := p.r.PeersFor(ir.registry)
	if peers == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, peerCheckTimeout)
	defer cancel()
	holders := map[string]bool{}
	ok, err := p.checkPeers(pctx, peers, ir, platform, holders)
	if err != nil || !ok {
		return err
	}
	rd.Peers = slices.Sorted(maps.Keys(holders))
	rd.ServedBy = "peer " + rd.Peers[0]
	if len(rd.Peers) > 1 {
		rd.ServedBy = "peers " + strings.Join(rd.Peers, ", ")
	}
	return nil
}

// checkPeers reports whether this node with its peers could serve a complete pull of ir for
// platform with every upstream down: each thing this node lacks held by a peer (added to
// holders). The tag and manifests it lacks it reads from the peers (verified, not cached) to
// learn what lies beneath them; for blobs it asks who holds them.
func (p *Planner) checkPeers(ctx context.Context, peers resolver.Peers, ir imageRef, platform platforms.MatchComparer, holders map[string]bool) (bool, error) {
	root := ocispec.Descriptor{Digest: ir.digest}
	if ir.digest == "" {
		cached, err := p.r.Local().Tag(ctx, ir.repoKey()+":"+ir.tag)
		switch {
		case err == nil:
			root = cached.Target
		case errdefs.IsNotFound(err):
			dgst, _, err := peers.Tag(ctx, ir.registry, ir.repository, ir.tag)
			if err != nil {
				logPeerCheck(ctx, err, "tag "+ir.name)
				return false, nil
			}
			root = ocispec.Descriptor{Digest: dgst}
		default:
			return false, err
		}
	}
	return p.checkPeerManifest(ctx, peers, ir, root, platform, holders, 0)
}

// checkPeerManifest is checkManifest for checkPeers.
func (p *Planner) checkPeerManifest(ctx context.Context, peers resolver.Peers, ir imageRef, desc ocispec.Descriptor, platform platforms.MatchComparer, holders map[string]bool, depth int) (bool, error) {
	if checkDigest(desc.Digest) != nil {
		return false, nil
	}
	m, err := p.r.Local().Manifest(ctx, ir.repoKey(), desc, resolver.Read{})
	if errdefs.IsNotFound(err) {
		pm, peer, perr := resolver.PeerManifest(ctx, peers, ir.registry, ir.repository, desc.Digest)
		if perr != nil {
			logPeerCheck(ctx, perr, "manifest "+desc.Digest.String())
			return false, nil
		}
		m, err = pm, nil
		holders[peer] = true
	}
	if err != nil {
		return false, err
	}
	if images.IsIndexType(m.Descriptor.MediaType) {
		child, ok, err := platformManifest(m, platform, depth)
		if err != nil || !ok {
			return false, err
		}
		return p.checkPeerManifest(ctx, peers, ir, child, platform, holders, depth+1)
	}
	blobs, err := imageBlobs(m)
	if err != nil {
		return false, err
	}
	for _, b := range blobs {
		if ok, err := p.r.Local().HasBlob(ctx, ir.repoKey(), b.Digest); err != nil {
			return false, err
		} else if ok {
			continue
		}
		hs, err := peers.Holders(ctx, b.Digest)
		if err != nil || len(hs) == 0 {
			if err == nil {
				err = fmt.Errorf("no peer holds it: %w", errdefs.ErrNotFound)
			}
			logPeerCheck(ctx, err, b.kind+" "+b.Digest.String())
			return false, nil
		}
		holders[hs[0]] = true
	}
	return true, nil
}

// logPeerCheck logs, at Debug, why the peers cannot serve what of an image.
func logPeerCheck(ctx context.Context, err error, what string) {
	log.G(ctx).WithError(err).WithField("what", what).Debug("drill: the peers cannot serve it")
}
