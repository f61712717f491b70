package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// maxErrorBody is how much of an error response is read for its OCI error code.
const maxErrorBody = 64 << 10

// IsEndpointFailure reports whether err says the endpoint is unhealthy: 408, 429, 5xx,
// connection, DNS and TLS failures, timeouts and deadlines, truncated responses
// (errdefs.ErrUnavailable or context.DeadlineExceeded). Not-found, auth errors, bad input and
// the caller's own cancellation (context.Canceled) are not failures of the endpoint.
func IsEndpointFailure(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	return errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded)
}

// RetryAfter returns how long a 429 (or 503) answer asked the client to wait, from its
// Retry-After header (seconds or an HTTP date). ok is false when err carries no such header.
func RetryAfter(err error) (d time.Duration, ok bool) {
	var se *statusError
	if errors.As(err, &se) && se.hasRetryAfter {
		return se.retryAfter, true
	}
	return 0, false
}

// statusError is an answer from the endpoint with an unexpected status.
type statusError struct {
	host    string // the endpoint's host
	op      string // "GET /v2/library/alpine/manifests/latest"
	status  int
	code    string // OCI error code of the body, if any
	message string // its message, shortened

	retryAfter    time.Duration
	hasRetryAfter bool
	simulated     string // the outage mode when lifeboat's simulator made this answer up

	class error // the errdefs class
}

func (e *statusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s: %s: %d %s", e.host, e.op, e.status, http.StatusText(e.status))
	if e.code != "" {
		b.WriteString(": " + e.code)
		// An answer the simulator made up says in its body what the header says: once is enough.
		if e.message != "" && e.simulated == "" {
			b.WriteString(" (" + e.message + ")")
		}
	}
	if e.hasRetryAfter {
		fmt.Fprintf(&b, ", retry after %s", e.retryAfter)
	}
	if e.simulated != "" {
		fmt.Fprintf(&b, " (lifeboat simulated outage: %s)", e.simulated)
	}
	b.WriteString(": " + e.class.Error())
	return b.String()
}

func (e *statusError) Unwrap() error { return e.class }

// hasStatus reports whether err is an answer with the given status.
func hasStatus(err error, status int) bool {
	var se *statusError
	return errors.As(err, &se) && se.status == status
}

// newStatusError reads (a bounded part of) resp's body for an OCI error and classifies the
// answer. It does not close the body.
func newStatusError(host, op string, resp *http.Response) *statusError {
	e := &statusError{host: host, op: op, status: resp.StatusCode}
	// The header the outage simulator puts on the answers it makes up; a HEAD has no body
	// to say so.
	e.simulated = printable(resp.Header.Get(oci.HeaderSimulatedOutage), 32)
	if resp.Body != nil && resp.Request != nil && resp.Request.Method != http.MethodHead {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if code, message, ok := oci.DecodeError(body); ok {
			e.code = printable(string(code), 64)
			e.message = printable(message, 200)
		}
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.retryAfter, e.hasRetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	e.class = classifyStatus(resp.StatusCode, e.code)
	return e
}

// classifyStatus maps an HTTP status, and the OCI error code of its body, to an errdefs class.
func classifyStatus(status int, code string) error {
	switch {
	case status == http.StatusUnauthorized:
		return errdefs.ErrUnauthenticated
	case status == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case status == http.StatusNotFound:
		return errdefs.ErrNotFound
	case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout, status >= 500:
		return errdefs.ErrUnavailable
	}
	switch oci.ErrorCode(code) {
	case oci.CodeManifestUnknown, oci.CodeBlobUnknown, oci.CodeNameUnknown:
		return errdefs.ErrNotFound
	case oci.CodeUnauthorized:
		return errdefs.ErrUnauthenticated
	case oci.CodeDenied:
		return errdefs.ErrPermissionDenied
	case oci.CodeTooManyRequests:
		return errdefs.ErrUnavailable
	}
	switch status {
	case http.StatusBadRequest:
		return errdefs.ErrInvalidArgument
	case http.StatusMethodNotAllowed:
		return errdefs.ErrNotImplemented
	case http.StatusRequestedRangeNotSatisfiable:
		return errdefs.ErrOutOfRange
	}
	return errdefs.ErrUnknown
}

// parseRetryAfter parses a Retry-After value: delay-seconds or an HTTP date (a date in the past
// is a zero wait).
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		const maxSecs = int64(1<<63-1) / int64(time.Second)
		return time.Duration(min(secs, maxSecs)) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// transportError classifies an error from sending a request or reading its answer: the
// caller's ctx ending, else an endpoint failure. A *url.Error is unwrapped so that no URL (a
// redirect target may carry a signed query) reaches the message.
func transportError(ctx context.Context, what string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if ctx.Err() != nil {
		cerr := ctxErr(ctx, what)
		if err == nil || err.Error() == ctx.Err().Error() || err.Error() == context.Cause(ctx).Error() {
			return cerr
		}
		// Keep what the transport said when it says more than the context (a simulated
		// outage names itself there). When that wraps the context's end already, it replaces
		// the context's words, so that the cause is said once.
		if errors.Is(cerr, context.DeadlineExceeded) && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, err)
		}
		if errors.Is(cerr, context.Canceled) && errors.Is(err, context.Canceled) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return fmt.Errorf("%w (%s)", cerr, printable(err.Error(), 300))
	}
	return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, err)
}

// printable shortens s to n bytes and drops control characters, for registry-supplied text.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "..."
	}
	return s
}
