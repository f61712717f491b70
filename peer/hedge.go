package peer

import (
	"context"
	"time"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

// attempt is the outcome of asking one candidate.
type attempt[T any] struct {
	i   int
	v   T
	err error
}

// hedge asks cands with try, hedged: the first at once, each next one after delay, or as soon
// as one asked before failed. The first success wins; the attempts still running are
// ended, and a success that comes after the winner's is given to release. Each attempt runs
// under its own context, a child of ctx; the winner's stays open until its done is called.
//
// errs has the error of each candidate asked (nil for the winner and for those never asked).
// winner is -1 when none succeeded, or ctx ended first.
func hedge[T any](ctx context.Context, cands []cluster.Member, delay time.Duration, try func(context.Context, cluster.Member) (T, error), release func(T)) (winner int, v T, done context.CancelFunc, errs []error) {
	errs = make([]error, len(cands))
	if len(cands) == 0 {
		return -1, v, nil, errs
	}
	results := make(chan attempt[T], len(cands)) // buffered: a straggler never blocks
	cancels := make([]context.CancelFunc, 0, len(cands))
	pending := 0
	next := func() {
		i := len(cancels)
		actx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		pending++
		go func() {
			v, err := try(actx, cands[i])
			results <- attempt[T]{i: i, v: v, err: err}
		}()
	}
	// end stops the attempts other than winner, and releases what the running ones return.
	end := func(winner int) {
		for i, cancel := range cancels {
			if i != winner {
				cancel()
			}
		}
		if pending > 0 {
			go func(n int) {
				for range n {
					if a := <-results; a.err == nil {
						release(a.v)
					}
				}
			}(pending)
		}
	}
	next()
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for pending > 0 {
		select {
		case a := <-results:
			pending--
			if a.err == nil {
				end(a.i)
				return a.i, a.v, cancels[a.i], errs
			}
			cancels[a.i]()
			errs[a.i] = a.err
			if len(cancels) < len(cands) {
				next()
				timer.Reset(delay)
			}
		case <-timer.C:
			if len(cancels) < len(cands) {
				next()
				timer.Reset(delay)
			}
		case <-ctx.Done():
			end(-1)
			return -1, v, nil, errs
		}
	}
	return -1, v, nil, errs
}
