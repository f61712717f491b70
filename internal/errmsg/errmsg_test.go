package errmsg

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/containerd/errdefs"
)

func TestSentence(t *testing.T) {
	t.Parallel()
	usage := errors.New("usage")
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"class at the end", fmt.Errorf("mode %q is bad: %w", "x", errdefs.ErrInvalidArgument), `mode "x" is bad`},
		{"classes at the end", fmt.Errorf("%w: %w", fmt.Errorf("gone: %w", errdefs.ErrNotFound), errdefs.ErrUnavailable), "gone"},
		{"another class", fmt.Errorf("log level: %w", usage), "log level"},
		{"a class in the middle stays", fmt.Errorf("%w (more)", errdefs.ErrNotFound), "not found (more)"},
		{"words not wrapped stay", errors.New("lookup: not found"), "lookup: not found"},
		{"the system's words stay", &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrPermission}, "open /x: permission denied"},
	} {
		if got := Sentence(tc.err, usage); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
