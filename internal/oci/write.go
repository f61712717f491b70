package oci

import (
	"net/http"
	"strconv"
)

// WriteError answers r with e in the distribution spec's error format: status e.Status,
// HeaderAPIVersion, a JSON body with its Content-Length, and for a HEAD the same headers
// without the body. Headers already set on w (Retry-After, Allow) go with it.
func WriteError(w http.ResponseWriter, r *http.Request, e *Error) {
	w.Header().Set(HeaderAPIVersion, APIVersion)
	WriteBody(w, r, e.Status, "application/json", e.Body())
}

// WriteBody answers r with status and a complete small body, with its Content-Type and
// Content-Length; a HEAD answer gets the headers only.
func WriteBody(w http.ResponseWriter, r *http.Request, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
