package fill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// Reader streams the bytes [off, off+length) of the blob as they arrive. The caller holds a
// reader on the fill (from Join) for as long as it uses it. A peer's reader (forPeer) is not
// held whole by HoldWhole: the peer verifies the bytes itself, and only the last byte is held
// back until the blob verified. The reader is an io.WriterTo that sends each stretch from the
// ingest file (sendfile, to net/http's ResponseWriter).
func (f *Fill) Reader(ctx context.Context, off, length int64, forPeer bool) io.ReadCloser {
	return &reader{ctx: ctx, f: f, pos: off, end: off + length, forPeer: forPeer}
}

// reader streams [pos, end) of a fill's blob as it arrives. end is -1 for "to the end".
type reader struct {
	// ctx is the client's: once it ends the reader stops waiting for bytes, so that a client
	// that left counts as gone (see Options.MaxAbandonedFills) even while no byte arrives.
	ctx      context.Context
	f        *Fill
	pos, end int64
	forPeer  bool // a peer's reader: see fill.reader
}

// ErrSourceFailed marks the errors of a blob reader's WriteTo that are the blob's own (the
// upstream download failed or did not verify), as opposed to the destination's.
var ErrSourceFailed = errors.New("the blob's source failed")

// available waits until bytes at fr.pos may be read, and returns how many; io.EOF once the range
// is delivered, or the fill's error.
func (fr *reader) available() (int64, error) {
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
func (f *Fill) available(ctx context.Context, pos, rangeEnd int64, forPeer bool) (int64, error) {
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
			case !forPeer && f.size >= 0 && f.size <= f.e.opts.HoldWhole:
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
			return 0, fmt.Errorf("blob %s: %w", f.key.Digest, err)
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("blob %s: the client left: %w", f.key.Digest, err)
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
func (f *Fill) ingest() *os.File {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.file
}

func (fr *reader) Read(p []byte) (int, error) {
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
func (fr *reader) WriteTo(w io.Writer) (int64, error) {
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
			return total, fmt.Errorf("%w: blob %s: ingest file ended at %d: %w", ErrSourceFailed, fr.f.key.Digest, fr.pos, io.ErrUnexpectedEOF)
		}
	}
}

// copyTo is WriteTo through a buffer, with Read.
func (fr *reader) copyTo(w io.Writer) (int64, error) {
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
func (fr *reader) ownFile() (*os.File, error) {
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

func (fr *reader) Close() error { return nil }
