package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/hedge"
)

// maxLookupResponse bounds a home's answer to a lookup.
const maxLookupResponse = 1 << 20

// Lookup asks key's homes which nodes hold it: the first home at once, each next one after
// HedgeDelay (or as soon as the one before failed), the first answer that names a holder
// wins. This node is never among the holders returned, nor are members that are not alive.
// An empty answer with a nil error means no home knows a holder; an error, that no home
// answered within LookupTimeout.
//
// A home that answers without a holder counts as one that failed for the hedging: the next is
// asked at once, since a home that came after a membership change may not know yet.
//
// A tag's lookup waits for every home (within LookupTimeout) and merges their answers: the
// answer is a choice among the records (the newest registry Date), and a home that came after
// a membership change may know only some of them, so the first answer could name an older
// digest.
//
// Neither waits on a straggler: once every home but one has answered (another node at least
// without failing), the last is given stragglerGrace more, then the lookup ends with what the others
// said. A stopped home (SIGSTOP, a hung process) thus costs a lookup a few milliseconds, not
// LookupTimeout, until memberlist declares it dead. With WithPeerHealth, homes the caller's
// breaker says are down are not asked at all, and the breaker is told how each home asked did.
func (n *Node) Lookup(ctx context.Context, key string, opts ...LookupOption) ([]Holder, error) {
	var o lookupOptions
	for _, opt := range opts {
		opt(&o)
	}
	start := time.Now()
	hs, err := n.lookup(ctx, key, o)
	switch {
	case err != nil:
		n.stats.lookupsFailed.Add(1)
	case len(hs) > 0:
		n.stats.lookupsFound.Add(1)
	default:
		n.stats.lookupsNotFound.Add(1)
	}
	if n.cfg.ObserveLookup != nil {
		n.cfg.ObserveLookup(time.Since(start), len(hs) > 0, err)
	}
	return hs, err
}

// LookupOption tunes one Lookup.
type LookupOption func(*lookupOptions)

type lookupOptions struct {
	health PeerHealth
}

// PeerHealth is the caller's circuit breaker over the peers, as a lookup consults and feeds it
// (package peer's Source has one). Down reports a member not to ask. Observe is told how each
// other member asked did, once the lookup knows, from its goroutine: err is nil when the home
// answered (whatever it answered), ErrStraggler when the lookup stopped waiting for it because
// every other home had answered, an error wrapping context.DeadlineExceeded when it did not
// answer within LookupTimeout, or the request's failure. A home whose request the lookup ended
// because another answer won, or because the caller gave up, is not observed.
type PeerHealth interface {
	Down(m Member) bool
	Observe(m Member, asked time.Time, err error)
}

// WithPeerHealth has the lookup leave out the homes h says are down, and tell h how the others
// did.
func WithPeerHealth(h PeerHealth) LookupOption {
	return func(o *lookupOptions) { o.health = h }
}

// ErrStraggler is what PeerHealth.Observe is told of a home the lookup stopped waiting for
// because every other home had answered.
var ErrStraggler = errors.New("the home did not answer while the other homes did")

// stragglerGrace is how long a lookup waits for its last home once every other home has
// answered: minStragglerGrace, or twice the slowest other home's answer if that is longer (a
// loaded cluster answers slower, every home alike), counted from when the last home was asked.
func (n *Node) stragglerGrace(slowest time.Duration) time.Duration {
	return max(n.cfg.HedgeDelay, minStragglerGrace, 2*slowest)
}

// minStragglerGrace is the least a lookup's last home is waited for once the others answered:
// enough for a new connection to it (a TCP and TLS handshake) on a loaded node, which a home
// asked for the first time in a while needs while the others answer on kept-alive ones, and
// still a twentieth of the lookup timeout a stopped home used to cost.
const minStragglerGrace = 25 * time.Millisecond

func (n *Node) lookup(ctx context.Context, key string, o lookupOptions) ([]Holder, error) {
	if key == "" || len(key) > maxKeyLen {
		return nil, nil // such a key is never announced
	}
	alive := n.view.alive()
	homes := homesAmong(key, alive, n.cfg.Replicas)
	if o.health != nil {
		homes = slices.DeleteFunc(homes, func(m Member) bool { return !m.Self && o.health.Down(m) })
	}
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
	defer cancel()
	// race ends the hedged race early, when the last home straggles.
	race, endRace := context.WithCancelCause(ctx)
	defer endRace(nil)

	tag := isTagKey(key)
	var found []Holder  // the first holders a blob's home named
	var merged []Holder // a tag's records from every home that answered
	var errs []error
	answered := 0
	// asked is when each home was asked (UnixNano, 0: not yet), set by the attempts;
	// concluded which answered or failed, read and written in this goroutine only.
	asked := make([]atomic.Int64, len(homes))
	concluded := make([]bool, len(homes))
	askedAt := func(i int) time.Time { return time.Unix(0, asked[i].Load()) }
	observe := func(i int, err error) {
		if o.health != nil && !homes[i].Self {
			o.health.Observe(homes[i], askedAt(i), err)
		}
	}
	// slowest and answeredOthers count the other nodes' answers only: this node's own comes at
	// once, and says nothing of how long a peer takes (with two homes, the other is never
	// a straggler).
	var slowest time.Duration
	answeredOthers := 0
	var straggler *time.Timer
	defer func() {
		if straggler != nil {
			straggler.Stop()
		}
	}()
	indexes := make([]int, len(homes))
	for i := range indexes {
		indexes[i] = i
	}
	winner, done := hedge.Run(race, indexes, n.cfg.HedgeDelay,
		func(ctx context.Context, i int) ([]Holder, error) {
			if err := ctx.Err(); err != nil {
				return nil, err // the race ended as this home's turn came: not asked
			}
			asked[i].Store(time.Now().UnixNano())
			if homes[i].Self {
				return n.home.answer(key), nil
			}
			return n.ask(ctx, homes[i], key)
		},
		func(i int, hs []Holder, err error) bool {
			if err != nil && race.Err() != nil {
				return false // ended by the lookup's end: judged below
			}
			concluded[i] = true
			if err != nil {
				errs = append(errs, err)
				if _, ok := errors.AsType[*homeStatusError](err); ok {
					observe(i, nil) // an answer, if not a useful one
				} else {
					observe(i, err)
				}
			} else {
				answered++
				observe(i, nil)
				if !homes[i].Self {
					answeredOthers++
					slowest = max(slowest, time.Since(askedAt(i)))
				}
				hs = n.holders(hs, alive)
				if len(hs) > 0 && !tag {
					found = hs
					return true
				}
				merged = mergeHolders(merged, hs)
			}
			// Every home but one has answered: the last has stragglerGrace from when it was
			// asked (it may be asked only now, once this returns).
			if last := slices.Index(concluded, false); straggler == nil && answeredOthers > 0 && last >= 0 &&
				slices.Index(concluded[last+1:], false) < 0 {
				grace := n.stragglerGrace(slowest)
				if at := asked[last].Load(); at != 0 {
					grace -= time.Since(time.Unix(0, at))
				}
				straggler = time.AfterFunc(max(grace, 0), func() { endRace(ErrStraggler) })
			}
			return false
		}, nil)
	done()
	if winner < 0 && caller.Err() == nil {
		// The homes asked that did not answer: left behind as a straggler, or out of time.
		// One asked as the lookup ended (less than HedgeDelay before) had no fair chance.
		cause := context.Cause(race)
		for i := range homes {
			if concluded[i] || asked[i].Load() == 0 || time.Since(askedAt(i)) < n.cfg.HedgeDelay {
				continue
			}
			if errors.Is(cause, ErrStraggler) {
				observe(i, ErrStraggler)
			} else if errors.Is(cause, context.DeadlineExceeded) {
				observe(i, fmt.Errorf("home %s did not answer a lookup within %s: %w", homes[i].Name, n.cfg.LookupTimeout, context.DeadlineExceeded))
			}
		}
	}
	switch {
	case winner >= 0:
		return found, nil
	case answered > 0 || len(homes) == 0:
		return merged, nil
	}
	if len(errs) < len(homes) { // every answer was an error, and some did not come in time
		errs = append(errs, context.Cause(race))
	}
	return nil, fmt.Errorf("lookup %s: no home answered: %w: %w", key, errors.Join(errs...), errdefs.ErrUnavailable)
}

// homeStatusError is a home's answer to a lookup other than 200: it answered, but nothing the
// lookup can use.
type homeStatusError struct {
	home, status string
}

func (e *homeStatusError) Error() string { return "home " + e.home + " answered " + e.status }

// isTagKey reports whether key is a tag's ("registry/repository:tag"); a blob's is a digest,
// which has no slash.
func isTagKey(key string) bool { return strings.Contains(key, "/") }

// mergeHolders adds hs to merged: one record per node, the one with the newest Date.
func mergeHolders(merged, hs []Holder) []Holder {
next:
	for _, h := range hs {
		for i, m := range merged {
			if m.Node == h.Node {
				if h.Date.After(m.Date) {
					merged[i] = h
				}
				continue next
			}
		}
		merged = append(merged, h)
	}
	return merged
}

// holders is hs without this node and members that are not alive.
func (n *Node) holders(hs []Holder, alive map[string]Member) []Holder {
	out := hs[:0:0]
	for _, h := range hs {
		if m, ok := alive[h.Node]; ok && !m.Self {
			out = append(out, h)
		}
	}
	return out
}

// ask asks home which nodes hold key.
func (n *Node) ask(ctx context.Context, home Member, key string) ([]Holder, error) {
	u := "https://" + home.PeerAddr + PathLookup + "?key=" + url.QueryEscape(key)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &homeStatusError{home: home.Name, status: resp.Status}
	}
	var body lookupResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxLookupResponse)).Decode(&body); err != nil {
		return nil, fmt.Errorf("home %s: %w", home.Name, err)
	}
	return body.Holders, nil
}
