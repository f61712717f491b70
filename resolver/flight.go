package resolver

import (
	"context"
	"time"

	"golang.org/x/sync/singleflight"
)

// flights merges concurrent upstream (and peer) requests for one manifest or tag.
type flights struct {
	group singleflight.Group
	// ctx ends when the resolver closes; timeout bounds one request.
	ctx     context.Context
	timeout time.Duration
}

// upstreamOnce runs fn once for all the callers that ask with the same key while it runs, and
// gives each its result (shared: callers must not modify it). fn runs on a context of its own,
// detached from any caller's: it keeps the first caller's values (its logger) but not its
// cancellation, is bounded by Options.UpstreamTimeout, and ends when the resolver is closed.
// So a caller that gives up leaves without failing the others; it gets its own ctx.Err().
func upstreamOnce[T any](ctx context.Context, f *flights, key string, fn func(context.Context) (T, error)) (T, error) {
	ch := f.group.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.timeout)
		defer cancel()
		stop := context.AfterFunc(f.ctx, cancel)
		defer stop()
		return fn(fctx)
	})
	select {
	case res := <-ch:
		v, _ := res.Val.(T)
		return v, res.Err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
