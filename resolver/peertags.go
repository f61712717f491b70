package resolver

import (
	"context"

	"github.com/lifeboat-dev/lifeboat/cache"
)

// PeersEndpoint is the Endpoint of a cached tag resolved from the peers' records (during an
// outage, see tagFromPeers) rather than confirmed by the registry: the tag is answered from what
// other nodes announced until the registry answers again, and this node never announces it as
// its own revalidation.
const PeersEndpoint = "peers"

// FromPeers reports whether the cached tag ref was resolved from the peers' records and the
// registry has not confirmed it since. Refs recorded so before PeersEndpoint existed have no
// endpoint (every answer of a registry names its endpoint).
func FromPeers(ref cache.Ref) bool {
	return ref.Endpoint == PeersEndpoint || ref.Endpoint == ""
}

// PeerTags lists the cached tags resolved from the peers' records that the registry has not
// confirmed since (FromPeers), in name order.
func (r *Resolver) PeerTags(ctx context.Context) ([]cache.Ref, error) {
	refs, err := r.store.Refs(ctx)
	if err != nil {
		return nil, err
	}
	out := refs[:0]
	for _, ref := range refs {
		if FromPeers(ref) {
			out = append(out, ref)
		}
	}
	return out, nil
}
