package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fill is the one upstream download of a blob for a repository. It writes the bytes into a cache
// ingest and lets any number of readers stream them from the ingest file as they arrive. It
// runs detached from the requests that wait on it, so that a client that disconnects does not
// stop it: the next request finds the blob cached.
type fill struct {
	r        *Resolver
	key      string // registry/repository@digest
	registry string
	repo     string
	dgst     digest.Digest

	ready chan struct{} // closed when size is known, or the fill failed before that

	mu        sync.Mutex
	cond      *sync.Cond
	size      int64    // -1 while unknown (the upstream sent no Content-Length)
	file      *os.File // the ingest, for readers; nil when the blob proved to be cached already
	written   int64    // bytes in the ingest file
	done      bool     // the fill ended; err says how
	err       error
	fromStore bool // the blob was already cached: read it from the store
	verified  bool // all bytes arrived and match the digest
	readers   int
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
func (r *Resolver) joinFill(registry, repo string, dgst digest.Digest, eps []*endpoint) *fill {
	key := registry + "/" + repo + "@" + dgst.String()
	r.fillMu.Lock()
	defer r.fillMu.Unlock()
	f, ok := r.fills[key]
	if !ok {
		f = &fill{r: r, key: key, registry: registry, repo: repo, dgst: dgst, ready: make(chan struct{}), size: -1}
		f.cond = sync.NewCond(&f.mu)
		r.fills[key] = f
		r.wg.Add(1)
		go f.run(eps)
	}
	f.mu.Lock()
	f.readers++
	f.mu.Unlock()
	return f
}

// release drops a reader; the last one out after the fill ended closes the ingest file.
func (f *fill) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readers--
	if f.readers == 0 && f.done && f.file != nil {
		f.file.Close()
		f.file = nil
	}
}

func (f *fill) run(eps []*endpoint) {
	defer f.r.wg.Done()
	ctx, cancel := context.WithTimeout(f.r.ctx, f.r.opts.FillTimeout)
	defer cancel()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("blob", f.key))
	err := f.download(ctx, eps)
	if err != nil {
		log.G(ctx).WithError(err).Warn("blob fill failed")
	}
	f.finish(err)
}

func (f *fill) finish(err error) {
	f.r.fillMu.Lock()
	delete(f.r.fills, f.key)
	f.r.fillMu.Unlock()
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

// download fetches the blob from the first endpoint that has it and commits it to the cache.
// Response headers must arrive within the upstream timeout; after that the body may take up to
// the fill timeout, as long as every idle timeout brings at least minFillProgress bytes (or the
// rest of the blob).
func (f *fill) download(ctx context.Context, eps []*endpoint) error {
	rctx, stopRead := context.WithCancelCause(ctx)
	defer stopRead(nil)
	headers := time.AfterFunc(f.r.opts.UpstreamTimeout, func() { stopRead(context.DeadlineExceeded) })
	type resp struct {
		body io.ReadCloser
		size int64
	}
	got, ep, err := try(rctx, eps, "get-blob", func(ctx context.Context, c Client) (resp, error) {
		body, size, err := c.GetBlob(ctx, f.repo, f.dgst)
		return resp{body, size}, err
	})
	headers.Stop()
	if err != nil {
		return fmt.Errorf("fetch blob: %w", err)
	}
	body := got.body
	defer body.Close()
	// The upstream client ends a body only on Close: close it when the fill's context ends
	// (the fill timeout, a stall past the idle timeout, or the resolver closing).
	stopClose := context.AfterFunc(rctx, func() { body.Close() })
	defer stopClose()
	if got.size > 0 {
		if err := f.r.store.CheckRoom(got.size); err != nil {
			return err
		}
	}

	ref := fillRefPrefix + f.key
	w, err := f.r.store.Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Digest: f.dgst, Size: max(got.size, 0)}))
	if errdefs.IsAlreadyExists(err) {
		f.mu.Lock()
		f.fromStore = true
		f.mu.Unlock()
		return f.r.store.Link(ctx, f.registry+"/"+f.repo, f.dgst)
	}
	if err != nil {
		return fmt.Errorf("open cache ingest: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			w.Close()
			if err := f.r.store.Abort(context.WithoutCancel(ctx), ref); err != nil && !errdefs.IsNotFound(err) {
				log.G(ctx).WithError(err).Warn("cannot remove a failed fill's ingest")
			}
		}
	}()
	if err := w.Truncate(0); err != nil { // a fill interrupted earlier starts over
		return err
	}
	file, err := f.r.store.OpenIngest(ref)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.size, f.file = got.size, file
	f.mu.Unlock()
	close(f.ready)

	// The progress rule: each window of the idle timeout must bring need bytes. The window
	// starts again once they are in.
	window := f.r.opts.IdleTimeout
	needFrom := func(n int64) int64 {
		if got.size < 0 {
			return minFillProgress
		}
		return max(min(got.size-n, minFillProgress), 1)
	}
	var windowGot, windowNeed atomic.Int64 // written here, read by the timer
	windowNeed.Store(needFrom(0))
	progress := time.AfterFunc(window, func() {
		stopRead(&stallError{got: windowGot.Load(), need: windowNeed.Load(), window: window})
	})
	defer progress.Stop()
	buf := make([]byte, 256<<10)
	var n int64
	bodyStart := time.Now()
	defer func() { ep.report(UpstreamRequest{Op: "blob-body", Duration: time.Since(bodyStart), Bytes: n}) }()
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			if got.size >= 0 && n+int64(m) > got.size {
				return fmt.Errorf("upstream %s sent more than its Content-Length of %d: %w", ep.client.Endpoint(), got.size, errdefs.ErrFailedPrecondition)
			}
			if _, err := w.Write(buf[:m]); err != nil {
				return fmt.Errorf("write to cache: %w", err)
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
					cause = fmt.Errorf("the fill timeout of %s passed: %w", f.r.opts.FillTimeout, cause)
				}
				rerr = cause
			}
			return fmt.Errorf("read blob from upstream %s after %d bytes: %w", ep.client.Endpoint(), n, rerr)
		}
	}
	if got.size >= 0 && n != got.size {
		return fmt.Errorf("upstream %s body ended after %d of %d bytes: %w", ep.client.Endpoint(), n, got.size, errdefs.ErrUnavailable)
	}
	if actual := w.Digest(); actual != f.dgst {
		f.r.digestMismatches.Add(1)
		err := fmt.Errorf("upstream %s sent %d bytes with digest %s, not the requested one: %w", ep.client.Endpoint(), n, actual, errdefs.ErrFailedPrecondition)
		log.G(ctx).WithError(err).Error("upstream blob does not match its digest: not cached")
		return err
	}
	// The bytes are verified: readers may finish now rather than wait for the fsync of the
	// commit. (Commit verifies again, and makes them durable.)
	f.mu.Lock()
	f.size, f.verified = n, true
	f.cond.Broadcast()
	f.mu.Unlock()
	// Linked first, so that the moment the blob is in the cache the next request finds it
	// there. A link to a blob that is not cached means nothing.
	if err := f.r.store.Link(ctx, f.registry+"/"+f.repo, f.dgst); err != nil {
		return err
	}
	if err := w.Commit(ctx, n, f.dgst); err != nil {
		if errdefs.IsAlreadyExists(err) {
			committed = true
			return nil
		}
		if errdefs.IsFailedPrecondition(err) {
			// The bytes verified as they were written: the ingest file changed since.
			log.G(ctx).WithError(err).Error("cache ingest does not match the verified bytes: not cached")
		}
		return err
	}
	committed = true
	return nil
}

// fillReader streams [pos, end) of a fill's blob as it arrives. end is -1 for "to the end".
type fillReader struct {
	f        *fill
	pos, end int64
}

// ErrSourceFailed marks the errors of a blob reader's WriteTo that are the blob's own (the
// upstream download failed or did not verify), as opposed to the destination's.
var ErrSourceFailed = errors.New("the blob's source failed")

// available waits until bytes at fr.pos may be read, and returns how many; io.EOF once the range
// is delivered, or the fill's error. Bytes up to the end of the blob are only complete once the
// fill verified them: until then the reader waits at the end rather than report it.
func (fr *fillReader) available() (int64, error) {
	f := fr.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		end := fr.end
		if end < 0 && f.verified {
			end = f.size
		}
		if end >= 0 && fr.pos >= end && (fr.end >= 0 && fr.end < f.size || f.verified) {
			return 0, io.EOF
		}
		if fr.pos < f.written && (end < 0 || fr.pos < end) {
			n := f.written - fr.pos
			if end >= 0 {
				n = min(n, end-fr.pos)
			}
			return n, nil
		}
		if f.done {
			err := f.err
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("blob %s: %w", f.dgst, err)
		}
		f.cond.Wait()
	}
}

func (fr *fillReader) Read(p []byte) (int, error) {
	n, err := fr.available()
	if err != nil {
		return 0, err
	}
	fr.f.mu.Lock()
	file := fr.f.file // open while this reader counts on the fill
	fr.f.mu.Unlock()
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
	fr.f.mu.Lock()
	file := fr.f.file // open while this reader counts on the fill
	fr.f.mu.Unlock()
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
