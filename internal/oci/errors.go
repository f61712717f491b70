package oci

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// ErrorCode is an error code of the OCI distribution spec, or of the distribution registry
// where the spec has none.
type ErrorCode string

// The distribution spec's codes.
const (
	CodeBlobUnknown         ErrorCode = "BLOB_UNKNOWN"
	CodeBlobUploadInvalid   ErrorCode = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   ErrorCode = "BLOB_UPLOAD_UNKNOWN"
	CodeDigestInvalid       ErrorCode = "DIGEST_INVALID"
	CodeManifestBlobUnknown ErrorCode = "MANIFEST_BLOB_UNKNOWN"
	CodeManifestInvalid     ErrorCode = "MANIFEST_INVALID"
	CodeManifestUnknown     ErrorCode = "MANIFEST_UNKNOWN"
	CodeNameInvalid         ErrorCode = "NAME_INVALID"
	CodeNameUnknown         ErrorCode = "NAME_UNKNOWN"
	CodeSizeInvalid         ErrorCode = "SIZE_INVALID"
	CodeUnauthorized        ErrorCode = "UNAUTHORIZED"
	CodeDenied              ErrorCode = "DENIED"
	CodeUnsupported         ErrorCode = "UNSUPPORTED"
	CodeTooManyRequests     ErrorCode = "TOOMANYREQUESTS"
)

// The distribution registry's codes that the spec does not list.
const (
	CodeTagInvalid              ErrorCode = "TAG_INVALID"
	CodePaginationNumberInvalid ErrorCode = "PAGINATION_NUMBER_INVALID"
	CodeUnavailable             ErrorCode = "UNAVAILABLE"
	CodeUnknown                 ErrorCode = "UNKNOWN"
)

// codeStatus is the HTTP status the distribution registry answers each code with.
var codeStatus = map[ErrorCode]int{
	CodeBlobUnknown:             http.StatusNotFound,
	CodeBlobUploadInvalid:       http.StatusNotFound,
	CodeBlobUploadUnknown:       http.StatusNotFound,
	CodeDigestInvalid:           http.StatusBadRequest,
	CodeManifestBlobUnknown:     http.StatusBadRequest,
	CodeManifestInvalid:         http.StatusBadRequest,
	CodeManifestUnknown:         http.StatusNotFound,
	CodeNameInvalid:             http.StatusBadRequest,
	CodeNameUnknown:             http.StatusNotFound,
	CodeSizeInvalid:             http.StatusBadRequest,
	CodeUnauthorized:            http.StatusUnauthorized,
	CodeDenied:                  http.StatusForbidden,
	CodeUnsupported:             http.StatusMethodNotAllowed,
	CodeTooManyRequests:         http.StatusTooManyRequests,
	CodeTagInvalid:              http.StatusBadRequest,
	CodePaginationNumberInvalid: http.StatusBadRequest,
	CodeUnavailable:             http.StatusServiceUnavailable,
	CodeUnknown:                 http.StatusInternalServerError,
}

// Status is the HTTP status the distribution registry answers c with; 500 for a code it does
// not know.
func (c ErrorCode) Status() int {
	if s, ok := codeStatus[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// statusCodes are the codes that say no more than their status: the code of an answer made up
// for a bare status.
var statusCodes = []ErrorCode{CodeUnauthorized, CodeDenied, CodeTooManyRequests, CodeUnavailable}

// CodeForStatus is the code of an answer that has nothing to say but its HTTP status:
// UNAUTHORIZED for 401, DENIED for 403, TOOMANYREQUESTS for 429, UNAVAILABLE for 503, and
// UNKNOWN for any other.
func CodeForStatus(status int) ErrorCode {
	for _, c := range statusCodes {
		if c.Status() == status {
			return c
		}
	}
	return CodeUnknown
}

// Error is an answer in the distribution spec's error format, with its HTTP status.
type Error struct {
	Status  int
	Code    ErrorCode
	Message string
	// Detail, when not nil, is encoded as the error's detail.
	Detail any
}

// NewError returns an Error with status, code and message.
func NewError(status int, code ErrorCode, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

// errorItem is one error of an error body.
type errorItem struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
	Detail  any       `json:"detail,omitempty"`
}

// errorBody is the body of an error answer: {"errors":[{"code":…,"message":…,"detail":…}]}.
type errorBody struct {
	Errors []errorItem `json:"errors"`
}

// Body is e's answer body. A Detail that cannot be encoded is left out.
func (e *Error) Body() []byte {
	body, err := json.Marshal(errorBody{[]errorItem{{e.Code, e.Message, e.Detail}}})
	if err != nil {
		body, _ = json.Marshal(errorBody{[]errorItem{{Code: e.Code, Message: e.Message}}})
	}
	return body
}

// DecodeError reads the first error of an error body. ok is false when body is not one or
// lists no error.
func DecodeError(body []byte) (code ErrorCode, message string, ok bool) {
	var b struct {
		Errors []struct {
			Code    ErrorCode `json:"code"`
			Message string    `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &b) != nil || len(b.Errors) == 0 {
		return "", "", false
	}
	return b.Errors[0].Code, b.Errors[0].Message, true
}
