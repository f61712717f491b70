package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// GetBlob opens repo's blob dgst: GET /v2/<repo>/blobs/<dgst>, following redirects (to object
// storage; the endpoint's Authorization is not sent to another host). It returns the body and
// its Content-Length (-1 if unknown).
//
// ctx bounds the request until the response headers arrive, auth included. After GetBlob
// returns, ctx no longer applies: the body streams until it ends or is closed, so the caller
// applies its own idle and overall limits and must Close the body, which ends the transfer.
// Read errors from the body are classified like every other error (a broken or short body is
// errdefs.ErrUnavailable). The bytes are not verified against dgst: that is the caller's job.
func (c *Client) GetBlob(ctx context.Context, repo string, dgst digest.Digest) (io.ReadCloser, int64, error) {
	resp, body, what, err := c.getBlob(ctx, repo, dgst, nil)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		body.Close()
		return nil, 0, fmt.Errorf("%s: unexpected status %d: %w", what, resp.StatusCode, errdefs.ErrFailedPrecondition)
	}
	return body, resp.ContentLength, nil
}

// GetBlobRange opens the bytes [off, off+length) of repo's blob dgst, as GetBlob opens all of
// them, with a Range request: to resume a download that broke after off bytes. It returns the
// body, which starts at the blob's byte off, and the whole blob's size, from the answer's
// Content-Range (or Content-Length, from a registry that ignores the Range and sends the whole
// blob: the body then skips the first off bytes as it is read). off must be positive and length
// too.
//
// An answer that does not send exactly the range asked for, or whose Docker-Content-Digest
// names another blob, is errdefs.ErrFailedPrecondition; a 416 (the blob is shorter) is too.
func (c *Client) GetBlobRange(ctx context.Context, repo string, dgst digest.Digest, off, length int64) (io.ReadCloser, int64, error) {
	if off <= 0 || length <= 0 {
		return nil, 0, fmt.Errorf("blob range of %d bytes at %d: %w", length, off, errdefs.ErrInvalidArgument)
	}
	end := off + length - 1
	resp, body, what, err := c.getBlob(ctx, repo, dgst, http.Header{"Range": {oci.RangeFrom(off, off+length)}})
	if err != nil {
		return nil, 0, err
	}
	refuse := func(format string, args ...any) (io.ReadCloser, int64, error) {
		body.Close()
		return nil, 0, fmt.Errorf("%s: range %d-%d: %s: %w", what, off, end, fmt.Sprintf(format, args...), errdefs.ErrFailedPrecondition)
	}
	if h := resp.Header.Get(oci.HeaderContentDigest); h != "" && h != dgst.String() {
		return refuse("answered for digest %s", printable(h, 100))
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		first, last, size, ok := oci.ParseContentRange(resp.Header.Get("Content-Range"))
		if !ok || first != off || last != end || (resp.ContentLength >= 0 && resp.ContentLength != length) {
			return refuse("sent bytes %s (Content-Length %d)", printable(resp.Header.Get("Content-Range"), 100), resp.ContentLength)
		}
		return body, size, nil
	case http.StatusOK:
		if resp.ContentLength < off+length {
			return refuse("ignored the range and sent %d bytes", resp.ContentLength)
		}
		return &skipBody{ReadCloser: body, skip: off, what: what}, resp.ContentLength, nil
	}
	return refuse("unexpected status %d", resp.StatusCode)
}

// getBlob sends GET /v2/<repo>/blobs/<dgst> with header, for GetBlob and GetBlobRange. It
// returns the response, whose body is the returned one (a *blobBody, which the caller closes),
// and the request as errors name it.
func (c *Client) getBlob(ctx context.Context, repo string, dgst digest.Digest, header http.Header) (*http.Response, io.ReadCloser, string, error) {
	if err := validateRepo(repo); err != nil {
		return nil, nil, "", err
	}
	if _, err := oci.ParseDigest(dgst.String()); err != nil {
		return nil, nil, "", err
	}
	path := "/v2/" + repo + "/blobs/" + dgst.String()
	what := "upstream " + c.base.Host + ": GET " + path

	// The request runs on its own ctx, canceled by ctx only until the headers are in.
	rctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	resp, err := c.sendWith(rctx, http.MethodGet, c.url(path, nil), repo, header)
	if !stop() {
		// ctx ended while the request was under way: whatever came back is being canceled.
		cancel(nil)
		if err != nil {
			return nil, nil, what, err // classified on rctx, which carries ctx's cause
		}
		drainClose(resp.Body)
		return nil, nil, what, ctxErr(ctx, what)
	}
	if err != nil {
		cancel(nil)
		return nil, nil, what, err
	}
	return resp, &blobBody{body: resp.Body, cancel: cancel, what: what}, what, nil
}

// skipBody is a whole blob's body read from byte skip on: the answer of a registry that ignored
// a Range.
type skipBody struct {
	io.ReadCloser
	skip int64
	what string
}

func (b *skipBody) Read(p []byte) (int, error) {
	if b.skip > 0 {
		n, err := io.CopyN(io.Discard, b.ReadCloser, b.skip)
		b.skip -= n
		if err != nil {
			if err == io.EOF {
				err = fmt.Errorf("%s: body ended before the range: %w: %w", b.what, io.ErrUnexpectedEOF, errdefs.ErrUnavailable)
			}
			return 0, err
		}
	}
	return b.ReadCloser.Read(p)
}

// blobBody is a blob's response body whose read errors are classified, and whose Close ends the
// request.
type blobBody struct {
	body   io.ReadCloser
	cancel context.CancelCauseFunc
	what   string
	closed atomic.Bool
}

var errBodyClosed = errors.New("blob body closed")

func (b *blobBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err != nil && err != io.EOF {
		if b.closed.Load() {
			err = fmt.Errorf("%s: %w: %w", b.what, errBodyClosed, context.Canceled)
		} else {
			err = transportError(context.Background(), b.what+": reading body", err)
		}
	}
	return n, err
}

func (b *blobBody) Close() error {
	b.closed.Store(true)
	b.cancel(errBodyClosed)
	return b.body.Close()
}

// HeadBlob returns the size of repo's blob dgst from a HEAD's Content-Length. Errors: see the
// package documentation; an answer without a Content-Length, or with a Docker-Content-Digest
// other than dgst, is errdefs.ErrFailedPrecondition.
func (c *Client) HeadBlob(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	if err := validateRepo(repo); err != nil {
		return 0, err
	}
	if _, err := oci.ParseDigest(dgst.String()); err != nil {
		return 0, err
	}
	path := "/v2/" + repo + "/blobs/" + dgst.String()
	what := "upstream " + c.base.Host + ": HEAD " + path
	resp, err := c.send(ctx, http.MethodHead, c.url(path, nil), repo)
	if err != nil {
		return 0, err
	}
	drainClose(resp.Body)
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != dgst.String() {
		return 0, fmt.Errorf("%s: answered for digest %s: %w", what, printable(h, 100), errdefs.ErrFailedPrecondition)
	}
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("%s: no Content-Length: %w", what, errdefs.ErrFailedPrecondition)
	}
	return resp.ContentLength, nil
}
