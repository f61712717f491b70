package peer

import "time"

// Budget is how long a pull waits on the peers, step by step. NewBudget derives it from the
// upstream timeout ([resolve] upstream_timeout), so that the steps fit into one another
// whatever that is; the figures in parentheses are at its default, 1 s.
//
//   - PeerWait, twice the upstream timeout (2 s): the resolver's wait for the peers' response
//     headers on a blob fill, lookup included (resolver.Options.PeerWait). Twice the
//     registry's wait, because a peer's answer may itself wait on the registry: the blob's home,
//     asked for a coalesced fill, first waits up to its upstream timeout for its registry's
//     headers.
//   - HeaderTimeout, PeerWait (2 s): the wait for one peer's headers, past which the next source
//     is asked. A holder answers from its cache at once, the home of a coalesced fill within an
//     upstream timeout and HeaderDelay; a longer wait would outlast the resolver's.
//   - HeaderDelay, a quarter of the upstream timeout (250 ms): how long the peer listener holds
//     back the headers of a blob answer whose first byte is not there yet (a coalesced fill
//     waiting on the registry; mirror.Options.HeaderDelay). The home's wait for its registry
//     takes half of the requester's PeerWait; a quarter of what is left goes to the first
//     byte, the rest to the lookup and the network, so that a live home is not taken for a
//     stopped one.
//   - HedgeDelay, a tenth of PeerWait (200 ms): how long a request to one holder goes
//     unanswered before the next holder is asked too. A holder answers from its cache within
//     milliseconds, so one silent this long is taken for stopped, and all maxAttempts holders
//     are asked within a third of PeerWait: a stopped holder does not use it up.
//   - IdleTimeout, 10 s at any upstream timeout: a peer's body that brings no byte for this
//     long fails its read (a peer stopped mid-transfer, a cut network) and the fill goes on to
//     the next source. It bounds a pause in a body already flowing, which says nothing of how
//     fast a registry answers; it stays under the resolver's own progress rule (64 KiB per its
//     idle timeout, 30 s), which catches a peer that trickles.
//
// The home's HeaderDelay comes from its own upstream timeout, the requester's waits from its
// own: the nodes of a cluster are meant to share their configuration.
type Budget struct {
	PeerWait      time.Duration
	HeaderTimeout time.Duration
	HeaderDelay   time.Duration
	HedgeDelay    time.Duration
	IdleTimeout   time.Duration
}

// defaultUpstreamTimeout is the upstream timeout of the resolver's and the configuration's
// defaults: a Budget's zero fields take NewBudget's figures for it.
const defaultUpstreamTimeout = time.Second

// NewBudget derives the peers' budget from the upstream timeout (the default's when it is not
// positive).
func NewBudget(upstreamTimeout time.Duration) Budget {
	if upstreamTimeout <= 0 {
		upstreamTimeout = defaultUpstreamTimeout
	}
	wait := 2 * upstreamTimeout
	return Budget{
		PeerWait:      wait,
		HeaderTimeout: wait,
		HeaderDelay:   upstreamTimeout / 4,
		HedgeDelay:    wait / 10,
		IdleTimeout:   10 * time.Second,
	}
}

// withDefaults is b with its zero (or negative) fields set as NewBudget sets them at the
// default upstream timeout.
func (b Budget) withDefaults() Budget {
	def := NewBudget(defaultUpstreamTimeout)
	orDefault := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	orDefault(&b.PeerWait, def.PeerWait)
	orDefault(&b.HeaderTimeout, def.HeaderTimeout)
	orDefault(&b.HeaderDelay, def.HeaderDelay)
	orDefault(&b.HedgeDelay, def.HedgeDelay)
	orDefault(&b.IdleTimeout, def.IdleTimeout)
	return b
}
