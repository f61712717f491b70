// Package errmsg turns an error into the one sentence a person reads: its message without
// the names of the error classes it wraps at the end (": invalid argument", ": not found"),
// which classify it for code (errors.Is) but say nothing to a reader.
package errmsg

import (
	"errors"
	"strings"

	"github.com/containerd/errdefs"
)

// classes are the errdefs classes whose names wrapping leaves at the end of a message.
var classes = []error{
	errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrPermissionDenied,
	errdefs.ErrResourceExhausted, errdefs.ErrFailedPrecondition, errdefs.ErrConflict, errdefs.ErrNotModified,
	errdefs.ErrAborted, errdefs.ErrOutOfRange, errdefs.ErrNotImplemented, errdefs.ErrInternal,
	errdefs.ErrUnavailable, errdefs.ErrDataLoss, errdefs.ErrUnauthenticated, errdefs.ErrUnknown,
}

// Sentence is err's message without the names of the errdefs classes, and of the other classes
// given, that err wraps and that end the message, however many there are. A trailing
// "permission denied" of the operating system stays, as it is not errdefs.ErrPermissionDenied.
func Sentence(err error, others ...error) string {
	msg := err.Error()
	for trimmed := true; trimmed; {
		trimmed = false
		for _, class := range append(others, classes...) {
			if rest, ok := strings.CutSuffix(msg, ": "+class.Error()); ok && errors.Is(err, class) {
				msg, trimmed = rest, true
			}
		}
	}
	return msg
}
