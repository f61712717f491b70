package mirror

import (
	"strings"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// maxTagsPage is the largest tags page served; a larger n gets this many and a Link to the
// rest, as the distribution spec allows ("fewer than n results").
const maxTagsPage = 10000

// request is a parsed and validated API request. Every field the Backend receives has passed
// its grammar: the Backend is never called with a malformed name, reference or digest.
type request = oci.Path

// byteRange is a satisfiable single range of a blob.
type byteRange struct {
	off, length int64
}

// parseRange interprets a Range header for a blob of size bytes. It returns partial=false when
// the whole blob is to be sent: no header, another unit, a malformed header, or several ranges
// (multipart answers are not supported; RFC 9110 lets a server ignore Range). It returns
// unsatisfiable=true when the one range asked for lies beyond the blob (answer 416).
func parseRange(header string, size int64) (r byteRange, partial, unsatisfiable bool) {
	unit, spec, ok := strings.Cut(header, "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") || strings.Contains(spec, ",") {
		return byteRange{}, false, false
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return byteRange{}, false, false
	}
	if first == "" { // suffix range: the last N bytes
		n, ok := parseDecimal(last)
		if !ok {
			return byteRange{}, false, false
		}
		if n == 0 || size == 0 {
			return byteRange{}, false, true
		}
		n = min(n, size)
		return byteRange{off: size - n, length: n}, true, false
	}
	start, ok := parseDecimal(first)
	if !ok {
		return byteRange{}, false, false
	}
	end := int64(-1)
	if last != "" {
		if end, ok = parseDecimal(last); !ok || end < start {
			return byteRange{}, false, false
		}
	}
	if start >= size {
		return byteRange{}, false, true
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	return byteRange{off: start, length: end - start + 1}, true, false
}

// parseDecimal parses a non-empty run of ASCII digits, saturating at the largest int64 (a range
// far beyond the blob is still a well-formed range).
func parseDecimal(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var v int64
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		if v > (1<<63-1-9)/10 {
			v = 1<<63 - 1
			continue
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}
