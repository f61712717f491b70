package mirror

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/lifeboat-dev/lifeboat/internal/errmsg"
)

// errorCode is an error code of the OCI distribution spec, or of the distribution registry where
// the spec has none (TAG_INVALID, PAGINATION_NUMBER_INVALID, UNAVAILABLE).
type errorCode string

const (
	codeBlobUnknown             errorCode = "BLOB_UNKNOWN"
	codeDigestInvalid           errorCode = "DIGEST_INVALID"
	codeManifestInvalid         errorCode = "MANIFEST_INVALID"
	codeManifestUnknown         errorCode = "MANIFEST_UNKNOWN"
	codeNameInvalid             errorCode = "NAME_INVALID"
	codeNameUnknown             errorCode = "NAME_UNKNOWN"
	codePaginationNumberInvalid errorCode = "PAGINATION_NUMBER_INVALID"
	codeTagInvalid              errorCode = "TAG_INVALID"
	codeUnavailable             errorCode = "UNAVAILABLE"
	codeUnknown                 errorCode = "UNKNOWN"
	codeUnsupported             errorCode = "UNSUPPORTED"
)

// apiError is an answer in the OCI error format.
type apiError struct {
	status     int
	code       errorCode
	message    string
	detail     any
	retryAfter time.Duration
}

func newAPIError(status int, code errorCode, message string) *apiError {
	return &apiError{status: status, code: code, message: message}
}

// byRoute is an error code per route, with a fallback for the routes not listed.
type byRoute struct {
	manifest, blob, tags, referrers, other errorCode
}

func (b byRoute) code(r route) errorCode {
	var c errorCode
	switch r {
	case routeManifest:
		c = b.manifest
	case routeBlob:
		c = b.blob
	case routeTags:
		c = b.tags
	case routeReferrers:
		c = b.referrers
	}
	if c == "" {
		return b.other
	}
	return c
}

// errorClasses translates Backend errors into HTTP answers; the first class that matches wins,
// and an error no class matches is an internal error (500 UNKNOWN, details only in the log).
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
		manifest: codeManifestUnknown, blob: codeBlobUnknown, tags: codeNameUnknown, referrers: codeNameUnknown, other: codeNameUnknown,
	}, "not found in the cache and not obtainable from the upstream registry"},
	{errdefs.IsInvalidArgument, http.StatusBadRequest, byRoute{
		manifest: codeManifestInvalid, blob: codeDigestInvalid, tags: codeNameInvalid, referrers: codeDigestInvalid, other: codeNameInvalid,
	}, "invalid request"},
	{errdefs.IsFailedPrecondition, http.StatusBadGateway, byRoute{other: codeUnknown},
		"upstream content failed verification and is not served"},
	{errdefs.IsUnavailable, http.StatusServiceUnavailable, byRoute{other: codeUnavailable},
		"service unavailable"},
	// ResourceExhausted → 507 Insufficient Storage: the content does not fit in the cache.
	// Outside containerd's retry set, like 502: it moves on, or fails at once when alone.
	{errdefs.IsResourceExhausted, http.StatusInsufficientStorage, byRoute{other: codeUnknown},
		"the cache has no room for this content"},
}

// fromBackend classifies a Backend error for route.
func fromBackend(err error, r route) *apiError {
	for _, c := range errorClasses {
		if c.is(err) {
			e := newAPIError(c.status, c.codes.code(r), c.message)
			if c.status == http.StatusNotFound || c.status == http.StatusInsufficientStorage {
				// The resolver's sentence says why (not cached, and which upstream failure or
				// simulated outage kept it from being fetched); it carries no credentials.
				e.message += ": " + errmsg.Sentence(err)
			}
			var ra interface{ RetryAfter() time.Duration }
			if c.status == http.StatusServiceUnavailable && errors.As(err, &ra) {
				e.retryAfter = ra.RetryAfter()
			}
			return e
		}
	}
	return newAPIError(http.StatusInternalServerError, codeUnknown, "internal error")
}

// write sends e in the OCI error format. A HEAD answer has the same headers and no body.
func (e *apiError) write(w http.ResponseWriter, r *http.Request) {
	type item struct {
		Code    errorCode `json:"code"`
		Message string    `json:"message"`
		Detail  any       `json:"detail,omitempty"`
	}
	body, err := json.Marshal(struct {
		Errors []item `json:"errors"`
	}{[]item{{e.code, e.message, e.detail}}})
	if err != nil { // only a detail that cannot be encoded; drop it
		body, _ = json.Marshal(struct {
			Errors []item `json:"errors"`
		}{[]item{{Code: e.code, Message: e.message}}})
	}
	h := w.Header()
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(e.retryAfter.Seconds())), 10))
	}
	if e.status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, HEAD")
	}
	writeBody(w, r, e.status, "application/json", body)
}

// writeBody sends a complete small body with its length; a HEAD answer gets the headers only.
func writeBody(w http.ResponseWriter, r *http.Request, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
