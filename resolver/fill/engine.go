// Package fill is the blob fill engine: the one download of a blob into the cache, which any
// number of readers stream from its ingest file as the bytes arrive. It owns the fill table,
// the limits on fills, streaming, verification and the commit; where the bytes come from is a
// list of Sources its caller gives it (the resolver: the peers, then the registry).
package fill

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/opencontainers/go-digest"
)

// Store is what the engine needs of the cache: room in its budget, an ingest to write and read
// back, and the link of the blob to its repository. Its errors are those of cache.Store.
type Store interface {
	// Reserve holds room in the budget for a blob being written, so that the fills in flight
	// together stay within it (cache.Store.Reserve).
	Reserve(size int64) (*cache.Room, error)
	// LinkingTo's writers link the blob to the repository in the commit that caches it.
	LinkingTo(repository string) content.Ingester
	OpenIngest(ref string) (*os.File, error)
	Abort(ctx context.Context, ref string) error
	Link(ctx context.Context, repository string, dgst digest.Digest) error
}

// RefPrefix starts the ingest ref of every fill. A fill always starts over, so an ingest of one
// that a crash left is garbage.
const RefPrefix = "lifeboat-fill/"

// Options configure an Engine.
type Options struct {
	// FillTimeout bounds a whole download. IdleTimeout is the window of the progress rule: every
	// window must bring MinProgress bytes, or the rest of the blob when less is left.
	FillTimeout, IdleTimeout time.Duration
	// MaxBlobSize is the largest blob a fill accepts.
	MaxBlobSize int64
	// HoldWhole is the size up to which readers get no byte before the blob verified;
	// negative: none.
	HoldWhole int64
	// MaxFills is how many fills may run at once; a new one waits up to QueueTimeout for a
	// slot, then is refused with ErrTooManyFills.
	MaxFills     int
	QueueTimeout time.Duration
	// MaxAbandoned is how many fills may go on with no reader; past it the ones abandoned
	// longest ago are cancelled.
	MaxAbandoned int
	// Committed, when set, is told of a blob a fill cached (or found cached) and linked.
	Committed func(registry, repository string, dgst digest.Digest)
}

// Key names a fill: a blob for a repository of a registry.
type Key struct {
	Registry, Repository string
	Digest               digest.Digest
}

// String is "registry/repository@digest".
func (k Key) String() string { return k.Registry + "/" + k.Repository + "@" + k.Digest.String() }

// Engine runs the fills. Safe for concurrent use.
type Engine struct {
	store Store
	opts  Options
	// ctx is the parent of the fills, which outlive the requests that start them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	slots     slots
	mu        sync.Mutex
	fills     map[Key]*Fill // the fills a request may join
	cancelled atomic.Int64  // abandoned fills cancelled past MaxAbandoned
}

// New returns an Engine writing into store. Close it to stop its fills.
func New(store Store, opts Options) *Engine {
	e := &Engine{
		store: store, opts: opts, fills: map[Key]*Fill{},
		slots: slots{ch: make(chan struct{}, opts.MaxFills), wait: opts.QueueTimeout},
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e
}

// Close cancels the fills in progress (their ingests are removed; nothing partial is cached)
// and waits for them to end.
func (e *Engine) Close() {
	e.cancel()
	e.wg.Wait()
}

// Join returns the fill of key, starting it over sources if there is none, and counts a reader
// on it: release it with Release. A new fill needs one of the MaxFills slots: when none is free,
// Join waits for one up to the queue timeout, or until ctx ends, and then returns
// ErrTooManyFills (or ctx's error). A request that joins a running fill shares its sources.
func (e *Engine) Join(ctx context.Context, key Key, sources []Source) (*Fill, error) {
	if f := e.find(key); f != nil {
		return f, nil
	}
	if err := e.slots.acquire(ctx); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if f, ok := e.fills[key]; ok { // started while this request waited for a slot
		e.slots.release()
		f.join()
		return f, nil
	}
	fctx, cancel := context.WithCancelCause(e.ctx)
	f := newFill(e, key, sources, cancel)
	e.fills[key] = f
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.slots.release()
		defer cancel(nil)
		f.run(fctx, func() {
			e.mu.Lock()
			if e.fills[key] == f { // not a fill started after this one was cancelled
				delete(e.fills, key)
			}
			e.mu.Unlock()
		})
	}()
	f.join()
	return f, nil
}

// find joins the fill of key if there is one.
func (e *Engine) find(key Key) *Fill {
	e.mu.Lock()
	defer e.mu.Unlock()
	f, ok := e.fills[key]
	if !ok {
		return nil
	}
	f.join()
	return f
}

// Progress reports how many bytes of key's fill have arrived, if one runs.
func (e *Engine) Progress(key Key) (written int64, ok bool) {
	e.mu.Lock()
	f := e.fills[key]
	e.mu.Unlock()
	if f == nil {
		return 0, false
	}
	return f.State().Written, true
}

// Await waits until the fill of key, if one runs, has ended, and returns its error.
func (e *Engine) Await(ctx context.Context, key Key) error {
	f := e.find(key)
	if f == nil {
		return nil // ended: its result is in the cache, or not
	}
	defer f.Release()
	ended, err := f.Wait(ctx)
	if !ended {
		return ctx.Err()
	}
	return err
}

// limitAbandoned cancels the fills abandoned longest ago while more than MaxAbandoned run with
// no reader. A cancelled fill leaves the table at once (the next request starts a new one) and
// removes its ingest as it ends.
func (e *Engine) limitAbandoned() {
	e.mu.Lock()
	defer e.mu.Unlock()
	type idle struct {
		f  *Fill
		at time.Time
	}
	var abandoned []idle
	for _, f := range e.fills {
		if at, ok := f.abandonedSince(); ok {
			abandoned = append(abandoned, idle{f, at})
		}
	}
	excess := len(abandoned) - e.opts.MaxAbandoned
	if excess <= 0 {
		return
	}
	slices.SortFunc(abandoned, func(a, b idle) int { return a.at.Compare(b.at) })
	for _, a := range abandoned[:excess] {
		delete(e.fills, a.f.key)
		a.f.cancel(fmt.Errorf("no client reads it, and more than %d such downloads run: %w", e.opts.MaxAbandoned, errAbandoned))
		e.cancelled.Add(1)
	}
}

// errAbandoned ends a fill that no client reads, past the limit of such fills.
var errAbandoned = errors.New("download cancelled")

// Stats says what the fills are doing.
type Stats struct {
	// Running is the number of fills in progress, Abandoned those of them no client reads.
	Running, Abandoned int
	// Waiting is the number of requests waiting for a fill slot.
	Waiting int
	// Refused counts requests refused with ErrTooManyFills; Cancelled the abandoned fills
	// cancelled past MaxAbandoned.
	Refused, Cancelled int64
}

// Stats reports what the fills are doing.
func (e *Engine) Stats() Stats {
	st := Stats{
		Running:   len(e.slots.ch),
		Waiting:   int(e.slots.waiting.Load()),
		Refused:   e.slots.refused.Load(),
		Cancelled: e.cancelled.Load(),
	}
	e.mu.Lock()
	for _, f := range e.fills {
		if _, ok := f.abandonedSince(); ok {
			st.Abandoned++
		}
	}
	e.mu.Unlock()
	return st
}

// ErrTooManyFills is the error of a request that would start a blob download while MaxFills
// run, after waiting the queue timeout for one to end. It is errdefs.ErrUnavailable too, and
// has a RetryAfter method.
var ErrTooManyFills = errors.New("too many blob downloads in progress")

// tooManyFills is ErrTooManyFills with the limit.
type tooManyFills struct {
	limit int
	wait  time.Duration
}

func (e *tooManyFills) Error() string {
	return fmt.Sprintf("%s: all %d are busy, and none ended within %s", ErrTooManyFills, e.limit, e.wait)
}

func (e *tooManyFills) Is(target error) bool {
	return target == ErrTooManyFills || target == errdefs.ErrUnavailable
}

// RetryAfter is when to ask again: a fill slot is as likely free then as ever.
func (e *tooManyFills) RetryAfter() time.Duration { return time.Second }

// slots counts the fills that run, against their limit.
type slots struct {
	ch      chan struct{} // one element per running fill; its capacity is the limit
	wait    time.Duration // how long a new fill may wait for a slot
	waiting atomic.Int64
	refused atomic.Int64
}

// acquire takes a slot, waiting up to the queue timeout for one.
func (s *slots) acquire(ctx context.Context) error {
	select {
	case s.ch <- struct{}{}:
		return nil
	default:
	}
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	timer := time.NewTimer(s.wait)
	defer timer.Stop()
	select {
	case s.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		s.refused.Add(1)
		return &tooManyFills{limit: cap(s.ch), wait: s.wait}
	}
}

func (s *slots) release() { <-s.ch }
