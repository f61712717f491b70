package peer

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

// BreakerOptions tune the circuit breaker a Source keeps per peer, as the resolver keeps one
// per registry endpoint (package endpoints). Zero fields get the defaults named beside them.
type BreakerOptions struct {
	// FailureThreshold (3) is how many consecutive failures of a peer's HTTP (refused, reset,
	// no answer in time, a lookup that stopped waiting for it) mark it down. A request that
	// waits out its whole deadline while the peer answers nothing else marks it down at once.
	FailureThreshold int
	// ProbeInterval (1 s) is the first wait before probing a down peer (GET /v2/ on its peer
	// listener); it doubles up to ProbeMaxInterval (10 s).
	ProbeInterval, ProbeMaxInterval time.Duration
}

// Defaults of BreakerOptions.
const (
	DefaultFailureThreshold = 3
	DefaultProbeInterval    = time.Second
	DefaultProbeMaxInterval = 10 * time.Second
)

func (o BreakerOptions) withDefaults() BreakerOptions {
	if o.FailureThreshold <= 0 {
		o.FailureThreshold = DefaultFailureThreshold
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = DefaultProbeInterval
	}
	if o.ProbeMaxInterval < o.ProbeInterval {
		o.ProbeMaxInterval = max(DefaultProbeMaxInterval, o.ProbeInterval)
	}
	return o
}

// maxTrackedPeers bounds the peers a breaker keeps a record of while they are up; past it the
// records of peers that are up are dropped (a down peer's stays until its probe ends).
const maxTrackedPeers = 1024

// breaker is a Source's circuit breaker per peer, by peer address: a peer whose HTTP failed
// FailureThreshold times in a row, or did not answer one request within its deadline while
// answering nothing else, is down: no lookup asks it, no transfer is sent to it, until a
// background probe gets an answer from it. A failed path then costs a pull nothing: the
// lookup is answered by the homes that are up (or by none, at once), and the blob goes to the
// registry, or through a home that is up, at once.
//
// It implements cluster.PeerHealth, for lookups.
type breaker struct {
	opts BreakerOptions
	// probe asks m's peer listener for an answer; member looks a member up by name.
	probe  func(ctx context.Context, m cluster.Member) error
	member func(name string) (cluster.Member, bool)
	// ctx ends the probes (close).
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	peers map[string]*peerState // by peer address

	trips, skips, probes atomic.Int64
}

// peerState is what the breaker knows of one peer.
type peerState struct {
	name       string
	down       bool
	since      time.Time // when it went down
	failures   int       // in a row
	lastAnswer time.Time // of the last request it answered
}

var _ cluster.PeerHealth = (*breaker)(nil)

func newBreaker(opts BreakerOptions, probe func(context.Context, cluster.Member) error, member func(string) (cluster.Member, bool)) *breaker {
	b := &breaker{opts: opts.withDefaults(), probe: probe, member: member, peers: map[string]*peerState{}}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b
}

// close ends the probes and waits for them.
func (b *breaker) close() {
	b.cancel()
	b.wg.Wait()
}

// Down reports whether m is down, and counts a request it spares m.
func (b *breaker) Down(m cluster.Member) bool {
	b.mu.Lock()
	st, ok := b.peers[m.PeerAddr]
	down := ok && st.down
	b.mu.Unlock()
	if down {
		b.skips.Add(1)
	}
	return down
}

// Observe records how a request to m, sent at asked, did: err nil when m answered (whatever
// it answered), else why it did not.
func (b *breaker) Observe(m cluster.Member, asked time.Time, err error) {
	if m.PeerAddr == "" {
		return
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.peers[m.PeerAddr]
	if !ok {
		if err == nil {
			// A peer that never failed needs no record beyond its last answer, kept only
			// while few are kept.
			if len(b.peers) >= maxTrackedPeers {
				return
			}
		} else if len(b.peers) >= maxTrackedPeers {
			b.dropHealthyLocked()
		}
		st = &peerState{name: m.Name}
		b.peers[m.PeerAddr] = st
	}
	if err == nil {
		st.failures = 0
		st.lastAnswer = now
		return
	}
	st.failures++
	// A request that waited out its whole deadline while the peer answered nothing else (a
	// stopped node, a blackholed port) means every further one would wait as long: down at
	// once. When it answered others meanwhile it is slow, not gone, and the timeout counts as
	// any failure.
	threshold := b.opts.FailureThreshold
	if errors.Is(err, context.DeadlineExceeded) && st.lastAnswer.Before(asked) {
		threshold = 1
	}
	if st.down || st.failures < threshold {
		return
	}
	st.down, st.since = true, now
	b.trips.Add(1)
	log.L.WithFields(log.Fields{"peer": m.Name, "address": m.PeerAddr, "failures": st.failures}).WithError(err).
		Warn("peer marked down: not asked until it answers a probe")
	b.wg.Add(1)
	go b.probeUntilUp(m.PeerAddr, st)
}

// dropHealthyLocked forgets the peers that are up and failed last time they were asked: their
// next failure starts a new count.
func (b *breaker) dropHealthyLocked() {
	for addr, st := range b.peers {
		if !st.down {
			delete(b.peers, addr)
		}
	}
}

// probeUntilUp probes the down peer at addr with exponential backoff until it answers (then it
// is up) or is no longer an alive member at that address (then it is forgotten: a member that
// comes back starts up), or the breaker closes.
func (b *breaker) probeUntilUp(addr string, st *peerState) {
	defer b.wg.Done()
	wait := b.opts.ProbeInterval
	for {
		t := time.NewTimer(wait)
		select {
		case <-b.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		m, ok := b.member(st.name)
		if !ok || m.PeerAddr != addr {
			b.forget(addr, st)
			return
		}
		b.probes.Add(1)
		if err := b.probe(b.ctx, m); err == nil {
			b.mu.Lock()
			st.down, st.failures, st.lastAnswer = false, 0, time.Now()
			b.mu.Unlock()
			log.L.WithFields(log.Fields{"peer": m.Name, "address": addr}).Info("peer is up again")
			return
		}
		wait = min(2*wait, b.opts.ProbeMaxInterval)
	}
}

// forget drops the record st of addr, if it is still the one kept.
func (b *breaker) forget(addr string, st *peerState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.peers[addr] == st {
		delete(b.peers, addr)
	}
}

// down counts the peers down now.
func (b *breaker) down() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, st := range b.peers {
		if st.down {
			n++
		}
	}
	return n
}
