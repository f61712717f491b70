// Package mirror serves the pull side of the OCI distribution API, so that containerd (through
// hosts.toml) and Docker Engine (registry-mirrors) pull through lifeboat.
//
// It is a thin adapter: it parses and validates requests, asks its Backend, and translates the
// answers and errors into HTTP. The policy (cache first, revalidation, stale serving) lives
// behind the Backend, in package resolver.
package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Backend answers the mirror; *resolver.Resolver is the one the daemon serves. The mirror only
// calls it with arguments that passed their grammar: a registry host in lower case, a valid
// repository name (docker.io one-component names already prefixed with library/), a valid tag
// or digest (sha256 or sha512), and an artifactType that is a media type or empty.
//
// Errors are classified with errdefs: ErrNotFound when the thing is neither cached nor
// obtainable from upstream; ErrInvalidArgument when the backend refuses the name, reference or
// digest; ErrFailedPrecondition when upstream content failed verification or is too large;
// ErrUnavailable when the backend cannot answer now, and fill.ErrTooManyFills (429) when
// it runs as many blob downloads as it allows. An error that also has a
// `RetryAfter() time.Duration` method (found with errors.As) adds a Retry-After header to the
// 503 or 429. Any other error is internal: logged, and answered with a generic 500.
type Backend interface {
	// Manifest resolves reference (a tag or a digest) to a manifest or index.
	Manifest(ctx context.Context, registry, repository, reference string) (resolver.Manifest, error)
	// StatBlob reports a blob's descriptor (digest and size) without transferring it.
	StatBlob(ctx context.Context, registry, repository string, dgst digest.Digest) (ocispec.Descriptor, resolver.CacheStatus, error)
	// Blob opens a blob for reading once its size is known; its Status is sent as
	// X-Lifeboat-Cache. The caller closes it. A Backend other than the resolver makes one with
	// resolver.NewBlob. The handler sends with sendfile a reader that is an *os.File
	// (positioned at off), or a cache.FileBacked (whose file is the whole blob), or an
	// io.WriterTo that does so itself.
	Blob(ctx context.Context, registry, repository string, dgst digest.Digest) (*resolver.Blob, error)
	// Tags lists the repository's tags, sorted.
	Tags(ctx context.Context, registry, repository string) ([]string, resolver.CacheStatus, error)
	// Referrers returns the referrers index of dgst, filtered by artifactType when it is not
	// empty.
	Referrers(ctx context.Context, registry, repository string, dgst digest.Digest, artifactType string) (ocispec.Index, error)
}

// ManifestStatter is a Backend that can answer a manifest HEAD without the manifest's body
// (*resolver.Resolver is one: a cached manifest is described from the cache's index, not read).
// A HEAD to a Backend without it gets Manifest's answer without the body.
type ManifestStatter interface {
	// StatManifest resolves reference as Manifest does, with the same errors, and returns the
	// descriptor (media type, digest, size) without the body.
	StatManifest(ctx context.Context, registry, repository, reference string) (ocispec.Descriptor, resolver.CacheStatus, error)
}

var (
	_ Backend         = (*resolver.Resolver)(nil)
	_ ManifestStatter = (*resolver.Resolver)(nil)
)

// Options configure the handler. The zero value is ready to use.
type Options struct {
	// DefaultRegistry is the registry of a request that names none: no ns query parameter and
	// no registry host as the first path component. Empty means "docker.io".
	DefaultRegistry string
	// Observe, when set, is called once for every request after it was answered, for metrics
	// and access logs. It must be safe for concurrent use and quick.
	Observe func(Answer)
	// HeaderDelay is how long a blob answer may wait for its first byte before its status and
	// headers are sent without it (default DefaultHeaderDelay). A blob still downloading sends
	// no byte before it verified (see resolver.Options.VerifyBeforeSend), and containerd waits
	// 30 s for response headers.
	HeaderDelay time.Duration
}

// DefaultHeaderDelay is Options.HeaderDelay's default: a third of containerd's 30 s wait for
// response headers.
const DefaultHeaderDelay = 10 * time.Second

// Answer describes one answered request.
type Answer struct {
	// Method is the request's HTTP method.
	Method string
	// Route is "ping", "tag" (a manifest by tag), "manifest" (by digest), "blob", "tags",
	// "referrers", or "unknown" for a request that was refused before its route was known.
	Route string
	// Registry and Repository are the upstream registry and repository, when the request was
	// valid enough to name them.
	Registry, Repository string
	// Status is the HTTP status sent.
	Status int
	// Cache is the X-Lifeboat-Cache value sent, if any.
	Cache resolver.CacheStatus
	// Bytes is the number of body bytes sent.
	Bytes int64
	// Aborted says the connection was aborted after the status was sent, because the blob's
	// bytes could not all be delivered.
	Aborted bool
	// Duration is the time from the request's arrival to the end of its answer.
	Duration time.Duration
}

// New returns the mirror's HTTP handler over b. It refuses an opts.DefaultRegistry that is not
// a registry host (errdefs.ErrInvalidArgument).
func New(b Backend, opts Options) (*Handler, error) {
	def := opts.DefaultRegistry
	if def == "" {
		def = "docker.io"
	}
	reg, ok := oci.NormalizeHost(def)
	if !ok {
		return nil, fmt.Errorf("mirror: default registry %q is not a registry host: %w", opts.DefaultRegistry, errdefs.ErrInvalidArgument)
	}
	delay := opts.HeaderDelay
	if delay <= 0 {
		delay = DefaultHeaderDelay
	}
	return &Handler{
		backend:         b,
		defaultRegistry: reg,
		observe:         opts.Observe,
		headerDelay:     delay,
		buffers:         sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }},
	}, nil
}

// Handler is the mirror's HTTP handler: the pull side of the distribution API over a Backend.
type Handler struct {
	backend         Backend
	defaultRegistry string
	observe         func(Answer)
	headerDelay     time.Duration
	buffers         sync.Pool // *[]byte of copyBufferSize
}

// exchange is one request being answered.
type exchange struct {
	w     http.ResponseWriter
	r     *http.Request
	start time.Time
	req   request
	ans   Answer
}

// ServeHTTP parses and validates a request (oci.ParsePath, with Options.DefaultRegistry), then
// answers it as Serve does. A method other than GET or HEAD gets 405 and a request the parse
// refuses its 4xx, each observed with the route known by then.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := h.begin(w, r)
	defer h.end(x)
	if x.refusedMethod() {
		return
	}
	req, e := oci.ParsePath(r.URL.EscapedPath(), r.URL.RawQuery, h.defaultRegistry)
	x.ans.Route = req.Route()
	if e != nil {
		x.reject(&apiError{Error: *e})
		return
	}
	h.answer(x, req)
}

// Serve answers a GET or HEAD request for p, a path oci.ParsePath accepted, for a caller that
// parsed the request itself (the peer listener). The answer and the Observe call are
// ServeHTTP's for the same request; p's registry is used as it is (Options.DefaultRegistry is
// only for ServeHTTP's parse). A method other than GET or HEAD gets 405.
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request, p oci.Path) {
	x := h.begin(w, r)
	defer h.end(x)
	if x.refusedMethod() {
		return
	}
	x.ans.Route = p.Route()
	h.answer(x, p)
}

// begin starts the answer to r. Every answer carries the API version.
func (h *Handler) begin(w http.ResponseWriter, r *http.Request) *exchange {
	x := &exchange{w: w, r: r, start: time.Now(), ans: Answer{Method: r.Method, Route: oci.KindUnknown.String()}}
	w.Header().Set(oci.HeaderAPIVersion, oci.APIVersion)
	return x
}

// end observes x's answer. Deferred, it runs on the abort panic too, so an aborted transfer is
// observed.
func (h *Handler) end(x *exchange) {
	x.ans.Duration = time.Since(x.start)
	if h.observe != nil {
		h.observe(x.ans)
	}
}

// refusedMethod answers 405 to a request whose method is not GET or HEAD, and says whether it
// did.
func (x *exchange) refusedMethod() bool {
	if x.r.Method == http.MethodGet || x.r.Method == http.MethodHead {
		return false
	}
	x.reject(newAPIError(http.StatusMethodNotAllowed, oci.CodeUnsupported, "lifeboat is a pull-only mirror: "+x.r.Method+" is not supported"))
	return true
}

// answer answers x for req, a parsed and validated request, with a tags page of at most
// maxTagsPage.
func (h *Handler) answer(x *exchange, req request) {
	req.N = min(req.N, maxTagsPage)
	x.req = req
	x.ans.Registry, x.ans.Repository = req.Registry, req.Repository
	switch req.Kind {
	case oci.KindPing:
		x.ans.Status = http.StatusOK
		oci.WriteBody(x.w, x.r, http.StatusOK, "application/json", []byte("{}"))
	case oci.KindManifest:
		h.manifest(x)
	case oci.KindBlob:
		if x.r.Method == http.MethodHead {
			h.statBlob(x)
		} else {
			h.blob(x)
		}
	case oci.KindTags:
		h.tags(x)
	case oci.KindReferrers:
		h.referrers(x)
	}
}

// reject answers a request with e.
func (x *exchange) reject(e *apiError) {
	x.ans.Status = e.Status
	e.write(x.w, x.r)
}

// fail answers a request whose Backend call failed, and logs it (the one place a request's
// error is logged). The error's text goes to the log only: it may name upstream endpoints or
// paths on disk.
func (x *exchange) fail(err error) {
	e := fromBackend(err, x.req)
	detail := map[string]string{"name": x.req.Name}
	if x.req.Reference != "" {
		detail["reference"] = x.req.Reference
	} else if x.req.Digest != "" {
		detail["digest"] = x.req.Digest.String()
	}
	e.Detail = detail

	ctx := x.r.Context()
	entry := log.G(ctx).WithError(err).WithFields(log.Fields{
		"route": x.ans.Route, "registry": x.req.Registry, "repository": x.req.Repository,
		"reference": x.req.Reference, "digest": x.req.Digest, "status": e.Status,
	})
	switch {
	case ctx.Err() != nil:
		entry.Debug("mirror request ended by the client")
	case e.Status >= 500:
		entry.Warn("mirror request failed")
	case errors.Is(err, resolver.ErrNotCached):
		// What lifeboat could not save during an outage: an operator's first question.
		entry.Info("mirror request not served: not cached, and the upstream cannot provide it")
	default:
		entry.Debug("mirror request refused")
	}
	x.reject(e)
}

// setCache sends the X-Lifeboat-Cache header.
func (x *exchange) setCache(s resolver.CacheStatus) {
	if s != "" {
		x.w.Header().Set(oci.HeaderCache, string(s))
		x.ans.Cache = s
	}
}

func (h *Handler) manifest(x *exchange) {
	var m resolver.Manifest
	var err error
	if s, ok := h.backend.(ManifestStatter); ok && x.r.Method == http.MethodHead {
		m.Descriptor, m.Status, err = s.StatManifest(x.r.Context(), x.req.Registry, x.req.Repository, x.req.Reference)
	} else {
		m, err = h.backend.Manifest(x.r.Context(), x.req.Registry, x.req.Repository, x.req.Reference)
	}
	if err != nil {
		x.fail(err)
		return
	}
	mediaType := m.Descriptor.MediaType
	if mediaType == "" {
		// Set it anyway: left unset, a GET would be sniffed and a HEAD not, and they would differ.
		mediaType = "application/octet-stream"
	}
	hdr := x.w.Header()
	if m.Descriptor.Digest != "" {
		// Without it containerd GETs the manifest and hashes it instead.
		hdr.Set(oci.HeaderContentDigest, m.Descriptor.Digest.String())
		hdr.Set("ETag", etag(m.Descriptor.Digest))
	}
	x.setCache(m.Status)
	x.ans.Status = http.StatusOK
	if x.r.Method == http.MethodHead {
		size := m.Descriptor.Size
		if m.Body != nil {
			size = int64(len(m.Body))
		}
		hdr.Set("Content-Type", mediaType)
		hdr.Set("Content-Length", strconv.FormatInt(size, 10))
		x.w.WriteHeader(http.StatusOK)
		return
	}
	x.ans.Bytes = int64(len(m.Body))
	oci.WriteBody(x.w, x.r, http.StatusOK, mediaType, m.Body)
}

func (h *Handler) tags(x *exchange) {
	tags, status, err := h.backend.Tags(x.r.Context(), x.req.Registry, x.req.Repository)
	if err != nil {
		x.fail(err)
		return
	}
	if !slices.IsSorted(tags) {
		tags = slices.Sorted(slices.Values(tags))
	}
	if x.req.Last != "" {
		i, found := slices.BinarySearch(tags, x.req.Last)
		if found {
			i++
		}
		tags = tags[i:]
	}
	if x.req.N >= 0 && len(tags) > x.req.N {
		tags = tags[:x.req.N]
		if x.req.N > 0 {
			x.w.Header().Set("Link", x.nextTagsLink(tags[len(tags)-1]))
		}
	}
	if tags == nil {
		tags = []string{}
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{x.req.Name, tags})
	if err != nil {
		x.fail(err)
		return
	}
	x.setCache(status)
	x.sendJSON("application/json", body)
}

// nextTagsLink is the Link header to the tags page after last.
func (x *exchange) nextTagsLink(last string) string {
	var b strings.Builder
	b.WriteString("</v2/")
	b.WriteString(x.req.Name)
	b.WriteString("/tags/list?n=")
	b.WriteString(strconv.Itoa(x.req.N))
	b.WriteString("&last=")
	b.WriteString(last)
	if x.req.NS != "" {
		b.WriteString("&ns=")
		b.WriteString(x.req.NS)
	}
	b.WriteString(`>; rel="next"`)
	return b.String()
}

func (h *Handler) referrers(x *exchange) {
	idx, err := h.backend.Referrers(x.r.Context(), x.req.Registry, x.req.Repository, x.req.Digest, x.req.ArtifactType)
	if err != nil {
		x.fail(err)
		return
	}
	idx.SchemaVersion = 2
	idx.MediaType = ocispec.MediaTypeImageIndex
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	body, err := json.Marshal(idx)
	if err != nil {
		x.fail(err)
		return
	}
	if x.req.ArtifactType != "" {
		x.w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	x.sendJSON(ocispec.MediaTypeImageIndex, body)
}

// sendJSON answers 200 with a small JSON body.
func (x *exchange) sendJSON(contentType string, body []byte) {
	x.ans.Status = http.StatusOK
	if x.r.Method == http.MethodGet {
		x.ans.Bytes = int64(len(body))
	}
	oci.WriteBody(x.w, x.r, http.StatusOK, contentType, body)
}
