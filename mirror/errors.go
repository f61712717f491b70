package mirror

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

// apiError is an answer in the OCI error format, with a Retry-After when it knows one.
type apiError struct {
	oci.Error
	retryAfter time.Duration
}

func newAPIError(status int, code oci.ErrorCode, message string) *apiError {
	return &apiError{Error: oci.Error{Status: status, Code: code, Message: message}}
}

// byRoute is an error code per route, with a fallback for the routes not listed.
type byRoute struct {
	manifest, blob, tags, referrers, other oci.ErrorCode
}

func (b byRoute) code(k oci.Kind) oci.ErrorCode {
	var c oci.ErrorCode
	switch k {
	case oci.KindManifest:
		c = b.manifest
	case oci.KindBlob:
		c = b.blob
	case oci.KindTags:
		c = b.tags
	case oci.KindReferrers:
		c = b.referrers
	}
	if c == "" {
		return b.other
	}
	return c
}

// errorClasses translates Backend errors into HTTP answers; the first class that matches wins,
// and an error no class matches is an internal error (500 UNKNOWN, details only in the log).
// A registry the backend does not mirror (endpoints.ErrNotMirrored) is a 404 NAME_UNKNOWN
// saying so, before these classes.
//
// The rule behind the statuses: containerd moves on to its next hosts.toml host on a 404 and on
// any other 4xx or 5xx, and retries 500, 503 and 504 (once, when the same status repeats) only
// when the host is the last one. lifeboat is usually first, with the upstream kept as `server`.
//   - NotFound → 404: neither cached nor obtainable; containerd goes to the upstream itself.
//   - InvalidArgument → 400: the backend refused the name, reference or digest (or the upstream
//     manifest it names); retrying cannot help.
//   - FailedPrecondition → 502 Bad Gateway, UNKNOWN: the upstream served content that failed
//     verification or is too large. It is never served. Not 404 (the thing exists; a 404 would
//     hide the fault) and not 500/503 (containerd would retry on the last host and fail the same
//     way). 502 is outside containerd's retry set: as a mirror it moves on at once; as the only
//     host it fails the pull at once with this error.
//   - Unavailable → 503 UNAVAILABLE, with Retry-After when the error knows when to come back.
var errorClasses = []struct {
	is      func(error) bool
	status  int
	codes   byRoute
	message string
}{
	{errdefs.IsNotFound, http.StatusNotFound, byRoute{
		manifest: oci.CodeManifestUnknown, blob: oci.CodeBlobUnknown, tags: oci.CodeNameUnknown, referrers: oci.CodeNameUnknown, other: oci.CodeNameUnknown,
	}, "not found in the cache and not obtainable from the upstream registry"},
	{errdefs.IsInvalidArgument, http.StatusBadRequest, byRoute{
		manifest: oci.CodeManifestInvalid, blob: oci.CodeDigestInvalid, tags: oci.CodeNameInvalid, referrers: oci.CodeDigestInvalid, other: oci.CodeNameInvalid,
	}, "invalid request"},
	{errdefs.IsFailedPrecondition, http.StatusBadGateway, byRoute{other: oci.CodeUnknown},
		"upstream content failed verification and is not served"},
	// ErrTooManyFills → 429 TOOMANYREQUESTS, with Retry-After: lifeboat runs as many blob
	// downloads as it allows, and none ended within its queue timeout. containerd retries a 429
	// on any host; it is also Unavailable, hence before that class.
	{isTooManyFills, http.StatusTooManyRequests, byRoute{other: oci.CodeTooManyRequests},
		"too many blob downloads in progress; retry later"},
	{errdefs.IsUnavailable, http.StatusServiceUnavailable, byRoute{other: oci.CodeUnavailable},
		"service unavailable"},
	// ResourceExhausted → 507 Insufficient Storage: the content does not fit in the cache.
	// Outside containerd's retry set, like 502: it moves on, or fails at once when alone.
	{errdefs.IsResourceExhausted, http.StatusInsufficientStorage, byRoute{other: oci.CodeUnknown},
		"the cache has no room for this content"},
}

func isTooManyFills(err error) bool { return errors.Is(err, fill.ErrTooManyFills) }

// fromBackend classifies a Backend error for the request req. The answer carries the class's
// sentence only: the error's own text, which may name endpoints, addresses and what dialling
// them gave, goes to the log. What it says of a simulated outage is kept, as drills need it
// ("...: lifeboat simulated outage: blackhole").
func fromBackend(err error, req request) *apiError {
	if errors.Is(err, endpoints.ErrNotMirrored) {
		return newAPIError(http.StatusNotFound, oci.CodeNameUnknown, "registry "+req.Registry+" is not mirrored by this lifeboat")
	}
	for _, c := range errorClasses {
		if c.is(err) {
			e := newAPIError(c.status, c.codes.code(req.Kind), c.message)
			if phrase := oci.SimulatedOutageIn(err.Error()); phrase != "" {
				e.Message += ": " + phrase
			}
			var ra interface{ RetryAfter() time.Duration }
			if (c.status == http.StatusServiceUnavailable || c.status == http.StatusTooManyRequests) && errors.As(err, &ra) {
				e.retryAfter = ra.RetryAfter()
			}
			return e
		}
	}
	return newAPIError(http.StatusInternalServerError, oci.CodeUnknown, "internal error")
}

// write sends e in the OCI error format (oci.WriteError), with Retry-After when e knows when
// to come back and Allow on a 405. A HEAD answer has the same headers and no body.
func (e *apiError) write(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(e.retryAfter.Seconds())), 10))
	}
	if e.Status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, HEAD")
	}
	oci.WriteError(w, r, &e.Error)
}
