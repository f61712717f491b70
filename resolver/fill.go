package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
)

// fill is the one download of a blob for a repository, from the cluster's peers or the upstream.
// It writes the bytes into a cache ingest and lets any number of readers stream them from the
// ingest file as they arrive. It runs detached from the requests that wait on it, so that a
// client that disconnects does not stop it: the next request finds the blob cached.
//
// Its state is its own: other code learns it through its methods (started, state, wait,
// reader) and never takes its lock.
type fill struct {
	deps     fillDeps
	key      string // registry/repository@digest
	registry string
	repo     string
	dgst     digest.Digest
	// peers, when not nil, are asked for the blob before the upstream.
	peers Peers

	ready  chan struct{}           // closed when size is known, or the fill failed before that
	cancel context.CancelCauseFunc // ends the fill before its time (abandoned past the limit)

	mu        sync.Mutex
	cond      *sync.Cond
	size      int64    // -1 while unknown (the upstream sent no Content-Length)
	file      *os.File // the ingest, for readers; nil when the blob proved to be cached already
	written   int64    // bytes in the ingest file
	done      bool     // the fill ended; err says how
	err       error
	fromStore bool   // the blob was already cached: read it from the store
	verified  bool   // all bytes arrived and match the digest
	source    string // the peer whose bytes the ingest holds; "" for the upstream's
	handedOut bool   // a reader got bytes: the fill cannot start over from another source
	readers   int
	// abandonedAt is when the last reader left a fill still running (valid while readers is 0
	// and done is false).
	abandonedAt time.Time
}

// fillDeps is what a fill needs from the resolver that starts it, given at creation: the same
// for all the fills of a resolver.
type fillDeps struct {
	store fillStore
	// headerTimeout bounds the wait for the upstream's response headers, fillTimeout the whole
	// download; idleTimeout is the window of the progress rule (see minFillProgress).
	headerTimeout, fillTimeout, idleTimeout time.Duration
	// peerWait bounds the wait for the peers' response headers.
	peerWait time.Duration
	// maxBlobSize is the largest blob a fill accepts.
	maxBlobSize int64
	// holdWhole is the size up to which readers get no byte before the blob verified (see
	// Options.VerifyBeforeSend); negative: none.
	holdWhole int64
	// mismatches counts blobs that the upstream sent with another digest.
	mismatches *atomic.Int64
	// abandoned is told of a fill whose last reader left while it still runs.
	abandoned func(*fill)
	// cached is told of a blob the fill committed to the cache (for the cluster).
	cached func(registry, repo string, dgst digest.Digest)
}

// fillStore is what a fill needs of the cache: a room check, an ingest to write and read back,
// and the link of the blob to its repository. Its errors are those of cache.Store.
type fillStore interface {
	CheckRoom(size int64) error
	// LinkingTo's writers link the blob to the repository in the commit that caches it.
	LinkingTo(repository string) content.Ingester
	OpenIngest(ref string) (*os.File, error)
	Abort(ctx context.Context, ref string) error
	Link(ctx context.Context, repository string, dgst digest.Digest) error
}

var _ fillStore = (*cache.Store)(nil)

// fillState is what a fill knows at one moment.
type fillState struct {
	size      int64 // -1 while unknown
	written   int64 // bytes that arrived
	fromStore bool  // the blob was already cached: read it from the store
	done      bool  // the fill ended; err says how
	err       error
	source    string // the peer the bytes come from; "" for the upstream
}

// minFillProgress is the least a fill must receive in every IdleTimeout (30 s by default): 64 KiB,
// or the rest of the blob when less is left. An upstream that sends less, even a byte at a time
// (a slowloris), is cut off as stalled, with errdefs.ErrUnavailable, instead of holding the fill
// open until the FillTimeout (1 h by default). A blob that ends within the window always passes.
//
// At the default timeout this is a floor of about 2.2 KB/s. A slow but working registry is far
// above it: a 1 MiB/s link moves 30 MiB in a window, about 480 times the floor, so even 480
// fills sharing that link at once pass; a 56 kbit/s modem line (7 KB/s) passes. A 20 B/s trickle
// of a 64 KiB blob, which the fill timeout alone would allow for 55 minutes, is cut off after
// one window.
const minFillProgress = 64 << 10

// stallError ends a fill whose upstream sent less than minFillProgress in a window.
type stallError struct {
	got, need int64
	window    time.Duration
}

func (e *stallError) Error() string {
	return fmt.Sprintf("upstream stalled: it sent %d bytes in %s, less than the minimum of %d bytes in every %s (%.0f bytes/s)",
		e.got, e.window, e.need, e.window, float64(e.need)/e.window.Seconds())
}

func (e *stallError) Unwrap() error { return errdefs.ErrUnavailable }

// joinFill returns the fill of key, starting it if there is none, and counts a reader on it.
// A new fill needs one of the MaxFills slots: when none is free, joinFill waits for one up to
// the fill queue timeout, or until ctx ends, and then returns ErrTooManyFills (or ctx's error).
//
// peers, when not nil, are asked for the blob before the upstream by a fill this call starts;
// a request that joins a running fill shares its sources.
func (r *Resolver) joinFill(ctx context.Context, registry, repo string, dgst digest.Digest, eps []*endpoint, peers Peers) (*fill, error) {
	key := registry + "/" + repo + "@" + dgst.String()
	if f := r.findFill(key); f != nil {
		return f, nil
	}
	if err := r.fillSlots.acquire(ctx); err != nil {
		return nil, err
	}
	r.fillMu.Lock()
	defer r.fillMu.Unlock()
	if f, ok := r.fills[key]; ok { // started while this request waited for a slot
		r.fillSlots.release()
		f.join()
		return f, nil
	}
	fctx, cancel := context.WithCancelCause(r.ctx)
	f := newFill(r.fillDeps, key, registry, repo, dgst, peers, cancel)
	r.fills[key] = f
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.fillSlots.release()
		defer cancel(nil)
		f.run(fctx, eps, func() {
			r.fillMu.Lock()
			if r.fills[key] == f { // not a fill started after this one was cancelled
				delete(r.fills, key)
			}
			r.fillMu.Unlock()
		})
	}()
	f.join()
	return f, nil
}

// findFill joins the fill of key if there is one.
func (r *Resolver) findFill(key string) *fill {
	r.fillMu.Lock()
	defer r.fillMu.Unlock()
	f, ok := r.fills[key]
	if !ok {
		return nil
	}
	f.join()
	return f
}

func newFill(deps fillDeps, key, registry, repo string, dgst digest.Digest, peers Peers, cancel context.CancelCauseFunc) *fill {
	f := &fill{deps: deps, key: key, registry: registry, repo: repo, dgst: dgst, peers: peers, ready: make(chan struct{}), cancel: cancel, size: -1}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// limitAbandoned cancels the fills abandoned longest ago while more than MaxAbandonedFills run
// with no reader. A cancelled fill leaves the table at once (the next request starts a new
// one) and removes its ingest as it ends.
func (r *Resolver) limitAbandoned(*fill) {
	r.fillMu.Lock()
	defer r.fillMu.Unlock()
	type idle struct {
		f  *fill
		at time.Time
	}
	var abandoned []idle
	for _, f := range r.fills {
		if at, ok := f.abandonedSince(); ok {
			abandoned = append(abandoned, idle{f, at})
		}
	}
	excess := len(abandoned) - r.opts.MaxAbandonedFills
	if excess <= 0 {
		return
	}
	slices.SortFunc(abandoned, func(a, b idle) int { return a.at.Compare(b.at) })
	for _, a := range abandoned[:excess] {
		delete(r.fills, a.f.key)
		a.f.cancel(fmt.Errorf("no client reads it, and more than %d such downloads run: %w", r.opts.MaxAbandonedFills, errAbandoned))
		r.cancelled.Add(1)
	}
}

// errAbandoned ends a fill that no client reads, past the limit of such fills.
var errAbandoned = errors.New("download cancelled")

// abandonedSince reports when the fill's last reader left, if it has none and still runs.
// Joins happen under the resolver's fill lock, which its caller holds: a fill it finds
// abandoned stays so.
func (f *fill) abandonedSince() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.abandonedAt, f.readers == 0 && !f.done
}

// ErrTooManyFills is the error of a request that would start a blob download while MaxFills
// run, after waiting FillQueueTimeout for one to end. It is errdefs.ErrUnavailable too, and
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

// fillSlots counts the fills that run, against their limit.
type fillSlots struct {
	slots   chan struct{} // one element per running fill; its capacity is the limit
	wait    time.Duration // how long a new fill may wait for a slot
	waiting atomic.Int64
	refused atomic.Int64
}

// acquire takes a slot, waiting up to the queue timeout for one.
func (s *fillSlots) acquire(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		return nil
	default:
	}
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	timer := time.NewTimer(s.wait)
	defer timer.Stop()
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		s.refused.Add(1)
		return &tooManyFills{limit: cap(s.slots), wait: s.wait}
	}
}

func (s *fillSlots) release() { <-s.slots }

// FillStats says what the blob fills are doing.
type FillStats struct {
	// Running is the number of fills in progress, Abandoned those of them no client reads.
	Running, Abandoned int
	// Waiting is the number of requests waiting for a fill slot.
	Waiting int
	// Refused counts requests refused with ErrTooManyFills; Cancelled the abandoned fills
	// cancelled past MaxAbandonedFills.
	Refused, Cancelled int64
}

// Fills reports what the blob fills are doing.
func (r *Resolver) Fills() FillStats {
	st := FillStats{
		Running:   len(r.fillSlots.slots),
		Waiting:   int(r.fillSlots.waiting.Load()),
		Refused:   r.fillSlots.refused.Load(),
		Cancelled: r.cancelled.Load(),
	}
	r.fillMu.Lock()
	for _, f := range r.fills {
		if _, ok := f.abandonedSince(); ok {
			st.Abandoned++
		}
	}
	r.fillMu.Unlock()
	return st
}

// Filling reports how many bytes of dgst's fill for repoKey ("docker.io/library/alpine") have
// arrived, if one runs.
func (r *Resolver) Filling(repoKey string, dgst digest.Digest) (written int64, ok bool) {
	r.fillMu.Lock()
	f := r.fills[repoKey+"@"+dgst.String()]
	r.fillMu.Unlock()
	if f == nil {
		return 0, false
	}
	return f.state().written, true
}

// join counts a reader on the fill. Each join is undone by one release.
func (f *fill) join() {
	f.mu.Lock()
	f.readers++
	f.mu.Unlock()
}

// release drops a reader; the last one out after the fill ended closes the ingest file. The
// last one out of a fill still running tells the resolver, which bounds such fills.
func (f *fill) release() {
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
	if abandoned && f.deps.abandoned != nil {
		f.deps.abandoned(f)
	}
}

// started waits until the size is known, or the fill failed before that; it returns ctx's
// error if ctx ends first.
func (f *fill) started(ctx context.Context) error {
	select {
	case <-f.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// state reports what the fill knows now.
func (f *fill) state() fillState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fillState{size: f.size, written: f.written, fromStore: f.fromStore, done: f.done, err: f.err, source: f.source}
}

// wait waits until the fill ends, or ctx does: ended says which, err how the fill ended.
func (f *fill) wait(ctx context.Context) (ended bool, err error) {
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

// reader streams the bytes [off, off+length) of the blob as they arrive. The caller holds a
// reader on the fill (join) for as long as it uses it. A peer's reader (forPeer) is not held
// whole by the verify-before-send size: the peer verifies the bytes itself, and only the last
// byte is held back until the blob verified.
func (f *fill) reader(ctx context.Context, off, length int64, forPeer bool) *fillReader {
	return &fillReader{ctx: ctx, f: f, pos: off, end: off + length, forPeer: forPeer}
}

// run downloads the blob within the fill timeout, then calls forget (after which a request
// starts a new fill) and wakes the readers with the outcome.
func (f *fill) run(parent context.Context, eps []*endpoint, forget func()) {
	ctx, cancel := context.WithTimeout(parent, f.deps.fillTimeout)
	defer cancel()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("blob", f.key))
	err := f.download(ctx, eps)
	if err != nil {
		log.G(ctx).WithError(err).Warn("blob fill failed")
	}
	forget()
	f.finish(err)
}

func (f *fill) finish(err error) {
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

// blobSource is an answer to a blob GET: from an upstream endpoint, or from a peer.
type blobSource struct {
	body io.ReadCloser
	size int64     // -1 when the source sent no Content-Length
	ep   *endpoint // the upstream endpoint that answered; nil for a peer
	peer string    // the peer that sent it; "" for an upstream
}

// name names the source in messages: "upstream https://…" or "peer node-b".
func (s blobSource) name() string {
	if s.ep == nil {
		return "peer " + s.peer
	}
	return "upstream " + s.ep.client.Endpoint()
}

// maxPeerAttempts is how many peer sources a fill tries, one after the other as long as no
// byte reached a reader, before it goes to the upstream.
const maxPeerAttempts = 3

// download fetches the blob and commits it to the cache: from the cluster first when the fill
// has peers (a holder, or the digest's home filling it), then from the first endpoint that
// has it. A peer's bytes that fail verification, or stop short, are thrown away and the next
// source tried, as long as no byte of them reached a reader; otherwise the fill fails as
// an upstream's does. Response headers must arrive within the upstream timeout; after that the
// body may take up to the fill timeout, as long as every idle timeout brings at least
// minFillProgress bytes (or the rest of the blob).
func (f *fill) download(ctx context.Context, eps []*endpoint) error {
	ref := fillRefPrefix + f.key
	var w content.Writer // opened once, for the first source that answered
	committed := false
	defer func() {
		if w != nil && !committed {
			f.discard(ctx, w, ref)
		}
	}()
	var skip []string // the peers that failed this fill
	for {
		src, rctx, stopRead, err := f.fetch(ctx, eps, skip)
		if err != nil {
			return fmt.Errorf("fetch blob: %w", err)
		}
		if w == nil {
			w, err = f.deps.store.LinkingTo(f.registry+"/"+f.repo).Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Digest: f.dgst, Size: max(src.size, 0)}))
			if errdefs.IsAlreadyExists(err) {
				w = nil
				src.body.Close()
				stopRead(nil)
				return f.alreadyCached(ctx)
			}
			if err != nil {
				src.body.Close()
				stopRead(nil)
				return fmt.Errorf("open cache ingest: %w", err)
			}
		}
		n, err := f.transfer(ctx, rctx, stopRead, src, w, ref)
		stopRead(nil)
		if err == nil {
			if committed, err = f.commit(ctx, w, n); err == nil {
				f.deps.cached(f.registry, f.repo, f.dgst)
			}
			return err
		}
		if src.peer == "" || ctx.Err() != nil || !f.startOver() {
			return err
		}
		log.G(ctx).WithError(err).WithField("peer", src.peer).Warn("blob from a peer failed: trying the next source")
		skip = append(skip, src.peer)
	}
}

// transfer receives src's body into the ingest w of ref and verifies it; it returns the
// number of bytes, verified.
func (f *fill) transfer(ctx, rctx context.Context, stopRead context.CancelCauseFunc, src blobSource, w content.Writer, ref string) (int64, error) {
	defer src.body.Close()
	// The clients end a body only on Close: close it when the fill's context ends (the fill
	// timeout, a stall past the idle timeout, or the resolver closing).
	stopClose := context.AfterFunc(rctx, func() { src.body.Close() })
	defer stopClose()
	if src.size > f.deps.maxBlobSize {
		return 0, f.tooLarge(src.size)
	}
	if src.size > 0 {
		if err := f.deps.store.CheckRoom(src.size); err != nil {
			return 0, err
		}
	}
	if err := f.open(w, ref, src); err != nil {
		return 0, err
	}
	var n int64
	var err error
	if src.ep != nil {
		bodyStart := time.Now()
		defer func() { src.ep.report(UpstreamRequest{Op: "blob-body", Duration: time.Since(bodyStart), Bytes: n}) }()
	}
	n, err = f.receive(ctx, rctx, stopRead, src, w)
	if err != nil {
		return n, err
	}
	return n, f.verify(ctx, w, src, n)
}

// tooLarge is the error of a blob of more than the maximum blob size.
func (f *fill) tooLarge(size int64) error {
	return fmt.Errorf("blob %s has %d bytes or more, more than the maximum blob size of %d bytes: %w", f.dgst, size, f.deps.maxBlobSize, errdefs.ErrResourceExhausted)
}

// alreadyCached ends a fill that found the blob in the cache: its readers read it from there,
// and the blob is linked to the repository.
func (f *fill) alreadyCached(ctx context.Context) error {
	f.mu.Lock()
	f.fromStore, f.source = true, ""
	f.mu.Unlock()
	if err := f.deps.store.Link(ctx, f.registry+"/"+f.repo, f.dgst); err != nil {
		return err
	}
	f.deps.cached(f.registry, f.repo, f.dgst)
	return nil
}

// discard closes and removes the ingest w of ref, which was not committed: nothing partial is
// cached.
func (f *fill) discard(ctx context.Context, w content.Writer, ref string) {
	w.Close()
	if err := f.deps.store.Abort(context.WithoutCancel(ctx), ref); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Warn("cannot remove a failed fill's ingest")
	}
}

// fetch opens the next source of the blob: the cluster's (unless the fill has no peers, or
// tried maxPeerAttempts of them; the peers in skip failed it), then the first endpoint that
// has it. Response headers that take longer than the upstream timeout (the peer wait for a
// peer, whose answer may wait on its own fill's) stop rctx. The caller calls stopRead when it is
// done with the source.
func (f *fill) fetch(ctx context.Context, eps []*endpoint, skip []string) (_ blobSource, rctx context.Context, stopRead context.CancelCauseFunc, _ error) {
	if f.peers != nil && len(skip) < maxPeerAttempts {
		// The timer stops this attempt's context: its own variables, not the results, which
		// the upstream's attempt reuses (a timer that fired as OpenBlob gave up would stop that).
		pctx, stopPeer := context.WithCancelCause(ctx)
		headers := time.AfterFunc(f.deps.peerWait, func() { stopPeer(context.DeadlineExceeded) })
		pb, err := f.peers.OpenBlob(pctx, f.registry, f.repo, f.dgst, skip)
		headers.Stop()
		if err == nil && pb.Body == nil {
			err = fmt.Errorf("peer %s answered without a body", pb.Peer)
		} else if err == nil && context.Cause(pctx) != nil {
			pb.Body.Close()
			err = context.Cause(pctx)
		}
		if err == nil {
			return blobSource{body: pb.Body, size: pb.Size, peer: pb.Peer}, pctx, stopPeer, nil
		}
		stopPeer(nil)
		entry := log.G(ctx).WithError(err)
		if errdefs.IsNotFound(err) {
			entry.Debug("no peer can provide the blob: asking the upstream")
		} else {
			entry.Info("the peers failed to provide the blob: asking the upstream")
		}
	}
	rctx, stopRead = context.WithCancelCause(ctx)
	headers := time.AfterFunc(f.deps.headerTimeout, func() { stopRead(context.DeadlineExceeded) })
	defer headers.Stop()
	src, ep, err := try(rctx, eps, "get-blob", func(ctx context.Context, c Client) (blobSource, error) {
		body, size, err := c.GetBlob(ctx, f.repo, f.dgst)
		return blobSource{body: body, size: size}, err
	})
	if err != nil {
		stopRead(nil)
		return blobSource{}, nil, nil, err
	}
	src.ep = ep
	return src, rctx, stopRead, nil
}

// open starts the ingest w of ref over (a fill interrupted earlier starts over, and so does one
// that tries its next source), opens it for the readers and lets them in. A source after the
// first must agree with the size the readers were given, unless they were not given it (a
// blob small enough that they wait for it whole, see Blob).
func (f *fill) open(w content.Writer, ref string, src blobSource) error {
	if err := w.Truncate(0); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.ready:
		if f.size > verifyFirstMax && src.size != f.size {
			return fmt.Errorf("%s has %d bytes of blob %s, not the %d bytes announced: %w", src.name(), src.size, f.dgst, f.size, errdefs.ErrFailedPrecondition)
		}
		f.size, f.source = src.size, src.peer
		return nil
	default:
	}
	file, err := f.deps.store.OpenIngest(ref)
	if err != nil {
		return err
	}
	f.size, f.file, f.source = src.size, file, src.peer
	close(f.ready)
	return nil
}

// startOver readies the fill for its next source after a peer failed it, and reports whether
// it may: only when no byte reached a reader. From here no reader gets a byte of what the
// failed source sent.
func (f *fill) startOver() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.handedOut {
		return false
	}
	f.written = 0
	return true
}

// receive copies the upstream body into the ingest w, waking the readers after every stretch,
// and returns how many bytes it wrote. It stops reading (through stopRead, which closes the
// body) when the upstream breaks the progress rule: each window of the idle timeout must bring
// need bytes; the window starts again once they are in.
func (f *fill) receive(ctx, rctx context.Context, stopRead context.CancelCauseFunc, up blobSource, w content.Writer) (int64, error) {
	window := f.deps.idleTimeout
	needFrom := func(n int64) int64 {
		if up.size < 0 {
			return minFillProgress
		}
		return max(min(up.size-n, minFillProgress), 1)
	}
	var windowGot, windowNeed atomic.Int64 // written here, read by the timer
	windowNeed.Store(needFrom(0))
	progress := time.AfterFunc(window, func() {
		stopRead(&stallError{got: windowGot.Load(), need: windowNeed.Load(), window: window})
	})
	defer progress.Stop()
	buf := make([]byte, receiveBufferSize)
	var n int64
	nextRoomCheck := int64(roomCheckStep) // for a body of unknown size
	for {
		m, rerr := up.body.Read(buf)
		if m > 0 {
			if up.size >= 0 && n+int64(m) > up.size {
				return n, fmt.Errorf("%s sent more than its Content-Length of %d: %w", up.name(), up.size, errdefs.ErrFailedPrecondition)
			}
			if up.size < 0 {
				if n+int64(m) > f.deps.maxBlobSize {
					return n, f.tooLarge(n + int64(m))
				}
				if n+int64(m) >= nextRoomCheck {
					if err := f.deps.store.CheckRoom(n + int64(m)); err != nil {
						return n, fmt.Errorf("%s sent a body of unknown size: after %d bytes: %w", up.name(), n+int64(m), err)
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
				// The fill closed the body (a stall, the fill timeout, the resolver
				// closing): the cause is the news, not the read error that followed.
				if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
					cause = fmt.Errorf("the fill timeout of %s passed: %w", f.deps.fillTimeout, cause)
				}
				rerr = cause
			}
			return n, fmt.Errorf("read blob from %s after %d bytes: %w", up.name(), n, rerr)
		}
	}
	if up.size >= 0 && n != up.size {
		return n, fmt.Errorf("%s body ended after %d of %d bytes: %w", up.name(), n, up.size, errdefs.ErrUnavailable)
	}
	return n, nil
}

// receiveBufferSize is the most a fill reads from the upstream at once, and so hands at once to
// the ingest writer (which hashes it beside the file write) and the readers.
const receiveBufferSize = 1 << 20

// roomCheckStep is how often a body of unknown size has the cache's room checked as it arrives:
// every 4 MiB, so that a body that does not fit is cut off within 4 MiB of the cache's budget.
// The check asks for room for all the bytes so far, in a filesystem that holds them already:
// against free space it is conservative (it wants them twice), never lenient.
const roomCheckStep = 4 << 20

// verify checks the n bytes written to w against the digest, and lets the readers finish: they
// need not wait for the fsync of the commit. (Commit verifies again, and makes them durable.)
// A peer that sent other bytes is reported to the cluster (Peers.Reject).
func (f *fill) verify(ctx context.Context, w content.Writer, src blobSource, n int64) error {
	if actual := w.Digest(); actual != f.dgst {
		err := fmt.Errorf("%s sent %d bytes with digest %s, not the requested one: %w", src.name(), n, actual, errdefs.ErrFailedPrecondition)
		if src.ep == nil {
			f.peers.Reject(src.peer, f.dgst)
			log.G(ctx).WithError(err).Warn("peer blob does not match its digest: not cached")
			return err
		}
		f.deps.mismatches.Add(1)
		log.G(ctx).WithError(err).Error("upstream blob does not match its digest: not cached")
		return err
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
func (f *fill) commit(ctx context.Context, w content.Writer, n int64) (committed bool, err error) {
	if err := w.Commit(ctx, n, f.dgst); err != nil {
		if errdefs.IsAlreadyExists(err) {
			return true, nil
		}
		if errdefs.IsFailedPrecondition(err) {
			// The bytes verified as they were written: the ingest file changed since.
			log.G(ctx).WithError(err).Error("cache ingest does not match the verified bytes: not cached")
		}
		return false, err
	}
	return true, nil
}

// fillReader streams [pos, end) of a fill's blob as it arrives. end is -1 for "to the end".
type fillReader struct {
	// ctx is the client's: once it ends the reader stops waiting for bytes, so that a client
	// that left counts as gone (see Options.MaxAbandonedFills) even while no byte arrives.
	ctx      context.Context
	f        *fill
	pos, end int64
	forPeer  bool // a peer's reader: see fill.reader
}

// ErrSourceFailed marks the errors of a blob reader's WriteTo that are the blob's own (the
// upstream download failed or did not verify), as opposed to the destination's.
var ErrSourceFailed = errors.New("the blob's source failed")

// available waits until bytes at fr.pos may be read, and returns how many; io.EOF once the range
// is delivered, or the fill's error.
func (fr *fillReader) available() (int64, error) {
	return fr.f.available(fr.ctx, fr.pos, fr.end, fr.forPeer)
}

// available waits until bytes at pos may be read, and returns how many up to rangeEnd (-1 for
// the end of the blob); io.EOF once [pos, rangeEnd) is delivered, or the fill's error.
//
// No reader completes before the blob verified: until then the last byte of every range is
// held back, so that a client never holds a complete body, whole or partial, of bytes that may
// prove wrong. A blob that fails verification thus always reaches its readers as an error
// before their last byte, and the mirror breaks the connection: the client sees a broken
// transfer, never a complete one. (containerd commits a complete download it holds without
// fetching it again, and resumes a partial one; a complete range could be stitched into a blob
// by a client that fetches in parts.) Ranges that end before the blob's end wait for the
// verification of the whole blob too: the conservative choice, since a client cannot tell a
// range of a blob that failed from a good one. A blob of up to holdWhole bytes gives its readers
// no byte at all before it verified.
//
// It stops waiting once ctx, the client's, ends: a client that left no longer counts as a
// reader once its request returns, even while the upstream sends nothing. A peer's reader
// (forPeer) is never held whole: it verifies the bytes itself.
//
// Once it hands out a byte the fill can no longer start over from another source.
func (f *fill) available(ctx context.Context, pos, rangeEnd int64, forPeer bool) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var stopWake func() bool
	defer func() {
		if stopWake != nil {
			stopWake()
		}
	}()
	for {
		end := rangeEnd
		if end < 0 && f.verified {
			end = f.size
		}
		if f.verified && pos >= end {
			return 0, io.EOF
		}
		// What may be read now: what arrived, less the last byte of the range (or of what
		// arrived, while the size is unknown) until the blob verified; nothing at all of a
		// blob held whole until it verified.
		limit := f.written
		if end >= 0 {
			limit = min(limit, end)
		}
		if !f.verified {
			switch {
			case !forPeer && f.size >= 0 && f.size <= f.deps.holdWhole:
				limit = 0 // nothing before the whole blob verified
			case end >= 0:
				limit = min(limit, end-1)
			default:
				limit = min(limit, f.written-1)
			}
		}
		if pos < limit {
			f.handedOut = true
			return limit - pos, nil
		}
		if f.done {
			err := f.err
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("blob %s: %w", f.dgst, err)
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("blob %s: the client left: %w", f.dgst, err)
		}
		if stopWake == nil {
			stopWake = context.AfterFunc(ctx, func() {
				f.mu.Lock()
				f.cond.Broadcast()
				f.mu.Unlock()
			})
		}
		f.cond.Wait()
	}
}

// ingest returns the ingest file, open while a reader counts on the fill.
func (f *fill) ingest() *os.File {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.file
}

func (fr *fillReader) Read(p []byte) (int, error) {
	n, err := fr.available()
	if err != nil {
		return 0, err
	}
	file := fr.f.ingest()
	n = min(n, int64(len(p)))
	m, err := file.ReadAt(p[:n], fr.pos)
	fr.pos += int64(m)
	if err == io.EOF && int64(m) == n {
		err = nil
	}
	return m, err
}

// WriteTo sends the rest of the range to w as it arrives, each stretch that has arrived straight
// from the ingest file. When w is net/http's ResponseWriter that is sendfile, which spares
// copying every byte through user space once per client: it matters most when many clients
// wait on one download. Errors of the fill are marked with ErrSourceFailed.
func (fr *fillReader) WriteTo(w io.Writer) (int64, error) {
	own, err := fr.ownFile()
	if err != nil {
		// No /proc (an unusual sandbox): copy through a buffer instead.
		return fr.copyTo(w)
	}
	defer own.Close()
	var total int64
	for {
		n, err := fr.available()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("%w: %w", ErrSourceFailed, err)
		}
		if _, err := own.Seek(fr.pos, io.SeekStart); err != nil {
			return total, fmt.Errorf("%w: %w", ErrSourceFailed, err)
		}
		m, err := io.Copy(w, &io.LimitedReader{R: own, N: n})
		fr.pos += m
		total += m
		if err != nil {
			return total, err
		}
		if m < n { // the ingest file is shorter than what was written to it
			return total, fmt.Errorf("%w: blob %s: ingest file ended at %d: %w", ErrSourceFailed, fr.f.dgst, fr.pos, io.ErrUnexpectedEOF)
		}
	}
}

// copyTo is WriteTo through a buffer, with Read.
func (fr *fillReader) copyTo(w io.Writer) (int64, error) {
	buf := make([]byte, 256<<10)
	var total int64
	for {
		n, err := fr.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("%w: %w", ErrSourceFailed, err)
		}
	}
}

// ownFile opens the fill's ingest file again, with a file offset of its own for WriteTo. It goes
// through /proc/self/fd because the ingest may have been committed (renamed) already.
func (fr *fillReader) ownFile() (*os.File, error) {
	file := fr.f.ingest()
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, err
	}
	var own *os.File
	var oerr error
	if err := rc.Control(func(fd uintptr) {
		own, oerr = os.Open("/proc/self/fd/" + strconv.Itoa(int(fd)))
	}); err != nil {
		return nil, err
	}
	return own, oerr
}

func (fr *fillReader) Close() error { return nil }
