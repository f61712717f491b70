package oci

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Kind is the endpoint of the distribution API a path names.
type Kind int

const (
	KindUnknown Kind = iota
	// KindPing is /v2/.
	KindPing
	// KindManifest is /v2/<name>/manifests/<reference>.
	KindManifest
	// KindBlob is /v2/<name>/blobs/<digest>.
	KindBlob
	// KindTags is /v2/<name>/tags/list.
	KindTags
	// KindReferrers is /v2/<name>/referrers/<digest>.
	KindReferrers
	// KindUploads is /v2/<name>/blobs/uploads/[<id>], the push API: SplitPath names it,
	// ParsePath, which reads pull requests only, does not.
	KindUploads
)

func (k Kind) String() string {
	switch k {
	case KindPing:
		return "ping"
	case KindManifest:
		return "manifest"
	case KindBlob:
		return "blob"
	case KindTags:
		return "tags"
	case KindReferrers:
		return "referrers"
	case KindUploads:
		return "uploads"
	}
	return "unknown"
}

const (
	// MaxPathLength bounds the work done on a request path before anything else is checked:
	// a registry host (at most 255), a repository (255), an endpoint word and a digest fit.
	MaxPathLength = 1024
	// MaxQueryLength bounds the query string likewise: ns, n, last and artifactType fit.
	MaxQueryLength = 1024
	// maxPageDigits bounds the tags page size n: anything longer is nonsense, not a request.
	maxPageDigits = 9
)

// SplitPath finds the endpoint in the components of a path after /v2/: the repository name's
// components, the kind, and the endpoint's last component (a reference, a digest, "list", an
// upload id or ""). ok is false when the components name no endpoint of the distribution API.
// It validates nothing else: the name may be empty or malformed.
func SplitPath(segs []string) (name []string, kind Kind, arg string, ok bool) {
	n := len(segs)
	if n < 3 {
		return nil, KindUnknown, "", false
	}
	arg = segs[n-1]
	switch segs[n-2] {
	case "manifests":
		return segs[:n-2], KindManifest, arg, true
	case "blobs":
		return segs[:n-2], KindBlob, arg, true
	case "referrers":
		return segs[:n-2], KindReferrers, arg, true
	case "tags":
		if arg == "list" {
			return segs[:n-2], KindTags, arg, true
		}
	case "uploads":
		if n >= 4 && segs[n-3] == "blobs" {
			return segs[:n-3], KindUploads, arg, true
		}
	}
	return nil, KindUnknown, "", false
}

// Path is a parsed and validated pull request of the distribution API. Every field has passed
// its grammar.
type Path struct {
	Kind Kind
	// Registry is the upstream registry host, normalized ("docker.io", "localhost:5000").
	Registry string
	// Repository is the repository inside Registry ("library/alpine", "org/app"): a docker.io
	// name of one component gets its library/.
	Repository string
	// Name is the repository as the client wrote it in the path, registry host included when it
	// was there ("alpine", "ghcr.io/org/app"); tags pages link back with it.
	Name string
	// NS is the ns query parameter as sent ("" when absent); tags pages link back with it.
	NS string
	// Reference is the tag or digest of a manifest request.
	Reference string
	// Digest is the digest of a blob or referrers request, or of a manifest request by digest.
	Digest digest.Digest
	// N is the tags page size asked for, -1 when not limited.
	N int
	// Last is the tag after which a tags page starts.
	Last string
	// ArtifactType filters referrers; "" for no filter.
	ArtifactType string
}

// Route names the request for metrics, logs and reports: its kind ("ping", "manifest",
// "blob", "tags", "referrers", "unknown"), with a manifest requested by tag (a tag
// resolution) told apart as "tag". A Path that ParsePath refused keeps the kind it had found,
// without its reference: a refused manifest request is "manifest", whatever it named.
func (p Path) Route() string {
	if p.Kind == KindManifest && p.Digest == "" && p.Reference != "" {
		return "tag"
	}
	return p.Kind.String()
}

// ParsePath parses a GET or HEAD request's escaped path and raw query. A request that names no
// registry gets defaultRegistry (normalized by the caller). Every refusal is an *Error with a
// 4xx status.
//
// Which registry a request is for (DESIGN.md): the ns query parameter (containerd sends it),
// else a registry host as the first path component (LooksLikeHost), else defaultRegistry.
func ParsePath(escapedPath, rawQuery, defaultRegistry string) (Path, *Error) {
	p := Path{N: -1}
	if len(escapedPath) > MaxPathLength {
		return p, NewError(http.StatusBadRequest, CodeNameInvalid, "request path is too long")
	}
	if escapedPath == "/v2" || escapedPath == "/v2/" {
		p.Kind = KindPing
		return p, nil
	}
	rest, ok := strings.CutPrefix(escapedPath, "/v2/")
	if !ok {
		return p, NewError(http.StatusNotFound, CodeUnsupported, "not a registry API path")
	}
	// Split before unescaping, so that an escaped slash stays inside its component (and fails
	// its grammar) instead of creating a new one.
	segs := strings.Split(rest, "/")
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil {
			return p, NewError(http.StatusBadRequest, CodeNameInvalid, "malformed escape in request path")
		}
		switch u {
		case "":
			return p, NewError(http.StatusBadRequest, CodeNameInvalid, "empty component in request path")
		case ".", "..":
			return p, NewError(http.StatusBadRequest, CodeNameInvalid, "dot segment in request path")
		}
		segs[i] = u
	}
	name, kind, arg, ok := SplitPath(segs)
	if !ok || kind == KindUploads {
		return p, NewError(http.StatusNotFound, CodeUnsupported, "unknown registry API endpoint")
	}
	p.Kind = kind

	if len(rawQuery) > MaxQueryLength {
		return p, NewError(http.StatusBadRequest, CodeUnsupported, "query string is too long")
	}
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return p, NewError(http.StatusBadRequest, CodeUnsupported, "malformed query string")
	}
	if e := p.setName(name, query, defaultRegistry); e != nil {
		return p, e
	}

	switch kind {
	case KindManifest:
		if strings.Contains(arg, ":") {
			if msg := digestProblem(arg); msg != "" {
				return p, NewError(http.StatusBadRequest, CodeDigestInvalid, msg)
			}
			p.Digest = digest.Digest(arg)
		} else if !ValidTag(arg) {
			return p, NewError(http.StatusBadRequest, CodeTagInvalid, fmt.Sprintf("invalid tag %q", Clip(arg)))
		}
		p.Reference = arg
	case KindBlob, KindReferrers:
		if msg := digestProblem(arg); msg != "" {
			return p, NewError(http.StatusBadRequest, CodeDigestInvalid, msg)
		}
		p.Digest = digest.Digest(arg)
		if kind == KindReferrers {
			return p, p.setArtifactType(query)
		}
	case KindTags:
		return p, p.setPage(query)
	}
	return p, nil
}

// setName picks the registry and the repository: the ns query parameter, else a registry host
// as the first path component, else the default registry.
func (p *Path) setName(segs []string, query url.Values, defaultRegistry string) *Error {
	p.Name = strings.Join(segs, "/")
	ns, e := queryValue(query, "ns")
	if e != nil {
		return e
	}
	switch {
	case ns != "":
		// The reference grammar makes a first component a registry only when it looks like a
		// host; ns is held to the same rule, so that every registry can also be named in the path.
		host, ok := NormalizeHost(ns)
		if !ok || !LooksLikeHost(ns) {
			return NewError(http.StatusBadRequest, CodeNameInvalid, fmt.Sprintf("invalid registry %q in ns", Clip(ns)))
		}
		p.NS, p.Registry = ns, host
		// A hosts.toml entry whose path already names the registry (override_path) sends it
		// twice, in the path and in ns: a repository never starts with its own registry's name.
		if first, ok := NormalizeHost(segs[0]); ok && first == host && len(segs) > 1 {
			segs = segs[1:]
		}
	case len(segs) > 1 && LooksLikeHost(segs[0]):
		host, ok := NormalizeHost(segs[0])
		if !ok {
			return NewError(http.StatusBadRequest, CodeNameInvalid, fmt.Sprintf("invalid registry %q in path", Clip(segs[0])))
		}
		p.Registry, segs = host, segs[1:]
	default:
		p.Registry = defaultRegistry
	}
	for _, s := range segs {
		if !ValidRepositoryComponent(s) {
			return NewError(http.StatusBadRequest, CodeNameInvalid, fmt.Sprintf("invalid repository name component %q", Clip(s)))
		}
	}
	if p.Registry == DockerHub && len(segs) == 1 {
		segs = []string{"library", segs[0]}
	}
	p.Repository = strings.Join(segs, "/")
	if len(p.Repository) > MaxRepositoryLength {
		return NewError(http.StatusBadRequest, CodeNameInvalid, fmt.Sprintf("repository name longer than %d characters", MaxRepositoryLength))
	}
	return nil
}

// setArtifactType reads the referrers filter artifactType.
func (p *Path) setArtifactType(query url.Values) *Error {
	at, e := queryValue(query, "artifactType")
	if e != nil {
		return e
	}
	if at != "" && !ValidMediaType(at) {
		return NewError(http.StatusBadRequest, CodeUnsupported, fmt.Sprintf("invalid artifactType %q", Clip(at)))
	}
	p.ArtifactType = at
	return nil
}

// setPage reads the tags list paging parameters n and last.
func (p *Path) setPage(query url.Values) *Error {
	n, e := queryValue(query, "n")
	if e != nil {
		return e
	}
	if n != "" {
		// Plain digits, at most maxPageDigits of them.
		if len(n) > maxPageDigits || strings.Trim(n, "0123456789") != "" {
			return NewError(http.StatusBadRequest, CodePaginationNumberInvalid, fmt.Sprintf("invalid number of results requested: %q", Clip(n)))
		}
		p.N = 0
		for _, c := range []byte(n) {
			p.N = p.N*10 + int(c-'0')
		}
	}
	last, e := queryValue(query, "last")
	if e != nil {
		return e
	}
	if last != "" && !ValidTag(last) {
		return NewError(http.StatusBadRequest, CodeTagInvalid, fmt.Sprintf("invalid tag %q in last", Clip(last)))
	}
	p.Last = last
	return nil
}

// queryValue returns query parameter key, refusing it when it is given more than once.
func queryValue(query url.Values, key string) (string, *Error) {
	v := query[key]
	switch len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	}
	return "", NewError(http.StatusBadRequest, CodeUnsupported, fmt.Sprintf("query parameter %s given more than once", key))
}
