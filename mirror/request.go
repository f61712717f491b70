package mirror

import (
	_ "crypto/sha256" // registers sha256 for go-digest
	_ "crypto/sha512" // registers sha512 for go-digest
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
)

// route is the kind of API call a request is.
type route int

const (
	routeUnknown route = iota
	routePing
	routeManifest
	routeBlob
	routeTags
	routeReferrers
)

// kind names a request for metrics and logs: its route, with a manifest requested by tag
// (a tag resolution) told apart as "tag".
func (r request) kind() string {
	if r.route == routeManifest && r.digest == "" && r.reference != "" {
		return "tag"
	}
	return r.route.String()
}

func (r route) String() string {
	switch r {
	case routePing:
		return "ping"
	case routeManifest:
		return "manifest"
	case routeBlob:
		return "blob"
	case routeTags:
		return "tags"
	case routeReferrers:
		return "referrers"
	}
	return "unknown"
}

const (
	// maxRepositoryLength is the OCI distribution-spec limit on a repository name.
	maxRepositoryLength = 255
	// maxPathLength bounds the work done on a request path before anything else is checked:
	// a registry host (at most 255), a repository (255), a route word and a digest fit easily.
	maxPathLength = 1024
	// maxQueryLength bounds the query string likewise: ns, n, last and artifactType fit easily.
	maxQueryLength = 1024
	// maxTagsPage is the largest tags page served; a larger n gets this many and a Link to the
	// rest, as the distribution spec allows ("fewer than n results").
	maxTagsPage = 10000
)

var (
	// nameComponent is one path component of a repository name (OCI distribution spec).
	nameComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	// tagPattern is a tag (OCI distribution spec).
	tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// domainName is a registry host name without its port (distribution/reference's grammar).
	domainName = regexp.MustCompile(`^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*$`)
	// mediaTypePattern is an RFC 6838 media type without parameters, as artifactType is.
	mediaTypePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)
)

// request is a parsed and validated API request. Every field the Backend receives has passed
// its grammar: the Backend is never called with a malformed name, reference or digest.
type request struct {
	route route
	// registry is the upstream registry host, lower case ("docker.io", "localhost:5000").
	registry string
	// repository is the repository inside registry ("library/alpine", "org/app").
	repository string
	// name is the repository as the client wrote it in the path, registry host included when
	// it was there ("alpine", "ghcr.io/org/app"); tags pages link back with it.
	name string
	// ns is the ns query parameter as sent ("" when absent); tags pages link back with it.
	ns string
	// reference is the tag or digest of a manifest request.
	reference string
	// digest is the digest of a blob or referrers request, or of a manifest request by digest.
	digest digest.Digest
	// n is the tags page size, -1 when not limited.
	n int
	// last is the tag after which a tags page starts.
	last string
	// artifactType filters referrers; "" for no filter.
	artifactType string
}

// parseRequest parses a GET or HEAD request's escaped path and raw query. Every answer it gives
// either validates completely or is an apiError with a 4xx status.
func parseRequest(escapedPath, rawQuery, defaultRegistry string) (request, *apiError) {
	req := request{n: -1}
	if len(escapedPath) > maxPathLength {
		return req, newAPIError(400, codeNameInvalid, "request path is too long")
	}
	if escapedPath == "/v2" || escapedPath == "/v2/" {
		req.route = routePing
		return req, nil
	}
	rest, ok := strings.CutPrefix(escapedPath, "/v2/")
	if !ok {
		return req, newAPIError(404, codeUnsupported, "not a registry API path")
	}
	// Split before unescaping, so that an escaped slash stays inside its component (and fails
	// its grammar) instead of creating a new one.
	segs := strings.Split(rest, "/")
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil {
			return req, newAPIError(400, codeNameInvalid, "malformed escape in request path")
		}
		switch u {
		case "":
			return req, newAPIError(400, codeNameInvalid, "empty component in request path")
		case ".", "..":
			return req, newAPIError(400, codeNameInvalid, "dot segment in request path")
		}
		segs[i] = u
	}

	n := len(segs)
	if n < 3 {
		return req, newAPIError(404, codeUnsupported, "unknown registry API endpoint")
	}
	arg := segs[n-1]
	switch segs[n-2] {
	case "manifests":
		req.route = routeManifest
	case "blobs":
		req.route = routeBlob
	case "referrers":
		req.route = routeReferrers
	case "tags":
		if arg == "list" {
			req.route = routeTags
		}
	}
	if req.route == routeUnknown {
		return req, newAPIError(404, codeUnsupported, "unknown registry API endpoint")
	}

	if len(rawQuery) > maxQueryLength {
		return req, newAPIError(400, codeUnsupported, "query string is too long")
	}
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return req, newAPIError(400, codeUnsupported, "malformed query string")
	}
	if e := req.setName(segs[:n-2], query, defaultRegistry); e != nil {
		return req, e
	}

	switch req.route {
	case routeManifest:
		if strings.Contains(arg, ":") {
			d, e := parseDigest(arg)
			if e != nil {
				return req, e
			}
			req.digest = d
		} else if !tagPattern.MatchString(arg) {
			return req, newAPIError(400, codeTagInvalid, fmt.Sprintf("invalid tag %q", clip(arg)))
		}
		req.reference = arg
	case routeBlob:
		d, e := parseDigest(arg)
		if e != nil {
			return req, e
		}
		req.digest = d
	case routeReferrers:
		d, e := parseDigest(arg)
		if e != nil {
			return req, e
		}
		req.digest = d
		at, e := single(query, "artifactType")
		if e != nil {
			return req, e
		}
		if at != "" && !mediaTypePattern.MatchString(at) {
			return req, newAPIError(400, codeUnsupported, fmt.Sprintf("invalid artifactType %q", clip(at)))
		}
		req.artifactType = at
	case routeTags:
		return req, req.setPage(query)
	}
	return req, nil
}

// setName picks the registry and the repository (see DESIGN.md): the ns query parameter, else
// a registry host as the first path component, else the default registry.
func (req *request) setName(segs []string, query url.Values, defaultRegistry string) *apiError {
	req.name = strings.Join(segs, "/")
	ns, e := single(query, "ns")
	if e != nil {
		return e
	}
	switch {
	case ns != "":
		// The reference grammar makes a first component a registry only when it looks like a host;
		// ns is held to the same rule, so that every registry can also be named in the path.
		host, ok := normalizeHost(ns)
		if !ok || !looksLikeHost(ns) {
			return newAPIError(400, codeNameInvalid, fmt.Sprintf("invalid registry %q in ns", clip(ns)))
		}
		req.ns, req.registry = ns, host
		// A hosts.toml entry whose path already names the registry (override_path) sends it
		// twice, in the path and in ns: a repository never starts with its own registry's name.
		if first, ok := normalizeHost(segs[0]); ok && first == host && len(segs) > 1 {
			segs = segs[1:]
		}
	case len(segs) > 1 && looksLikeHost(segs[0]):
		host, ok := normalizeHost(segs[0])
		if !ok {
			return newAPIError(400, codeNameInvalid, fmt.Sprintf("invalid registry %q in path", clip(segs[0])))
		}
		req.registry, segs = host, segs[1:]
	default:
		req.registry = defaultRegistry
	}
	for _, s := range segs {
		if !nameComponent.MatchString(s) {
			return newAPIError(400, codeNameInvalid, fmt.Sprintf("invalid repository name component %q", clip(s)))
		}
	}
	if req.registry == "docker.io" && len(segs) == 1 {
		segs = []string{"library", segs[0]}
	}
	req.repository = strings.Join(segs, "/")
	if len(req.repository) > maxRepositoryLength {
		return newAPIError(400, codeNameInvalid, fmt.Sprintf("repository name longer than %d characters", maxRepositoryLength))
	}
	return nil
}

// setPage reads the tags list paging parameters n and last.
func (req *request) setPage(query url.Values) *apiError {
	n, e := single(query, "n")
	if e != nil {
		return e
	}
	if n != "" {
		// Plain digits, at most 9 of them: anything longer is nonsense rather than a request.
		v, ok := parseDecimal(n)
		if !ok || len(n) > 9 {
			return newAPIError(400, codePaginationNumberInvalid, fmt.Sprintf("invalid number of results requested: %q", clip(n)))
		}
		req.n = int(min(v, maxTagsPage))
	}
	last, e := single(query, "last")
	if e != nil {
		return e
	}
	if last != "" && !tagPattern.MatchString(last) {
		return newAPIError(400, codeTagInvalid, fmt.Sprintf("invalid tag %q in last", clip(last)))
	}
	req.last = last
	return nil
}

// single returns query parameter key, refusing it when it is given more than once.
func single(query url.Values, key string) (string, *apiError) {
	v := query[key]
	switch len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	}
	return "", newAPIError(400, codeUnsupported, fmt.Sprintf("query parameter %s given more than once", key))
}

// parseDigest accepts the digests of the OCI image spec: sha256 or sha512, lower-case hex of the
// right length.
func parseDigest(s string) (digest.Digest, *apiError) {
	d := digest.Digest(s)
	alg, _, _ := strings.Cut(s, ":")
	if alg != string(digest.SHA256) && alg != string(digest.SHA512) {
		return "", newAPIError(400, codeDigestInvalid, fmt.Sprintf("unsupported digest algorithm in %q", clip(s)))
	}
	if err := d.Validate(); err != nil {
		return "", newAPIError(400, codeDigestInvalid, fmt.Sprintf("invalid digest %q", clip(s)))
	}
	return d, nil
}

// looksLikeHost says whether a first path component names a registry (DESIGN.md): it has a dot
// or a colon, or is localhost.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// normalizeHost validates a registry host[:port] and returns it in lower case, with
// index.docker.io spelled docker.io.
func normalizeHost(s string) (string, bool) {
	if len(s) > 255 {
		return "", false
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", false
		}
		addr, err := netip.ParseAddr(s[1:end])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", false
		}
		host, port = "["+addr.String()+"]", s[end+1:]
		if port != "" && !strings.HasPrefix(port, ":") {
			return "", false
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i:]
		}
		if !domainName.MatchString(host) {
			return "", false
		}
		host = strings.ToLower(host)
	}
	if port != "" {
		p, err := strconv.ParseUint(port[1:], 10, 16)
		if err != nil || p == 0 || strconv.FormatUint(p, 10) != port[1:] {
			return "", false
		}
	}
	if host+port == "index.docker.io" {
		return "docker.io", true
	}
	return host + port, true
}

// clip shortens client input quoted back in an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

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
