package resolver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/errmsg"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

// Policies for tags.
const (
	// PolicyUpstreamFirst revalidates every tag with the upstream when it is healthy.
	PolicyUpstreamFirst = "upstream-first"
	// PolicyCacheFirst trusts a cached tag for TagMaxAge after it was last verified.
	PolicyCacheFirst = "cache-first"
)

// Options configure a Resolver.
type Options struct {
	// Policy is PolicyUpstreamFirst (the default) or PolicyCacheFirst.
	Policy string
	// TagMaxAge is how long PolicyCacheFirst trusts a cached tag.
	TagMaxAge time.Duration
	// UpstreamTimeout bounds a tag revalidation, and the wait for an upstream's response
	// headers on any request; past it the cached answer is served, or not found.
	UpstreamTimeout time.Duration
	// FillTimeout bounds a whole blob download (default 1 h). IdleTimeout (default 30 s) is the
	// window of its progress rule: every window must bring 64 KiB of the body, or the rest of
	// the blob when less is left, else the fill is cut off as stalled (see minFillProgress).
	FillTimeout, IdleTimeout time.Duration
	// Endpoints lists the endpoints of registries, tried in order. Each registry named here is
	// mirrored.
	Endpoints map[string][]string
	// Registries are mirrored too, with oci.DefaultEndpoints unless Endpoints lists theirs. A
	// registry in neither is refused with endpoints.ErrNotMirrored before any upstream is contacted
	// (the daemon's default list is config.DefaultRegistries).
	Registries []string
	// AnyRegistry mirrors every registry a request names, listed or not, with
	// oci.DefaultEndpoints for those not listed. At most MaxOtherRegistries unlisted registries
	// (default endpoints.DefaultMaxOtherRegistries) are kept at once, the least recently used forgotten
	// first; one unasked for OtherRegistryIdle (default endpoints.DefaultOtherRegistryIdle) is forgotten
	// by the probe of its down endpoints, which then ends.
	AnyRegistry        bool
	MaxOtherRegistries int
	OtherRegistryIdle  time.Duration
	// ForgetUpstream, when set, is called for each endpoint of an unlisted registry the resolver
	// forgets, so that what the metrics keep by registry and endpoint can go too.
	ForgetUpstream func(registry, endpoint string)
	// NewClient makes the client of one endpoint of a registry.
	NewClient func(registry, endpoint string) (endpoints.Client, error)
	// Health tunes the circuit breakers.
	Health endpoints.Health
	// ObserveUpstream, when set, is called after every upstream request (for metrics).
	ObserveUpstream func(endpoints.Request)
	// MaxBlobSize is the largest blob a fill accepts (default DefaultMaxBlobSize): a larger
	// Content-Length is refused before a byte is written, and a body without one is cut off
	// once it passes the limit. Either is errdefs.ErrResourceExhausted, and nothing is cached.
	MaxBlobSize int64
	// VerifyBeforeSend is the size up to which a blob that is being fetched reaches clients only
	// once it verified (default DefaultVerifyBeforeSend; negative: none). Its readers get no
	// byte before the whole blob matched its digest, so a blob that fails verification reaches
	// no client as a single byte: containerd then keeps nothing of it, and its next pull fetches
	// it afresh. A larger blob streams as it arrives with its last byte held back until it
	// verified: a bad one ends in a broken connection, but containerd keeps the bytes it got
	// and commits them again on the next pull, which fails until its garbage collector removes
	// them.
	VerifyBeforeSend int64
	// MaxFills is how many blob fills may run at once (default DefaultMaxFills). A request that
	// would start another waits up to FillQueueTimeout (DefaultFillQueueTimeout) for one to end, and is
	// then refused with ErrTooManyFills.
	MaxFills         int
	FillQueueTimeout time.Duration
	// MaxAbandonedFills is how many fills may go on with no client left reading them (default
	// DefaultMaxAbandonedFills). They go on so that the next request finds the blob cached;
	// past the limit the ones abandoned longest ago are cancelled, and their ingests removed.
	MaxAbandonedFills int
	// OnDenied is what a tag revalidation does when the registry, or its token service, answers
	// that access to the repository is denied (401, 403): OnDeniedRefuse (the default) or
	// OnDeniedServeStale. An upstream that cannot be reached always serves the cached tag stale.
	OnDenied string
	// PeerWait bounds a blob fill's wait for the peers' response headers (default twice
	// UpstreamTimeout: a peer's answer may wait on its own fill from the registry).
	PeerWait time.Duration
	// Peers is the cluster tier (nil: a single node). Blob misses ask it before the registry,
	// tags it answers when the registry cannot, and it is told what this node caches.
	Peers Peers
	// NotShared lists registries whose content never crosses nodes (share_with_peers = false):
	// the resolver neither asks peers for it nor serves it to them, nor tells them it holds it.
	NotShared []string
}

// Defaults of the fill limits.
const (
	DefaultMaxBlobSize       = 32 << 30
	DefaultVerifyBeforeSend  = 1 << 30
	DefaultMaxFills          = 64
	DefaultMaxAbandonedFills = 16
	DefaultFillQueueTimeout  = 5 * time.Second
)

func (o *Options) setDefaults() {
	if o.Policy == "" {
		o.Policy = PolicyUpstreamFirst
	}
	if o.OnDenied == "" {
		o.OnDenied = OnDeniedRefuse
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = time.Second
	}
	if o.PeerWait <= 0 {
		o.PeerWait = 2 * o.UpstreamTimeout
	}
	if o.FillTimeout <= 0 {
		o.FillTimeout = time.Hour
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 30 * time.Second
	}
	if o.MaxBlobSize <= 0 {
		o.MaxBlobSize = DefaultMaxBlobSize
	}
	if o.VerifyBeforeSend == 0 {
		o.VerifyBeforeSend = DefaultVerifyBeforeSend
	}
	if o.MaxFills <= 0 {
		o.MaxFills = DefaultMaxFills
	}
	if o.FillQueueTimeout <= 0 {
		o.FillQueueTimeout = DefaultFillQueueTimeout
	}
	if o.MaxAbandonedFills <= 0 {
		o.MaxAbandonedFills = DefaultMaxAbandonedFills
	}
}

// Resolver answers the registry mirror and the CLI. It is safe for concurrent use.
//
// Errors: errdefs.ErrNotFound when the thing is neither cached nor obtainable from upstream
// (including every upstream being down, and a registry it does not mirror, which is also
// endpoints.ErrNotMirrored); errdefs.ErrInvalidArgument for malformed names,
// references or digests; errdefs.ErrFailedPrecondition when upstream content fails
// verification or is too large; anything else is an internal error.
type Resolver struct {
	store *cache.Store
	local Local
	opts  Options
	// ctx is the parent of the upstream requests merged by upstreamOnce, which outlive the
	// requests that start them; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	upstreams     *endpoints.Table
	peering       peering
	fills         *fill.Engine
	manifests     manifestFetcher
	flights       flights // see upstreamOnce
	revalidations revalidations

	digestMismatches atomic.Int64
}

// New returns a Resolver over store, having removed the downloads a previous run left
// unfinished. Close it to stop its background work.
func New(ctx context.Context, store *cache.Store, opts Options) (*Resolver, error) {
	opts.setDefaults()
	switch opts.Policy {
	case PolicyUpstreamFirst, PolicyCacheFirst:
	default:
		return nil, fmt.Errorf("tag policy %q: %w", opts.Policy, errdefs.ErrInvalidArgument)
	}
	switch opts.OnDenied {
	case OnDeniedRefuse, OnDeniedServeStale:
	default:
		return nil, fmt.Errorf("on_denied %q: %w", opts.OnDenied, errdefs.ErrInvalidArgument)
	}
	peering, err := newPeering(opts.Peers, opts.NotShared)
	if err != nil {
		return nil, err
	}
	if err := abortLeftovers(ctx, store); err != nil {
		return nil, err
	}
	upstreams, err := endpoints.New(endpoints.Options{
		Endpoints:          opts.Endpoints,
		Registries:         opts.Registries,
		AnyRegistry:        opts.AnyRegistry,
		MaxOtherRegistries: opts.MaxOtherRegistries,
		OtherRegistryIdle:  opts.OtherRegistryIdle,
		Forget:             opts.ForgetUpstream,
		NewClient:          opts.NewClient,
		Health:             opts.Health,
		Observe:            opts.ObserveUpstream,
	})
	if err != nil {
		return nil, err
	}
	r := &Resolver{store: store, local: Local{store}, opts: opts, upstreams: upstreams, peering: peering}
	r.fills = fill.New(store, fill.Options{
		FillTimeout:  opts.FillTimeout,
		IdleTimeout:  opts.IdleTimeout,
		MaxBlobSize:  opts.MaxBlobSize,
		HoldWhole:    opts.VerifyBeforeSend,
		MaxFills:     opts.MaxFills,
		QueueTimeout: opts.FillQueueTimeout,
		MaxAbandoned: opts.MaxAbandonedFills,
		Committed:    r.peering.cached,
	})
	r.ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	r.flights = flights{ctx: r.ctx, timeout: opts.UpstreamTimeout}
	r.manifests = manifestFetcher{local: r.local, cache: store, flights: &r.flights, peering: &r.peering, mismatches: &r.digestMismatches}
	return r, nil
}

// Ingest refs of the resolver's own writes. A fill always starts over, so an ingest of one left
// by a crash is garbage; ingests of other writers (containerd, through the content plugin) are
// theirs to resume or abort.
const (
	manifestRefPrefix = "lifeboat-manifest/"
)

// abortLeftovers removes the ingests of fills and manifest writes a crash interrupted.
func abortLeftovers(ctx context.Context, store *cache.Store) error {
	sts, err := store.ListStatuses(ctx)
	if err != nil {
		return fmt.Errorf("list ingests: %w", err)
	}
	var n int
	for _, st := range sts {
		if !strings.HasPrefix(st.Ref, fill.RefPrefix) && !strings.HasPrefix(st.Ref, manifestRefPrefix) {
			continue
		}
		if err := store.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove interrupted ingest %q: %w", st.Ref, err)
		}
		n++
	}
	if n > 0 {
		log.G(ctx).WithField("ingests", n).Info("removed downloads a previous run left unfinished")
	}
	return nil
}

// Close stops the health probes, cancels the blob fills in progress (their ingests are
// removed; nothing partial is cached) and waits for them to end.
func (r *Resolver) Close() error {
	r.upstreams.Close()
	r.cancel()
	r.fills.Close()
	return nil
}

// Endpoints reports the health of every upstream endpoint in use.
func (r *Resolver) Endpoints() []endpoints.Status { return r.upstreams.Statuses() }

// ProbeNow makes every down endpoint probe its upstream at once, as when a simulated outage
// ends, instead of at the next step of its backoff.
func (r *Resolver) ProbeNow() { r.upstreams.ProbeNow() }

// DigestMismatches counts upstream blobs that failed verification and were not cached.
func (r *Resolver) DigestMismatches() int64 { return r.digestMismatches.Load() }

func checkRepository(repo string) error {
	if !oci.ValidRepository(repo) {
		return fmt.Errorf("invalid repository name %q: %w", repo, errdefs.ErrInvalidArgument)
	}
	return nil
}

func checkDigest(dgst digest.Digest) error {
	_, err := oci.ParseDigest(string(dgst))
	return err
}

// Manifest resolves reference (a tag or a digest) in repository ("library/alpine") of
// registry ("docker.io") to a manifest or index. Its Body may be shared with other callers:
// do not modify it.
func (r *Resolver) Manifest(ctx context.Context, registry, repository, reference string) (Manifest, error) {
	return r.manifest(ctx, registry, repository, reference, true)
}

// StatManifest resolves reference as Manifest does (the same tag policy, upstream requests and
// errors) but returns only the descriptor, for a HEAD: a cached manifest is described from the
// cache's index without reading it.
func (r *Resolver) StatManifest(ctx context.Context, registry, repository, reference string) (ocispec.Descriptor, CacheStatus, error) {
	m, err := r.manifest(ctx, registry, repository, reference, false)
	return m.Descriptor, m.Status, err
}

// manifest is Manifest, with the body only when withBody is true (else Body may be nil).
func (r *Resolver) manifest(ctx context.Context, registry, repository, reference string, withBody bool) (Manifest, error) {
	if err := checkRepository(repository); err != nil {
		return Manifest{}, err
	}
	eps, err := r.upstreams.Get(registry)
	if err != nil {
		return Manifest{}, err
	}
	dgst, err := oci.ParseReference(reference)
	if err != nil {
		return Manifest{}, err
	}
	if dgst != "" {
		return r.manifestByDigest(ctx, eps, registry, repository, dgst, withBody)
	}
	return r.manifestByTag(ctx, eps, registry, repository, reference, withBody)
}

// manifestByDigest serves an immutable manifest: from the cache when present under the
// repository, else from the peers or the upstream, cached on the way.
func (r *Resolver) manifestByDigest(ctx context.Context, eps []*endpoints.Endpoint, registry, repo string, dgst digest.Digest, withBody bool) (Manifest, error) {
	repoKey := registry + "/" + repo
	if m, err := r.local.Manifest(ctx, repoKey, ocispec.Descriptor{Digest: dgst}, Read{DescriptorOnly: !withBody}); err == nil {
		m.Status = Hit
		return m, nil
	} else if !errdefs.IsNotFound(err) {
		return Manifest{}, err
	}
	m, err := r.manifests.fetch(ctx, eps, registry, repo, dgst)
	if err != nil {
		return Manifest{}, notFoundIfDown(err, "manifest "+repoKey+"@"+dgst.String())
	}
	if m.Status == "" {
		m.Status = Miss
	}
	return m, nil
}

// manifestByTag applies the tag policy: revalidate with a quick upstream, else serve stale
// when the upstream cannot be reached, and refuse (by default: Options.OnDenied) when it
// answers that the repository is denied. When the upstream cannot be reached the peers'
// records may answer instead (see tagFromPeers).
func (r *Resolver) manifestByTag(ctx context.Context, eps []*endpoints.Endpoint, registry, repo, tag string, withBody bool) (Manifest, error) {
	repoKey := registry + "/" + repo
	name := repoKey + ":" + tag
	ref, refErr := r.store.GetRef(ctx, name)
	if refErr != nil && !errdefs.IsNotFound(refErr) {
		return Manifest{}, refErr
	}
	cached := refErr == nil
	if cached && r.opts.Policy == PolicyCacheFirst && time.Since(ref.VerifiedAt) < r.opts.TagMaxAge {
		if m, err := r.local.Manifest(ctx, repoKey, ref.Target, Read{DescriptorOnly: !withBody}); err == nil {
			m.Status = Hit
			return m, nil
		}
	}

	desc, ep, date, err := r.headTag(ctx, eps, repo, name, tag)
	switch {
	case err == nil:
		if date.IsZero() {
			date = time.Now()
		}
		if cached && ref.Target.Digest == desc.Digest {
			if m, err := r.local.Manifest(ctx, repoKey, ref.Target, Read{DescriptorOnly: !withBody}); err == nil {
				if err := r.store.SetRefAt(ctx, name, ref.Target, ep.Name(), date); err != nil {
					log.G(ctx).WithError(err).Warn("cannot record tag revalidation")
				}
				r.revalidations.succeeded(name)
				r.peering.revalidated(registry, repo, tag, desc.Digest, date)
				m.Status = Revalidated
				return m, nil
			}
		}
		m, ferr := r.manifests.fetch(ctx, eps, registry, repo, desc.Digest)
		if ferr != nil {
			if cached && (endpoints.IsFailure(ferr) || isDenied(ferr)) {
				err = ferr // upstream failed, or denied, between HEAD and GET: see below
				break
			}
			return Manifest{}, notFoundIfDown(ferr, "manifest "+name)
		}
		if err := r.store.SetRefAt(ctx, name, m.Descriptor, ep.Name(), date); err != nil {
			return Manifest{}, fmt.Errorf("record tag %s: %w", name, err)
		}
		r.revalidations.succeeded(name)
		r.peering.revalidated(registry, repo, tag, m.Descriptor.Digest, date)
		m.Status = Revalidated
		if !cached {
			m.Status = Miss
		}
		return m, nil
	case errdefs.IsNotFound(err):
		if cached {
			r.revalidations.failed(ctx, name, CauseNotFound, false, err)
		}
		return Manifest{}, fmt.Errorf("manifest %s: upstream has no such tag: %w", name, errdefs.ErrNotFound)
	case ctx.Err() != nil:
		return Manifest{}, ctx.Err()
	}
	cause := causeOf(err)
	if peers := r.PeersFor(registry); peers != nil && (cause == CauseUnreachable || cause == CauseOther) {
		if m, ok := r.tagFromPeers(ctx, peers, registry, repo, tag, ref, cached, withBody); ok {
			if cached {
				r.revalidations.failed(ctx, name, cause, true, err)
			}
			return m, nil
		}
	}
	if !cached {
		return Manifest{}, notFoundIfDown(err, "manifest "+name)
	}
	if cause == CauseDenied && r.opts.OnDenied == OnDeniedRefuse {
		r.revalidations.failed(ctx, name, cause, false, err)
		return Manifest{}, fmt.Errorf("manifest %s: the registry denies access to the repository, so its cached copy is not served (on_denied = %s): %w: %w", name, OnDeniedRefuse, err, errdefs.ErrNotFound)
	}
	m, cerr := r.local.Manifest(ctx, repoKey, ref.Target, Read{DescriptorOnly: !withBody})
	if cerr != nil {
		return Manifest{}, notFoundIfDown(err, "manifest "+name)
	}
	r.revalidations.failed(ctx, name, cause, true, err)
	m.Status = Stale
	return m, nil
}

// headTag asks the upstream for the tag's descriptor: one request for all the callers asking at
// once. date is the registry's Date header of the answer (zero when it sent none).
func (r *Resolver) headTag(ctx context.Context, eps []*endpoints.Endpoint, repo, name, tag string) (_ ocispec.Descriptor, _ *endpoints.Endpoint, date time.Time, _ error) {
	type head struct {
		desc ocispec.Descriptor
		date time.Time
		ep   *endpoints.Endpoint
	}
	h, err := upstreamOnce(ctx, &r.flights, "head "+name, func(ctx context.Context) (head, error) {
		h, ep, err := endpoints.Try(ctx, eps, "head-manifest", func(ctx context.Context, c endpoints.Client) (head, error) {
			desc, date, err := c.HeadManifest(ctx, repo, tag)
			return head{desc: desc, date: date}, err
		})
		h.ep = ep
		return h, err
	})
	return h.desc, h.ep, h.date, err
}

// ErrNotCached marks the not-found error of what is neither cached nor obtainable because the
// upstream cannot provide it (it is down, too slow, or denies access): errdefs.IsNotFound holds
// too. During an outage these are the requests lifeboat could not save.
var ErrNotCached = errors.New("not cached, and the upstream cannot provide it")

// notFoundIfDown turns "upstream unreachable" into not found (ErrNotCached): what the mirror
// cannot serve is a 404, so that containerd moves on to its next host at once.
func notFoundIfDown(err error, what string) error {
	if errdefs.IsResourceExhausted(err) {
		return fmt.Errorf("%s cannot be cached: %w", what, err)
	}
	if endpoints.IsFailure(err) || errdefs.IsUnauthorized(err) || errdefs.IsPermissionDenied(err) {
		return fmt.Errorf("%s: %w (%s): %w", what, ErrNotCached, errmsg.Sentence(err), errdefs.ErrNotFound)
	}
	return err
}

// Tags lists repository's tags, sorted: upstream's list when reachable, the cached tags
// otherwise (not when the registry denies the repository, unless Options.OnDenied says to
// serve stale).
func (r *Resolver) Tags(ctx context.Context, registry, repository string) ([]string, CacheStatus, error) {
	if err := checkRepository(repository); err != nil {
		return nil, "", err
	}
	eps, err := r.upstreams.Get(registry)
	if err != nil {
		return nil, "", err
	}
	tctx, cancel := context.WithTimeout(ctx, r.opts.UpstreamTimeout)
	tags, _, err := endpoints.Try(tctx, eps, "tags", func(ctx context.Context, c endpoints.Client) ([]string, error) {
		return c.Tags(ctx, repository)
	})
	cancel()
	if err == nil {
		slices.Sort(tags)
		return tags, Revalidated, nil
	}
	if errdefs.IsNotFound(err) {
		return nil, "", fmt.Errorf("repository %s/%s: %w", registry, repository, errdefs.ErrNotFound)
	}
	if isDenied(err) && r.opts.OnDenied == OnDeniedRefuse {
		return nil, "", fmt.Errorf("repository %s/%s: the registry denies access to it, so its cached tags are not listed (on_denied = %s): %w: %w", registry, repository, OnDeniedRefuse, err, errdefs.ErrNotFound)
	}
	tags, rerr := r.local.Tags(ctx, registry, repository)
	if rerr != nil {
		return nil, "", rerr
	}
	if len(tags) == 0 {
		return nil, "", notFoundIfDown(err, "repository "+registry+"/"+repository)
	}
	return tags, Stale, nil
}

// emptyIndex is an index with no manifest.
func emptyIndex() ocispec.Index {
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	idx.SchemaVersion = 2
	return idx
}

// Referrers returns the referrers index of dgst, filtered by artifactType when it is not empty.
// Referrers are not cached: with the upstream down or without the API, the index is empty.
func (r *Resolver) Referrers(ctx context.Context, registry, repository string, dgst digest.Digest, artifactType string) (ocispec.Index, error) {
	eps, err := blobArgs(r.upstreams, registry, repository, dgst)
	if err != nil {
		return ocispec.Index{}, err
	}
	idx := emptyIndex()
	rctx, cancel := context.WithTimeout(ctx, r.opts.UpstreamTimeout)
	defer cancel()
	body, _, err := endpoints.Try(rctx, eps, "referrers", func(ctx context.Context, c endpoints.Client) ([]byte, error) {
		b, _, err := c.Referrers(ctx, repository, dgst, artifactType)
		return b, err
	})
	if err != nil {
		log.G(ctx).WithError(err).Debug("no referrers from upstream")
		return idx, nil
	}
	var up ocispec.Index
	if err := json.Unmarshal(body, &up); err != nil {
		return idx, nil
	}
	for _, m := range up.Manifests {
		if artifactType == "" || m.ArtifactType == artifactType {
			idx.Manifests = append(idx.Manifests, m)
		}
	}
	return idx, nil
}
