package oci

import (
	"math"
	"net/http"
	"testing"
)

// The distribution spec's code table, with the statuses the distribution registry sends.
func TestErrorCodeStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code   ErrorCode
		status int
	}{
		{CodeBlobUnknown, 404},
		{CodeBlobUploadInvalid, 404},
		{CodeBlobUploadUnknown, 404},
		{CodeDigestInvalid, 400},
		{CodeManifestBlobUnknown, 400},
		{CodeManifestInvalid, 400},
		{CodeManifestUnknown, 404},
		{CodeNameInvalid, 400},
		{CodeNameUnknown, 404},
		{CodeSizeInvalid, 400},
		{CodeUnauthorized, 401},
		{CodeDenied, 403},
		{CodeUnsupported, 405},
		{CodeTooManyRequests, 429},
		{CodeTagInvalid, 400},
		{CodePaginationNumberInvalid, 400},
		{CodeUnavailable, 503},
		{CodeUnknown, 500},
		{"NOT_A_CODE", 500},
	} {
		if got := tc.code.Status(); got != tc.status {
			t.Errorf("%s.Status() = %d, want %d", tc.code, got, tc.status)
		}
	}
}

func TestCodeForStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status int
		code   ErrorCode
	}{
		{401, CodeUnauthorized},
		{403, CodeDenied},
		{429, CodeTooManyRequests},
		{503, CodeUnavailable},
		{400, CodeUnknown},
		{404, CodeUnknown},
		{405, CodeUnknown},
		{500, CodeUnknown},
		{502, CodeUnknown},
	} {
		if got := CodeForStatus(tc.status); got != tc.code {
			t.Errorf("CodeForStatus(%d) = %s, want %s", tc.status, got, tc.code)
		}
	}
}

func TestErrorBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  *Error
		want string
	}{
		{"no detail", NewError(http.StatusServiceUnavailable, CodeUnavailable, "lifeboat simulated outage: http-503"),
			`{"errors":[{"code":"UNAVAILABLE","message":"lifeboat simulated outage: http-503"}]}`},
		{"detail", &Error{Status: 404, Code: CodeManifestUnknown, Message: "not found", Detail: map[string]string{"name": "alpine"}},
			`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not found","detail":{"name":"alpine"}}]}`},
		{"detail that cannot be encoded is left out", &Error{Status: 500, Code: CodeUnknown, Message: "internal error", Detail: math.Inf(1)},
			`{"errors":[{"code":"UNKNOWN","message":"internal error"}]}`},
	} {
		body := tc.err.Body()
		if string(body) != tc.want {
			t.Errorf("%s: body %s, want %s", tc.name, body, tc.want)
		}
		code, message, ok := DecodeError(body)
		if !ok || code != tc.err.Code || message != tc.err.Message {
			t.Errorf("%s: decoded %s %q %v", tc.name, code, message, ok)
		}
	}
	if got := NewError(400, CodeNameInvalid, "bad").Error(); got != "400 NAME_INVALID: bad" {
		t.Errorf("Error() = %q", got)
	}
}

func TestDecodeError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body, code, message string
		ok                  bool
	}{
		{`{"errors":[{"code":"DENIED","message":"no"},{"code":"UNKNOWN"}]}`, "DENIED", "no", true},
		{`{"errors":[{"code":"TOOMANYREQUESTS"}]}`, "TOOMANYREQUESTS", "", true},
		{`{"errors":[]}`, "", "", false},
		{`{"errors":[{"code":5}]}`, "", "", false},
		{`<html>502 Bad Gateway</html>`, "", "", false},
		{``, "", "", false},
	} {
		code, message, ok := DecodeError([]byte(tc.body))
		if string(code) != tc.code || message != tc.message || ok != tc.ok {
			t.Errorf("DecodeError(%s) = %s %q %v, want %s %q %v", tc.body, code, message, ok, tc.code, tc.message, tc.ok)
		}
	}
}
