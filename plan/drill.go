package plan

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

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
	root, ok, err := p.cachedRoot(ctx, ir)
	if err != nil {
		return Readiness{}, err
	}
	if ok {
		acc := lacks{local: p.r.Local(), repoKey: ir.repoKey(), rd: &rd}
		w := walk{read: p.cached(ir.repoKey(), resolver.Read{}), children: platformChild(platform), acc: acc}
		if err := w.from(ctx, root); err != nil {
			return Readiness{}, fmt.Errorf("%s: %w", ir.name, err)
		}
	} else {
		rd.missingTag(ir)
	}
	rd.Ready = len(rd.Missing) == 0
	if err := p.checkServedBy(ctx, ir, platform, &rd); err != nil {
		return Readiness{}, fmt.Errorf("%s: %w", ir.name, err)
	}
	return rd, nil
}

// cachedRoot is what ir names in this node's cache: its digest, or the target of its tag as
// cached. ok is false when the tag is not cached.
func (p *Planner) cachedRoot(ctx context.Context, ir imageRef) (_ ocispec.Descriptor, ok bool, _ error) {
	if ir.digest != "" {
		return ocispec.Descriptor{Digest: ir.digest}, true, nil
	}
	cached, err := p.r.Local().Tag(ctx, ir.repoKey()+":"+ir.tag)
	if errdefs.IsNotFound(err) {
		return ocispec.Descriptor{}, false, nil
	}
	if err != nil {
		return ocispec.Descriptor{}, false, err
	}
	return cached.Target, true, nil
}

// missingTag notes that ir's tag is not cached, which hides all that lies beneath it.
func (rd *Readiness) missingTag(ir imageRef) {
	rd.missing("tag "+ir.name, 0)
	rd.Partial = true
}

// lacks is the accumulator of a walk that notes in rd what a pull from repository repoKey would
// lack from this node's cache: manifests that are not cached, an index without the platform's
// manifest, and configs and layers that are not cached.
type lacks struct {
	local   resolver.Local
	repoKey string
	rd      *Readiness
}

func (a lacks) unread(desc ocispec.Descriptor) {
	a.rd.missing("manifest "+describe(desc), desc.Size)
	a.rd.Partial = true
}

func (a lacks) noPlatform(index resolver.Manifest) error {
	a.rd.Missing = append(a.rd.Missing, "platform: index "+index.Descriptor.Digest.String()+" has no manifest for it")
	return nil
}

func (a lacks) manifest(ctx context.Context, _ resolver.Manifest, _ int, blobs []blob) (bool, error) {
	for _, b := range blobs {
		if ok, err := a.local.HasBlob(ctx, a.repoKey, b.Digest); err != nil {
			return false, err
		} else if !ok {
			a.rd.missing(b.kind+" "+describe(b.Descriptor), b.Size)
		}
	}
	return true, nil
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
	root, ok, err := p.cachedRoot(ctx, ir)
	if err != nil {
		return false, err
	}
	if !ok {
		dgst, _, err := peers.Tag(ctx, ir.registry, ir.repository, ir.tag)
		if err != nil {
			logPeerCheck(ctx, err, "tag "+ir.name)
			return false, nil
		}
		root = ocispec.Descriptor{Digest: dgst}
	}
	acc := &peerHolders{local: p.r.Local(), peers: peers, ir: ir, holders: holders, served: true}
	w := walk{read: acc.read, children: platformChild(platform), acc: acc}
	if err := w.from(ctx, root); err != nil {
		return false, err
	}
	return acc.served, nil
}

// peerHolders is the accumulator, and the reader, of a walk that notes who holds what this
// node lacks of ir: manifests it reads from the cache or else from a peer, blobs it asks the
// peers about. served turns false at the first thing no peer can serve.
type peerHolders struct {
	local   resolver.Local
	peers   resolver.Peers
	ir      imageRef
	holders map[string]bool
	served  bool
}

func (a *peerHolders) read(ctx context.Context, _ digest.Digest, desc ocispec.Descriptor) (resolver.Manifest, bool, error) {
	if checkDigest(desc.Digest) != nil {
		return resolver.Manifest{}, false, nil
	}
	m, err := a.local.Manifest(ctx, a.ir.repoKey(), desc, resolver.Read{})
	if err == nil {
		return m, true, nil
	}
	if !errdefs.IsNotFound(err) {
		return resolver.Manifest{}, false, err
	}
	m, peer, err := resolver.PeerManifest(ctx, a.peers, a.ir.registry, a.ir.repository, desc.Digest)
	if err != nil {
		logPeerCheck(ctx, err, "manifest "+desc.Digest.String())
		return resolver.Manifest{}, false, nil
	}
	a.holders[peer] = true
	return m, true, nil
}

func (a *peerHolders) unread(ocispec.Descriptor) { a.served = false }

func (a *peerHolders) noPlatform(resolver.Manifest) error {
	a.served = false
	return nil
}

func (a *peerHolders) manifest(ctx context.Context, _ resolver.Manifest, _ int, blobs []blob) (bool, error) {
	for _, b := range blobs {
		if ok, err := a.local.HasBlob(ctx, a.ir.repoKey(), b.Digest); err != nil {
			return false, err
		} else if ok {
			continue
		}
		hs, err := a.peers.Holders(ctx, b.Digest)
		if err != nil || len(hs) == 0 {
			if err == nil {
				err = fmt.Errorf("no peer holds it: %w", errdefs.ErrNotFound)
			}
			logPeerCheck(ctx, err, b.kind+" "+b.Digest.String())
			a.served = false
			return false, nil
		}
		a.holders[hs[0]] = true
	}
	return true, nil
}

// logPeerCheck logs, at Debug, why the peers cannot serve what of an image.
func logPeerCheck(ctx context.Context, err error, what string) {
	log.G(ctx).WithError(err).WithField("what", what).Debug("drill: the peers cannot serve it")
}
