package oci

import (
	"fmt"
	"strconv"
	"strings"
)

// RangeFrom is the Range header of a request for the bytes from off to the end of a blob of
// size bytes: "bytes=off-last", with the last byte named (some registries refuse an open
// range).
func RangeFrom(off, size int64) string { return fmt.Sprintf("bytes=%d-%d", off, size-1) }

// ParseContentRange parses a 206 answer's Content-Range, "bytes first-last/size", with the
// size known; ok is false for anything else.
func ParseContentRange(h string) (first, last, size int64, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, total, found := strings.Cut(spec, "/")
	a, b, found2 := strings.Cut(rng, "-")
	if !found || !found2 {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	first, err1 = strconv.ParseInt(a, 10, 64)
	last, err2 = strconv.ParseInt(b, 10, 64)
	size, err3 = strconv.ParseInt(total, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || size <= last {
		return 0, 0, 0, false
	}
	return first, last, size, true
}
