package mirror

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

// copyBufferSize is the buffer of a blob copy that cannot use sendfile.
const copyBufferSize = 256 << 10

func (h *Handler) statBlob(x *exchange) {
	desc, status, err := h.backend.StatBlob(x.r.Context(), x.req.Registry, x.req.Repository, x.req.Digest)
	if err != nil {
		x.fail(err)
		return
	}
	rng, partial, ok := x.blobRange(desc, status)
	if !ok {
		return
	}
	x.setBlobHeaders(desc, status, rng, partial)
	x.w.WriteHeader(x.ans.Status)
}

func (h *Handler) blob(x *exchange) {
	b, err := h.backend.Blob(x.r.Context(), x.req.Registry, x.req.Repository, x.req.Digest)
	if err != nil {
		x.fail(err)
		return
	}
	defer b.Close()
	desc, status := b.Descriptor, b.Status
	rng, partial, ok := x.blobRange(desc, status)
	if !ok {
		return
	}
	if rng.length == 0 {
		x.setBlobHeaders(desc, status, rng, partial)
		x.w.WriteHeader(x.ans.Status)
		return
	}
	rc, err := b.Reader(rng.off, rng.length)
	if err != nil {
		x.fail(err)
		return
	}
	defer rc.Close()

	start := func() {
		x.setBlobHeaders(desc, status, rng, partial)
		x.w.WriteHeader(x.ans.Status)
	}
	var (
		n            int64
		sourceFailed bool
	)
	f, isFile := rc.(*os.File) // positioned at the range already
	if fb, ok := rc.(cache.FileBacked); ok && !isFile {
		if f = fb.File(); f != nil {
			if _, err := f.Seek(rng.off, io.SeekStart); err != nil {
				x.fail(err)
				return
			}
		}
		isFile = f != nil
	}
	if isFile {
		start()
		// io.Copy hands a limited *os.File to net/http's ReadFrom, which sends it with sendfile.
		// A local file rarely fails: count a failure as the client's unless the file was short.
		n, err = io.Copy(x.w, io.LimitReader(f, rng.length))
		sourceFailed = err == nil && n < rng.length
	} else {
		var started bool
		n, sourceFailed, started, err = h.copyBuffered(x.w, rc, rng.length, start)
		if !started {
			if err == io.EOF {
				err = fmt.Errorf("blob %s: reader ended before its first byte", x.req.Digest)
			}
			x.fail(err)
			return
		}
	}
	x.ans.Bytes = n
	if err == nil && n == rng.length {
		return
	}
	// The status and the length are sent: ending cleanly would hand the client a short body as
	// if it were complete. Abort the connection so that it sees a broken transfer.
	x.ans.Aborted = true
	entry := log.G(x.r.Context()).WithError(err).WithFields(log.Fields{
		"registry": x.req.Registry, "repository": x.req.Repository, "digest": x.req.Digest,
		"sent": n, "want": rng.length,
	})
	if sourceFailed && x.r.Context().Err() == nil {
		entry.Warn("blob stream broke after the answer started; aborting the connection")
	} else {
		entry.Debug("mirror client stopped reading a blob")
	}
	panic(http.ErrAbortHandler)
}

// copyBuffered copies length bytes of rc to w through a large buffer. It calls start (which
// sends the status) only once rc has produced its first bytes, so that a source failing at once
// still gets a clean error answer, and containerd moves on, rather than an aborted 200;
// started=false says it did not. sourceFailed says a failure, if any, was rc's: an error, or an
// end before length bytes.
func (h *Handler) copyBuffered(w http.ResponseWriter, rc io.Reader, length int64, start func()) (n int64, sourceFailed, started bool, err error) {
	bufp := h.buffers.Get().(*[]byte)
	defer h.buffers.Put(bufp)
	buf := *bufp
	src := &readSide{r: io.LimitReader(rc, length)}
	// The answer starts with the first byte, so that a source that fails before it gets a
	// proper error, which containerd follows to its next host. A source that holds its bytes
	// until it verified (a download in progress) may not have one for long: past headerDelay
	// the status and headers go out without it, well within containerd's 30 s wait for them.
	var once sync.Once
	begin := func() {
		once.Do(func() {
			start()
			_ = http.NewResponseController(w).Flush()
		})
	}
	early := time.AfterFunc(h.headerDelay, begin)
	first, err := readSome(src, buf)
	if early.Stop() && first == 0 {
		return 0, true, false, err // nothing is sent: the caller answers the error
	}
	begin() // sent already, or being sent, or to send now
	if first == 0 {
		return 0, true, true, err
	}
	wn, err := w.Write(buf[:first])
	n = int64(wn)
	if err == nil {
		var m int64
		if wt, ok := rc.(io.WriterTo); ok {
			// The reader sends the rest itself: a download in progress sends each stretch
			// that has arrived from its file, with sendfile. It stops at the range's end.
			m, err = wt.WriteTo(w)
			if errors.Is(err, fill.ErrSourceFailed) {
				src.err, err = err, nil
			}
		} else {
			// writerOnly hides the ResponseWriter's ReadFrom, so that the copy uses this
			// buffer instead of net/http's 32 KiB one.
			m, err = io.CopyBuffer(writerOnly{w}, src, buf)
		}
		n += m
	}
	if src.err != nil {
		return n, true, true, src.err
	}
	return n, err == nil && n < length, true, err
}

// readSome reads into buf until it has at least one byte or an error.
func readSome(r io.Reader, buf []byte) (int, error) {
	for range 100 {
		n, err := r.Read(buf)
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

// blobRange picks the part of a blob to send: all of it, or the one range asked for. ok is false
// when it has answered already (416, or a descriptor without a size).
func (x *exchange) blobRange(desc ocispec.Descriptor, status resolver.CacheStatus) (rng byteRange, partial, ok bool) {
	if desc.Size < 0 {
		x.fail(fmt.Errorf("blob %s: backend reported size %d", x.req.Digest, desc.Size))
		return byteRange{}, false, false
	}
	rng = byteRange{off: 0, length: desc.Size}
	hr := x.r.Header.Get("Range")
	if hr == "" {
		return rng, false, true
	}
	// A Range conditional on another version of the content is ignored (RFC 9110 13.1.5); what
	// is addressed by digest has one version only.
	if ir := x.r.Header.Get("If-Range"); ir != "" && ir != etag(x.req.Digest) {
		return rng, false, true
	}
	r, partial, unsatisfiable := parseRange(hr, desc.Size)
	if unsatisfiable {
		x.setCache(status)
		x.w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(desc.Size, 10))
		x.reject(newAPIError(http.StatusRequestedRangeNotSatisfiable, oci.CodeUnsupported, "requested range not satisfiable"))
		return byteRange{}, false, false
	}
	if partial {
		rng = r
	}
	return rng, partial, true
}

// setBlobHeaders sets the headers of a blob answer of rng, and the status it is to have.
func (x *exchange) setBlobHeaders(desc ocispec.Descriptor, status resolver.CacheStatus, rng byteRange, partial bool) {
	hdr := x.w.Header()
	x.setCache(status)
	hdr.Set(oci.HeaderContentDigest, x.req.Digest.String())
	hdr.Set("ETag", etag(x.req.Digest))
	hdr.Set("Accept-Ranges", "bytes")
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Content-Length", strconv.FormatInt(rng.length, 10))
	x.ans.Status = http.StatusOK
	if partial {
		hdr.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rng.off, rng.off+rng.length-1, desc.Size))
		x.ans.Status = http.StatusPartialContent
	}
}

// etag is the entity tag of content addressed by dgst.
func etag(dgst digest.Digest) string { return `"` + dgst.String() + `"` }

// readSide remembers its reader's error, to tell a broken source from a client gone away.
type readSide struct {
	r   io.Reader
	err error
}

func (s *readSide) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// writerOnly is a writer without the ReadFrom of the writer it wraps.
type writerOnly struct{ io.Writer }
