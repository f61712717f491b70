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
	if err := validateRepo(repo); err != nil {
		return nil, 0, err
	}
	if _, err := oci.ParseDigest(dgst.String()); err != nil {
		return nil, 0, err
	}
	path := "/v2/" + repo + "/blobs/" + dgst.String()
	what := "upstream " + c.base.Host + ": GET " + path

	// The request runs on its own ctx, canceled by ctx only until the headers are in.
	rctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	resp, err := c.send(rctx, http.MethodGet, c.url(path, nil), repo)
	if !stop() {
		// ctx ended while the request was under way: whatever came back is being canceled.
		cancel(nil)
		if err != nil {
			return nil, 0, err // classified on rctx, which carries ctx's cause
		}
		drainClose(resp.Body)
		return nil, 0, ctxErr(ctx, what)
	}
	if err != nil {
		cancel(nil)
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		drainClose(resp.Body)
		cancel(nil)
		return nil, 0, fmt.Errorf("%s: unexpected status %d: %w", what, resp.StatusCode, errdefs.ErrFailedPrecondition)
	}
	return &blobBody{body: resp.Body, cancel: cancel, what: what}, resp.ContentLength, nil
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
