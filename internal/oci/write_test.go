package oci

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// An error answer has its status, the API version, a JSON body and its length; a HEAD has the
// same headers and no body.
func TestWriteError(t *testing.T) {
	t.Parallel()
	e := NewError(http.StatusNotFound, CodeManifestUnknown, "not here")
	body := e.Body()
	for _, tc := range []struct {
		name, method string
		body         string
	}{
		{"get", http.MethodGet, string(body)},
		{"head", http.MethodHead, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := httptest.NewRecorder()
			w.Header().Set("Retry-After", "3")
			WriteError(w, httptest.NewRequest(tc.method, "/v2/a/manifests/b", nil), e)
			h := w.Result().Header
			if w.Code != http.StatusNotFound || h.Get(HeaderAPIVersion) != APIVersion || h.Get("Content-Type") != "application/json" ||
				h.Get("Content-Length") != strconv.Itoa(len(body)) || h.Get("Retry-After") != "3" || w.Body.String() != tc.body {
				t.Errorf("answered %d, headers %v, body %q; want 404, %s %s, application/json of %d bytes, the Retry-After set before, body %q",
					w.Code, h, w.Body, HeaderAPIVersion, APIVersion, len(body), tc.body)
			}
		})
	}
}
