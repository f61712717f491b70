package resolver

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// Peer: served from another lifeboat of the cluster (a blob, a manifest, or a tag resolved from
// the peers' records during an outage).
const Peer CacheStatus = "peer"

// Peers is the cluster tier as the resolver uses it (package peer implements it over package
// cluster). The resolver never calls it for a registry whose content is not shared
// (Options.NotShared), nor while it answers a request that came from a peer (see PeerView).
//
// Errors: errdefs.ErrNotFound when no peer can provide the thing (the resolver then goes to the
// registry itself); anything else is a failure of the peers, which the resolver treats the same
// way, after logging it.
type Peers interface {
	// OpenBlob returns the blob's body from the cluster: from a peer that holds it, or, when
	// none does and the digest's first home is another node, through that home's coalesced
	// fill from the registry. Peers in skip (which sent bad bytes for this blob) are not asked.
	// The body is unverified: the resolver verifies it while it caches it.
	OpenBlob(ctx context.Context, registry, repository string, dgst digest.Digest, skip []string) (PeerBlob, error)
	// Reject tells that peer sent bytes of dgst that failed verification (for metrics and to
	// penalise it).
	Reject(peer string, dgst digest.Digest)
	// Manifest fetches a manifest by digest from a peer that holds it. Unverified: the resolver
	// checks it against dgst.
	Manifest(ctx context.Context, registry, repository string, dgst digest.Digest) (mediaType string, body []byte, peer string, err error)
	// Tag resolves a tag from the peers' records, for when the registry cannot answer: the
	// digest with the newest registry Date, ties broken by the number of holders, then the
	// lowest digest. date is that record's registry Date (the resolver weighs it against its
	// own record's).
	Tag(ctx context.Context, registry, repository, tag string) (dgst digest.Digest, date time.Time, err error)
	// Holders names the peers that hold a blob or manifest (for drill and images); empty when
	// none does.
	Holders(ctx context.Context, dgst digest.Digest) ([]string, error)
	// Cached tells the cluster this node now holds dgst (a blob or manifest it cached).
	Cached(registry, repository string, dgst digest.Digest)
	// Revalidated tells the cluster the registry resolved the tag to dgst, with its Date
	// header (the time of the answer when it sent none).
	Revalidated(registry, repository, tag string, dgst digest.Digest, date time.Time)
}

// PeerBlob is a blob body from a peer.
type PeerBlob struct {
	Body io.ReadCloser
	// Size is the blob's size (the peer's Content-Length).
	Size int64
	// Peer is the node that sent it.
	Peer string
	// ViaHome is true when it came through the digest's home filling it from the registry.
	ViaHome bool
}

// peering is the resolver's policy towards its cluster: which registries' content may cross
// nodes, whom to ask for it, and what to tell them. The zero value is a single node.
type peering struct {
	peers     Peers           // nil: a single node
	notShared map[string]bool // registries whose content never crosses nodes
}

// newPeering normalizes Options.NotShared.
func newPeering(peers Peers, notShared []string) (peering, error) {
	p := peering{peers: peers, notShared: map[string]bool{}}
	for _, name := range notShared {
		reg, ok := oci.NormalizeHost(name)
		if !ok {
			return peering{}, fmt.Errorf("invalid registry name %q in the registries not shared with peers: %w", name, errdefs.ErrInvalidArgument)
		}
		p.notShared[reg] = true
	}
	return p, nil
}

// shared reports whether registry's content may cross nodes.
func (p *peering) shared(registry string) bool { return !p.notShared[registry] }

// of returns the peers to ask for registry's content: nil without a cluster and for a
// registry that is not shared.
func (p *peering) of(registry string) Peers {
	if p.peers == nil || !p.shared(registry) {
		return nil
	}
	return p.peers
}

// cached tells the cluster this node now holds dgst for the repository (never for a registry
// that is not shared). Peers queues it: it does not block.
func (p *peering) cached(registry, repo string, dgst digest.Digest) {
	if peers := p.of(registry); peers != nil {
		peers.Cached(registry, repo, dgst)
	}
}

// revalidated tells the cluster the registry resolved the tag to dgst at date (its Date
// header).
func (p *peering) revalidated(registry, repo, tag string, dgst digest.Digest, date time.Time) {
	if peers := p.of(registry); peers != nil {
		peers.Revalidated(registry, repo, tag, dgst, date)
	}
}

// PeersFor returns the peers to ask for registry's content: nil without a cluster and for a
// registry that is not shared.
func (r *Resolver) PeersFor(registry string) Peers { return r.peering.of(registry) }

// logPeerMiss logs why the peers could not provide what: at Debug when none has it, at Info
// when they failed.
func logPeerMiss(ctx context.Context, err error, what string) {
	entry := log.G(ctx).WithError(err).WithField("what", what)
	if errdefs.IsNotFound(err) {
		entry.Debug("no peer can provide it: asking the upstream")
		return
	}
	entry.Info("the peers failed to provide it: asking the upstream")
}

// tagFromPeers answers a tag the registry cannot answer (it is down, slow, or erroring) from
// the peers' newest record: when this node has no record of its own, or when the peers' names
// another digest that the registry confirmed after this node's record was (by the registry's
// Date headers, so node clocks do not matter). The manifest comes from the cache or a peer,
// verified, and the tag is recorded with the peers' date and PeersEndpoint: it is not this
// node's revalidation, so this node does not announce it (see FromPeers) until the registry
// confirms it. ok is false when this node's own record stands, or the peers cannot answer.
func (r *Resolver) tagFromPeers(ctx context.Context, peers Peers, registry, repo, tag string, own cache.Ref, cached, withBody bool) (_ Manifest, ok bool) {
	repoKey := registry + "/" + repo
	name := repoKey + ":" + tag
	type record struct {
		dgst digest.Digest
		date time.Time
	}
	rec, err := upstreamOnce(ctx, &r.flights, "peer tag "+name, func(ctx context.Context) (record, error) {
		dgst, date, err := peers.Tag(ctx, registry, repo, tag)
		return record{dgst, date}, err
	})
	if err == nil {
		err = checkDigest(rec.dgst)
	}
	if err != nil {
		entry := log.G(ctx).WithError(err).WithField("ref", name)
		if errdefs.IsNotFound(err) {
			entry.Debug("no peer has a record of the tag")
		} else {
			entry.Info("the peers failed to resolve the tag")
		}
		return Manifest{}, false
	}
	if cached {
		ownDate := own.UpstreamDate
		if ownDate.IsZero() {
			ownDate = own.VerifiedAt
		}
		if rec.dgst == own.Target.Digest || !rec.date.After(ownDate) {
			return Manifest{}, false
		}
	}
	m, err := r.local.Manifest(ctx, repoKey, ocispec.Descriptor{Digest: rec.dgst}, Read{DescriptorOnly: !withBody})
	if err != nil {
		if m, err = r.manifests.fromPeers(ctx, peers, registry, repo, rec.dgst); err != nil {
			log.G(ctx).WithError(err).WithField("ref", name).WithField("digest", rec.dgst).Info("the peers resolved the tag but cannot provide its manifest")
			return Manifest{}, false
		}
	}
	if err := r.store.SetRefAt(ctx, name, m.Descriptor, PeersEndpoint, rec.date); err != nil {
		log.G(ctx).WithError(err).Warn("cannot record the tag as the peers resolved it")
	}
	log.G(ctx).WithField("ref", name).WithField("digest", rec.dgst).WithField("date", rec.date).Info("the registry cannot answer: tag resolved from the peers' newest record")
	m.Status = Peer
	return m, true
}
