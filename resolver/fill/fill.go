package fill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/lifeboat-dev/lifeboat/cache"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Fill is the one download of a blob for a repository. It writes the bytes into a cache ingest
// and lets any number of readers stream them from the ingest file as they arrive. It runs
// detached from the requests that wait on it, so that a client that disconnects does not stop
// it: the next request finds the blob cached.
//
// Its state is its own: other code learns it through its methods (Started, State, Wait,
// Reader) and never takes its lock.
type Fill struct {
	e       *Engine
	key     Key
	sources []Source

	ready  chan struct{}           // closed when size is known, or the fill failed before that
	cancel context.CancelCauseFunc // ends the fill before its time (abandoned past the limit)
	room   *cache.Room             // its share of the cache budget; the fill's goroutine's alone

	mu        sync.Mutex
	cond      *sync.Cond
	size      int64    // -1 while unknown (the source sent no Content-Length)
	file      *os.File // the ingest, for readers; nil when the blob proved to be cached already
	written   int64    // bytes in the ingest file
	done      bool     // the fill ended; err says how
	err       error
	fromStore bool   // the blob was already cached: read it from the store
	verified  bool   // all bytes arrived and match the digest
	peer      string // the peer whose bytes the ingest holds; "" for a registry's
	handedOut bool   // a reader got bytes: the fill cannot start over, only resume (see download)
	readers   int
	// abandonedAt is when the last reader left a fill still running (valid while readers is 0
	// and done is false).
	abandonedAt time.Time
}

// State is what a fill knows at one moment.
type State struct {
	Size      int64 // -1 while unknown
	Written   int64 // bytes that arrived
	FromStore bool  // the blob was already cached: read it from the store
	Done      bool  // the fill ended; Err says how
	Err       error
	Peer      string // the peer the bytes come from; "" for a registry
}

// SmallBlob is the size up to which a blob that is not cached is fetched and verified whole
// before its first byte is sent (the resolver waits for the fill to end). A client then never
// holds unverified bytes of image configs and small layers: containerd keeps a download that
// fails verification and, on the next pull, commits it again without fetching, so bytes that
// were sent cannot be taken back. For blobs this small the wait costs little; larger ones
// stream as they arrive.
const SmallBlob = 1 << 20

// MinProgress is the least a fill must receive in every IdleTimeout (30 s by default): 64 KiB,
// or the rest of the blob when less is left. A source that sends less, even a byte at a time
// (a slowloris), is cut off as stalled, with errdefs.ErrUnavailable, instead of holding the fill
// open until the FillTimeout (1 h by default). A blob that ends within the window always passes.
//
// At the default timeout this is a floor of about 2.2 KB/s. A slow but working registry is far
// above it: a 1 MiB/s link moves 30 MiB in a window, about 480 times the floor, so even 480
// fills sharing that link at once pass; a 56 kbit/s modem line (7 KB/s) passes. A 20 B/s trickle
// of a 64 KiB blob, which the fill timeout alone would allow for 55 minutes, is cut off after
// one window.
const MinProgress = 64 << 10

// StallError ends a fill whose source sent less than MinProgress in a window.
type StallError struct {
	Got, Need int64
	Window    time.Duration
}

func (e *StallError) Error() string {
	return fmt.Sprintf("upstream stalled: it sent %d bytes in %s, less than the minimum of %d bytes in every %s (%.0f bytes/s)",
		e.Got, e.Window, e.Need, e.Window, float64(e.Need)/e.Window.Seconds())
}

func (e *StallError) Unwrap() error { return errdefs.ErrUnavailable }

func newFill(e *Engine, key Key, sources []Source, cancel context.CancelCauseFunc) *Fill {
	f := &Fill{e: e, key: key, sources: sources, ready: make(chan struct{}), cancel: cancel, size: -1}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// abandonedSince reports when the fill's last reader left, if it has none and still runs.
// Joins happen under the engine's lock, which its caller holds: a fill it finds abandoned stays
// so.
func (f *Fill) abandonedSince() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.abandonedAt, f.readers == 0 && !f.done
}

// join counts a reader on the fill. Each join is undone by one Release.
func (f *Fill) join() {
	f.mu.Lock()
	f.readers++
	f.mu.Unlock()
}

// Release drops a reader; the last one out after the fill ended closes the ingest file. The
// last one out of a fill still running tells the engine, which bounds such fills.
func (f *Fill) Release() {
	f.mu.Lock()
	f.readers--
	if f.readers == 0 && f.done && f.file != nil {
		f.file.Close()
		f.file = nil
	}
	abandoned := f.readers == 0 && !f.done
	if abandoned {
		f.abandonedAt = time.Now()
	}
	f.mu.Unlock()
	if abandoned {
		f.e.limitAbandoned()
	}
}

// Started waits until the size is known, or the fill failed before that; it returns ctx's
// error if ctx ends first.
func (f *Fill) Started(ctx context.Context) error {
	select {
	case <-f.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// State reports what the fill knows now.
func (f *Fill) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return State{Size: f.size, Written: f.written, FromStore: f.fromStore, Done: f.done, Err: f.err, Peer: f.peer}
}

// Wait waits until the fill ends, or ctx does: ended says which, err how the fill ended.
func (f *Fill) Wait(ctx context.Context) (ended bool, err error) {
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !f.done && ctx.Err() == nil {
		f.cond.Wait()
	}
	return f.done, f.err
}

// run downloads the blob within the fill timeout, then calls forget (after which a request
// starts a new fill) and wakes the readers with the outcome. It logs how the fill failed: no
// one else may be there to hear it.
func (f *Fill) run(parent context.Context, forget func()) {
	ctx, cancel := context.WithTimeout(parent, f.e.opts.FillTimeout)
	defer cancel()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("blob", f.key.String()))
	err := f.download(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("blob fill failed")
	}
	forget()
	f.finish(err)
}

func (f *Fill) finish(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done, f.err = true, err
	select {
	case <-f.ready:
	default:
		close(f.ready)
	}
	if f.readers == 0 && f.file != nil {
		f.file.Close()
		f.file = nil
	}
	f.cond.Broadcast()
}

// download fetches the blob from its sources in order and commits it to the cache. A source
// that cannot open the blob is passed over for the next; one whose bytes fail verification, or
// stop short, is too, from the blob's first byte as long as no byte of them reached a reader.
// Once bytes reached readers, a source that broke mid-transfer (a read error, a stall, a body
// short or long of its length) is followed by the next that can send the blob from an offset
// (a Resumer), from the bytes already written: the readers never see the break. Otherwise the
// fill fails with its error. After the headers the body may take up to the fill timeout, as
// long as every idle timeout brings at least MinProgress bytes (or the rest of the blob).
func (f *Fill) download(ctx context.Context) error {
	ref := RefPrefix + f.key.String()
	var w content.Writer // opened once, for the first source that answered
	committed := false
	defer func() {
		if w != nil && !committed {
			f.discard(ctx, w, ref)
		}
		if f.room != nil {
			f.room.Release() // committed, and counted as cached, or given up
		}
	}()
	var (
		off   int64 // the bytes the ingest keeps for the next source: it resumes from there
		broke error // why the fill resumes, while off is positive
	)
	for i, src := range f.sources {
		last := i == len(f.sources)-1
		rctx, stopRead := context.WithCancelCause(ctx)
		body, err := f.openAt(rctx, src, off)
		if err != nil {
			stopRead(nil)
			if ctx.Err() != nil || last {
				if broke != nil {
					return fmt.Errorf("%w; and no source could resume it: %w", broke, err)
				}
				return fmt.Errorf("fetch blob: %w", err)
			}
			// Handled here, by going on to the next source.
			entry := log.G(ctx).WithError(err)
			if errdefs.IsNotFound(err) {
				entry.Debug("a source does not have the blob: trying the next")
			} else {
				entry.Info("a source failed to provide the blob: trying the next")
			}
			continue
		}
		if w == nil {
			w, err = f.e.store.LinkingTo(f.key.Registry+"/"+f.key.Repository).Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Digest: f.key.Digest, Size: max(body.Size, 0)}))
			if errdefs.IsAlreadyExists(err) {
				w = nil
				body.Close()
				stopRead(nil)
				return f.alreadyCached(ctx)
			}
			if err != nil {
				body.Close()
				stopRead(nil)
				return fmt.Errorf("open cache ingest: %w", err)
			}
		}
		n, err := f.transfer(ctx, rctx, stopRead, body, w, ref, off)
		stopRead(nil)
		if body.Done != nil {
			body.Done(n-off, err)
		}
		if err == nil {
			if committed, err = f.commit(ctx, w, n); err == nil && f.e.opts.Committed != nil {
				f.e.opts.Committed(f.key.Registry, f.key.Repository, f.key.Digest)
			}
			return err
		}
		if last || ctx.Err() != nil {
			return err
		}
		if f.startOver() {
			off, broke = 0, nil
			log.G(ctx).WithError(err).WithField("source", body.From).Warn("blob from a source failed: trying the next")
			continue
		}
		if bs := (*brokenSource)(nil); !errors.As(err, &bs) {
			return err
		}
		off, broke = n, err
		log.G(ctx).WithError(err).WithFields(log.Fields{"source": body.From, "offset": n}).
			Warn("blob source broke after bytes reached clients: resuming from the next source that can send from that offset")
	}
	return fmt.Errorf("fetch blob: no source: %w", errdefs.ErrNotFound)
}

// openAt opens src from off: the whole blob at 0, else the rest of the blob of the size the
// readers were given, if src is a Resumer.
func (f *Fill) openAt(ctx context.Context, src Source, off int64) (Body, error) {
	if off == 0 {
		return src.Open(ctx)
	}
	r, ok := src.(Resumer)
	if !ok {
		return Body{}, fmt.Errorf("the source cannot send the blob from byte %d: %w", off, errdefs.ErrNotFound)
	}
	return r.OpenAt(ctx, off, f.State().Size)
}

// brokenSource marks a transfer that failed on its source's side (a read error, a stall, a
// body short or long of its length, a body to resume of another size): the bytes written
// before it stay good for another source to go on from.
type brokenSource struct{ err error }

func (e *brokenSource) Error() string { return e.err.Error() }
func (e *brokenSource) Unwrap() error { return e.err }

// transfer receives body into the ingest w of ref, which holds the first off bytes of the blob
// already (a resume) or none, and verifies it; it returns the number of bytes the ingest holds,
// verified.
func (f *Fill) transfer(ctx, rctx context.Context, stopRead context.CancelCauseFunc, body Body, w content.Writer, ref string, off int64) (int64, error) {
	defer body.Close()
	// Bodies end only on Close: close it when the read's context ends (the fill timeout, a
	// stall past the idle timeout, or the engine closing).
	stopClose := context.AfterFunc(rctx, func() { body.Close() })
	defer stopClose()
	if off > 0 {
		if err := f.resume(w, body, off); err != nil {
			return off, err
		}
	} else {
		if body.Size > f.e.opts.MaxBlobSize {
			return 0, f.tooLarge(body.Size)
		}
		if err := f.reserve(max(body.Size, 0)); err != nil {
			return 0, err
		}
		if err := f.open(w, ref, body); err != nil {
			return 0, err
		}
	}
	n, err := f.receive(ctx, rctx, stopRead, body, w, off)
	if err != nil {
		return n, err
	}
	return n, f.verify(w, body, n, off > 0)
}

// resume readies the fill to go on from off with body: the ingest w must hold off bytes, and
// body be of the size the readers were given (which the first source said, and the room was
// checked for).
func (f *Fill) resume(w content.Writer, body Body, off int64) error {
	st, err := w.Status()
	if err != nil {
		return err
	}
	if st.Offset != off {
		return fmt.Errorf("cache ingest holds %d bytes of the blob, not the %d written: %w", st.Offset, off, errdefs.ErrFailedPrecondition)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.size < 0 || body.Size != f.size {
		return &brokenSource{fmt.Errorf("%s has %d bytes of blob %s, not the %d bytes announced: %w", body.From, body.Size, f.key.Digest, f.size, errdefs.ErrFailedPrecondition)}
	}
	f.peer = body.Peer
	return nil
}

// tooLarge is the error of a blob of more than the maximum blob size.
func (f *Fill) tooLarge(size int64) error {
	return fmt.Errorf("blob %s has %d bytes or more, more than the maximum blob size of %d bytes: %w", f.key.Digest, size, f.e.opts.MaxBlobSize, errdefs.ErrResourceExhausted)
}

// alreadyCached ends a fill that found the blob in the cache: its readers read it from there,
// and the blob is linked to the repository.
func (f *Fill) alreadyCached(ctx context.Context) error {
	f.mu.Lock()
	f.fromStore, f.peer = true, ""
	f.mu.Unlock()
	if err := f.e.store.Link(ctx, f.key.Registry+"/"+f.key.Repository, f.key.Digest); err != nil {
		return err
	}
	if f.e.opts.Committed != nil {
		f.e.opts.Committed(f.key.Registry, f.key.Repository, f.key.Digest)
	}
	return nil
}

// discard closes and removes the ingest w of ref, which was not committed: nothing partial is
// cached.
func (f *Fill) discard(ctx context.Context, w content.Writer, ref string) {
	w.Close()
	if err := f.e.store.Abort(context.WithoutCancel(ctx), ref); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Warn("cannot remove a failed fill's ingest")
	}
}

// open starts the ingest w of ref over (a fill interrupted earlier starts over, and so does one
// that tries its next source), opens it for the readers and lets them in. A source after the
// first must agree with the size the readers were given, unless they were not given it (a
// blob of up to SmallBlob bytes, which they wait for whole).
func (f *Fill) open(w content.Writer, ref string, body Body) error {
	if err := w.Truncate(0); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.ready:
		if f.size > SmallBlob && body.Size != f.size {
			return fmt.Errorf("%s has %d bytes of blob %s, not the %d bytes announced: %w", body.From, body.Size, f.key.Digest, f.size, errdefs.ErrFailedPrecondition)
		}
		f.size, f.peer = body.Size, body.Peer
		return nil
	default:
	}
	file, err := f.e.store.OpenIngest(ref)
	if err != nil {
		return err
	}
	f.size, f.file, f.peer = body.Size, file, body.Peer
	close(f.ready)
	return nil
}

// startOver readies the fill for its next source after one failed it, and reports whether it
// may: only when no byte reached a reader. From here no reader gets a byte of what the failed
// source sent.
func (f *Fill) startOver() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.handedOut {
		return false
	}
	f.written = 0
	return true
}

// receive copies the body into the ingest w, which holds off bytes already, waking the readers
// after every stretch, and returns how many bytes the ingest holds. It stops reading (through
// stopRead, which closes the body) when the source breaks the progress rule: each window of the
// idle timeout must bring need bytes; the window starts again once they are in. A failure of
// the source's own is a *brokenSource.
func (f *Fill) receive(ctx, rctx context.Context, stopRead context.CancelCauseFunc, body Body, w content.Writer, off int64) (int64, error) {
	window := f.e.opts.IdleTimeout
	needFrom := func(n int64) int64 {
		if body.Size < 0 {
			return MinProgress
		}
		return max(min(body.Size-n, MinProgress), 1)
	}
	var windowGot, windowNeed atomic.Int64 // written here, read by the timer
	windowNeed.Store(needFrom(off))
	progress := time.AfterFunc(window, func() {
		stopRead(&StallError{Got: windowGot.Load(), Need: windowNeed.Load(), Window: window})
	})
	defer progress.Stop()
	buf := make([]byte, receiveBufferSize)
	n := off
	nextRoomCheck := int64(roomCheckStep) // for a body of unknown size
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			if body.Size >= 0 && n+int64(m) > body.Size {
				return n, &brokenSource{fmt.Errorf("%s sent more than its Content-Length of %d: %w", body.From, body.Size, errdefs.ErrFailedPrecondition)}
			}
			if body.Size < 0 {
				if n+int64(m) > f.e.opts.MaxBlobSize {
					return n, f.tooLarge(n + int64(m))
				}
				if n+int64(m) >= nextRoomCheck {
					if err := f.reserve(n + int64(m)); err != nil {
						return n, fmt.Errorf("%s sent a body of unknown size: after %d bytes: %w", body.From, n+int64(m), err)
					}
					nextRoomCheck = n + int64(m) + roomCheckStep
				}
			}
			if _, err := w.Write(buf[:m]); err != nil {
				return n, fmt.Errorf("write to cache: %w", err)
			}
			n += int64(m)
			if windowGot.Add(int64(m)) >= windowNeed.Load() {
				progress.Reset(window)
				windowGot.Store(0)
				windowNeed.Store(needFrom(n))
			}
			f.mu.Lock()
			f.written = n
			f.cond.Broadcast()
			f.mu.Unlock()
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if cause := context.Cause(rctx); cause != nil {
				// The fill closed the body (a stall, the fill timeout, the engine closing):
				// the cause is the news, not the read error that followed.
				if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
					cause = fmt.Errorf("the fill timeout of %s passed: %w", f.e.opts.FillTimeout, cause)
				}
				rerr = cause
			}
			err := fmt.Errorf("read blob from %s after %d bytes: %w", body.From, n, rerr)
			if ctx.Err() != nil { // the fill's own end, not the source's
				return n, err
			}
			return n, &brokenSource{err}
		}
	}
	if body.Size >= 0 && n != body.Size {
		return n, &brokenSource{fmt.Errorf("%s body ended after %d of %d bytes: %w", body.From, n, body.Size, errdefs.ErrUnavailable)}
	}
	return n, nil
}

// receiveBufferSize is the most a fill reads from a source at once, and so hands at once to
// the ingest writer (which hashes it beside the file write) and the readers.
const receiveBufferSize = 1 << 20

// reserve makes the room the fill holds in the cache's budget size bytes (cache.Store.Reserve):
// the fills in flight together never hold more than the budget.
func (f *Fill) reserve(size int64) error {
	if f.room == nil {
		r, err := f.e.store.Reserve(size)
		if err != nil {
			return err
		}
		f.room = r
		return nil
	}
	return f.room.Grow(size)
}

// roomCheckStep is how often a body of unknown size has the cache's room checked as it arrives:
// every 4 MiB, so that a body that does not fit is cut off within 4 MiB of the cache's budget.
// The check asks for room for all the bytes so far, in a filesystem that holds them already:
// against free space it is conservative (it wants them twice), never lenient.
const roomCheckStep = 4 << 20

// verify checks the n bytes written to w (from more than one source when resumed) against the
// digest, and lets the readers finish: they need not wait for the fsync of the commit. (Commit
// verifies again, and makes them durable.)
func (f *Fill) verify(w content.Writer, body Body, n int64, resumed bool) error {
	if actual := w.Digest(); actual != f.key.Digest {
		return &MismatchError{From: body.From, N: n, Actual: actual, Want: f.key.Digest, Resumed: resumed}
	}
	f.mu.Lock()
	f.size, f.verified = n, true
	f.cond.Broadcast()
	f.mu.Unlock()
	return nil
}

// commit commits the ingest w of n verified bytes to the cache, linked to its repository in the
// same index transaction: a failed fill leaves no link, and no crash leaves the blob cached but
// unlinked. committed says the ingest is gone (committed now, or the blob was there already).
func (f *Fill) commit(ctx context.Context, w content.Writer, n int64) (committed bool, err error) {
	if err := w.Commit(ctx, n, f.key.Digest); err != nil {
		if errdefs.IsAlreadyExists(err) {
			return true, nil
		}
		if errdefs.IsFailedPrecondition(err) {
			// The bytes verified as they were written: the ingest file changed since.
			err = fmt.Errorf("cache ingest does not match the verified bytes: %w", err)
		}
		return false, err
	}
	return true, nil
}
