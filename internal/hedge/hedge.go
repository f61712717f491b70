// Package hedge runs hedged requests: candidates are asked in turn, the next one before the one
// asked before has answered when it is slow, and the caller judges each answer as it comes. The
// cluster's lookups ask a key's homes this way, and the peer transfers a blob's holders. It
// imports nothing of lifeboat's.
package hedge

import (
	"context"
	"time"
)

// Run asks cands with try, hedged: the first at once, each next one after delay, or at once
// when an answer (a value or an error) did not end the race. accept is given every answer that
// comes before the race ends, with its candidate's index, one at a time and in Run's goroutine
// (so it may gather them without a lock); it returns true to end the race with that candidate
// as the winner. The race also ends once every candidate answered, or when ctx ends.
//
// Each attempt runs under its own context, a child of ctx: an attempt whose answer did not win
// has its context ended once accept returned, and when the race ends the attempts still running
// are ended, what they return then going to release (nil: dropped), from another goroutine. The
// winner's context stays open until done is called, which the caller must do; done is never nil.
// try must return once its context ends: then Run leaves no goroutine behind.
//
// winner is -1 when no answer ended the race: every candidate answered, or ctx ended first.
func Run[C, T any](ctx context.Context, cands []C, delay time.Duration,
	try func(context.Context, C) (T, error),
	accept func(i int, v T, err error) (stop bool),
	release func(v T, err error),
) (winner int, done context.CancelFunc) {
	if len(cands) == 0 {
		return -1, func() {}
	}
	type answer struct {
		i   int
		v   T
		err error
	}
	answers := make(chan answer, len(cands)) // buffered: a straggler never blocks
	cancels := make([]context.CancelFunc, 0, len(cands))
	pending := 0
	timer := time.NewTimer(delay)
	defer timer.Stop()
	// next asks the next candidate, if one is left, and starts the delay before the one after.
	next := func() {
		if len(cancels) == len(cands) {
			return
		}
		i := len(cancels)
		actx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		pending++
		timer.Reset(delay)
		go func() {
			v, err := try(actx, cands[i])
			answers <- answer{i: i, v: v, err: err}
		}()
	}
	// end ends the attempts other than winner's, and gives what the running ones return to
	// release.
	end := func(winner int) {
		for i, cancel := range cancels {
			if i != winner {
				cancel()
			}
		}
		if pending > 0 {
			go func(n int) {
				for range n {
					if a := <-answers; release != nil {
						release(a.v, a.err)
					}
				}
			}(pending)
		}
	}
	next()
	for pending > 0 {
		select {
		case a := <-answers:
			pending--
			if accept(a.i, a.v, a.err) {
				end(a.i)
				return a.i, cancels[a.i]
			}
			cancels[a.i]()
			next()
		case <-timer.C:
			next()
		case <-ctx.Done():
			end(-1)
			return -1, func() {}
		}
	}
	return -1, func() {}
}

// First is Run where the first success wins: it returns the winner's index and value (-1 and
// the zero value when none succeeded, or ctx ended first), done as Run does, and the error of
// each candidate (nil for the winner and for those never asked, or still running when the race
// ended). A success that comes after the race ended is given to release (nil: dropped).
func First[C, T any](ctx context.Context, cands []C, delay time.Duration,
	try func(context.Context, C) (T, error),
	release func(T),
) (winner int, v T, done context.CancelFunc, errs []error) {
	errs = make([]error, len(cands))
	winner, done = Run(ctx, cands, delay, try,
		func(i int, got T, err error) bool {
			if err != nil {
				errs[i] = err
				return false
			}
			v = got
			return true
		},
		func(late T, err error) {
			if err == nil && release != nil {
				release(late)
			}
		})
	return winner, v, done, errs
}
