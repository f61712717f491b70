package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/hedge"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// maxAttempts bounds the holders asked for one blob or manifest: however many a lookup names,
// one miss makes at most this many peer requests (and one to the blob's home).
const maxAttempts = 4

// maxRejectedPeers bounds the peers a Source remembers as rejected; past it, the one whose
// penalty ends first is forgotten.
const maxRejectedPeers = 1024

// manifestAccept is the Accept of a manifest request to a peer: every manifest media type.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}, ", ")

// Stats reports what the source counts.
func (s *Source) Stats() Stats {
	return Stats{
		BytesIn:        s.bytesIn.Load(),
		BytesOut:       s.bytesOut.Load(),
		CoalescedFills: s.coalescedFills.Load(),
		Rejected:       s.rejected.Load(),
		PeerAnswers:    s.peerAnswers.Load(),
		PeersDown:      s.breaker.down(),
		BreakerTrips:   s.breaker.trips.Load(),
		BreakerSkips:   s.breaker.skips.Load(),
		Probes:         s.breaker.probes.Load(),
	}
}

// OpenBlob asks dgst's holders, hedged (hedge.First): the first the lookup names at once, the
// next after Budget.HedgeDelay or as soon as one failed, at most maxAttempts of them, leaving out
// those in skip, those rejected lately and those the breaker holds down. The first that answers
// 200 with a Content-Length sends the blob. When none does and Coalesce is on, the blob is
// filled from the registry through the first of its homes that may be asked (coalescingHome),
// unless this node comes first. Every peer must send its headers within Budget.HeaderTimeout
// and, after them, a byte at least every Budget.IdleTimeout.
func (s *Source) OpenBlob(ctx context.Context, registry, repository string, dgst digest.Digest, skip []string) (resolver.PeerBlob, error) {
	key := cluster.BlobKey(dgst)
	health := &lookupHealth{breaker: s.breaker}
	holders, err := s.node.Lookup(ctx, key, cluster.WithPeerHealth(health))
	if err != nil {
		return resolver.PeerBlob{}, fmt.Errorf("blob %s: look up its holders: %w", dgst, err)
	}
	path := "/v2/" + repository + "/blobs/" + dgst.String()
	cands := s.candidates(holders, skip)
	b, errs, ok := s.fromHolders(ctx, cands, func(ctx context.Context, m cluster.Member) (resolver.PeerBlob, error) {
		return s.openBlob(ctx, m, registry, path, false)
	})
	if ok {
		return b, nil
	}
	if ctx.Err() != nil {
		return resolver.PeerBlob{}, ctx.Err()
	}
	if s.opts.Coalesce {
		// A home that failed as a holder otherwise than by not holding the blob, or did not
		// answer the lookup, is not asked to fill it.
		failed := health.failed
		for i, m := range cands {
			if errs[i] != nil && !errdefs.IsNotFound(errs[i]) {
				failed = append(failed, m.Name)
			}
		}
		if home, ok := s.coalescingHome(key, append(failed, skip...)); ok {
			b, err := s.openBlob(ctx, home, registry, path, true)
			if err == nil {
				s.coalescedFills.Add(1)
				s.peerAnswers.Add(1)
				return b, nil
			}
			if ctx.Err() != nil {
				return resolver.PeerBlob{}, ctx.Err()
			}
			errs = append(errs, err)
		}
	}
	return resolver.PeerBlob{}, noPeer("blob", dgst, errs)
}

// coalescingHome is the home to fill key through: the first of key's homes that may be asked
// (not in passOver, not rejected, not down), the next one when the first may not; none when
// this node comes first, as it then fills the blob from the registry itself (and the others
// through it). Homes agree on their order, and a home that is down is down for most of its
// peers, who all pass it over for the same next one: the blob is still filled once.
func (s *Source) coalescingHome(key string, passOver []string) (cluster.Member, bool) {
	for _, h := range s.node.Homes(key) {
		if h.Self || h.Name == s.node.Name() {
			return cluster.Member{}, false
		}
		if slices.Contains(passOver, h.Name) || s.isRejected(h.Name) || s.breaker.Down(h) {
			continue
		}
		return h, true
	}
	return cluster.Member{}, false
}

// OpenBlobAt asks dgst's holders for its bytes from off to the end of the blob of size bytes,
// hedged as OpenBlob asks them for all of it, leaving out the same peers, never through a
// home's fill: a fill that broke after bytes reached clients resumes with it. The answer must
// be a 206 of exactly that range of that size, for dgst: the holder serves the blob by its
// digest from its cache, and the fill verifies the whole. The PeerBlob's Size is the whole
// blob's.
func (s *Source) OpenBlobAt(ctx context.Context, registry, repository string, dgst digest.Digest, off, size int64, skip []string) (resolver.PeerBlob, error) {
	if off <= 0 || off >= size {
		return resolver.PeerBlob{}, fmt.Errorf("blob %s: no range from %d in %d bytes: %w", dgst, off, size, errdefs.ErrInvalidArgument)
	}
	holders, err := s.node.Lookup(ctx, cluster.BlobKey(dgst), cluster.WithPeerHealth(s.breaker))
	if err != nil {
		return resolver.PeerBlob{}, fmt.Errorf("blob %s: look up its holders: %w", dgst, err)
	}
	path := "/v2/" + repository + "/blobs/" + dgst.String()
	b, errs, ok := s.fromHolders(ctx, s.candidates(holders, skip), func(ctx context.Context, m cluster.Member) (resolver.PeerBlob, error) {
		return s.openBlobRange(ctx, m, registry, path, dgst, off, size)
	})
	if ok {
		return b, nil
	}
	if ctx.Err() != nil {
		return resolver.PeerBlob{}, ctx.Err()
	}
	return resolver.PeerBlob{}, noPeer("blob", dgst, errs)
}

// fromHolders asks cands for a blob with open, hedged: the first that answers sends it (ok),
// and its body's Close ends the request. errs are each candidate's failure (nil for those not
// asked).
func (s *Source) fromHolders(ctx context.Context, cands []cluster.Member, open func(context.Context, cluster.Member) (resolver.PeerBlob, error)) (_ resolver.PeerBlob, errs []error, ok bool) {
	winner, b, done, errs := hedge.First(ctx, cands, s.opts.Budget.HedgeDelay, open,
		func(b resolver.PeerBlob) { b.Body.Close() })
	if winner < 0 {
		return resolver.PeerBlob{}, errs, false
	}
	s.peerAnswers.Add(1)
	b.Body = &endsRequest{ReadCloser: b.Body, done: done}
	return b, errs, true
}

// lookupHealth is the breaker as one lookup uses it, remembering the homes that did not answer
// it. A lookup tells it from one goroutine, before it returns.
type lookupHealth struct {
	*breaker
	failed []string
}

func (h *lookupHealth) Observe(m cluster.Member, asked time.Time, err error) {
	h.breaker.Observe(m, asked, err)
	if err != nil {
		h.failed = append(h.failed, m.Name)
	}
}

// candidates are the members holders names that may be asked, maxAttempts at most.
func (s *Source) candidates(holders []cluster.Holder, skip []string) []cluster.Member {
	var cands []cluster.Member
	for _, h := range holders {
		if m, ok := s.askable(h.Node, skip); ok && !slices.ContainsFunc(cands, func(c cluster.Member) bool { return c.Name == m.Name }) {
			cands = append(cands, m)
		}
		if len(cands) == maxAttempts {
			break
		}
	}
	return cands
}

// endsRequest is a body whose Close also ends the context it was read under.
type endsRequest struct {
	io.ReadCloser
	done context.CancelFunc
}

func (b *endsRequest) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// openBlob GETs the blob at path from m, through its fill when fill is set.
func (s *Source) openBlob(ctx context.Context, m cluster.Member, registry, path string, fill bool) (resolver.PeerBlob, error) {
	resp, body, err := s.get(ctx, m, registry, path, fill, "", "")
	if err != nil {
		return resolver.PeerBlob{}, err
	}
	if resp.StatusCode != http.StatusOK {
		body.Close()
		return resolver.PeerBlob{}, statusError(m.Name, resp.StatusCode)
	}
	if resp.ContentLength < 0 {
		body.Close()
		return resolver.PeerBlob{}, fmt.Errorf("peer %s sent a blob without its length: %w", m.Name, errdefs.ErrUnavailable)
	}
	return resolver.PeerBlob{Body: body, Size: resp.ContentLength, Peer: m.Name, ViaHome: fill}, nil
}

// openBlobRange GETs the bytes from off of the blob dgst of size bytes at path from m: a 206 of
// exactly that range, for that digest, or an error before any byte is read.
func (s *Source) openBlobRange(ctx context.Context, m cluster.Member, registry, path string, dgst digest.Digest, off, size int64) (resolver.PeerBlob, error) {
	resp, body, err := s.get(ctx, m, registry, path, false, "", oci.RangeFrom(off, size))
	if err != nil {
		return resolver.PeerBlob{}, err
	}
	if resp.StatusCode != http.StatusPartialContent {
		body.Close()
		if resp.StatusCode == http.StatusOK {
			return resolver.PeerBlob{}, fmt.Errorf("peer %s ignored a range of blob %s: %w", m.Name, dgst, errdefs.ErrUnavailable)
		}
		return resolver.PeerBlob{}, statusError(m.Name, resp.StatusCode)
	}
	first, last, total, ok := oci.ParseContentRange(resp.Header.Get("Content-Range"))
	if h := resp.Header.Get(oci.HeaderContentDigest); !ok || first != off || last != size-1 || total != size ||
		resp.ContentLength != size-off || (h != "" && h != dgst.String()) {
		body.Close()
		return resolver.PeerBlob{}, fmt.Errorf("peer %s answered a range %d-%d of blob %s of %d bytes with another (%q, %d bytes): %w",
			m.Name, off, size-1, dgst, size, resp.Header.Get("Content-Range"), resp.ContentLength, errdefs.ErrFailedPrecondition)
	}
	return resolver.PeerBlob{Body: body, Size: size, Peer: m.Name}, nil
}

// Reject counts bad bytes from peer and keeps it from being asked for RejectFor.
func (s *Source) Reject(peer string, dgst digest.Digest) {
	s.rejected.Add(1)
	now := time.Now()
	until := now.Add(s.opts.RejectFor)
	log.L.WithFields(log.Fields{"peer": peer, "digest": dgst, "until": until}).Warn("peer sent bytes that failed verification; not asking it again for a while")
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.bad[peer]; !ok && len(s.bad) >= maxRejectedPeers {
		var first string
		for p, t := range s.bad {
			if !now.Before(t) {
				delete(s.bad, p)
			} else if first == "" || t.Before(s.bad[first]) {
				first = p
			}
		}
		if len(s.bad) >= maxRejectedPeers {
			delete(s.bad, first)
		}
	}
	s.bad[peer] = until
}

// isRejected reports whether peer sent bad bytes less than RejectFor ago.
func (s *Source) isRejected(peer string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.bad[peer]
	if ok && !time.Now().Before(until) {
		delete(s.bad, peer)
		return false
	}
	return ok
}

// askable returns the member a holder names when it may be asked: alive, not this node, not in
// skip, not rejected, not down.
func (s *Source) askable(name string, skip []string) (cluster.Member, bool) {
	if name == s.node.Name() || slices.Contains(skip, name) || s.isRejected(name) {
		return cluster.Member{}, false
	}
	m, ok := s.node.Member(name)
	if !ok || m.Self || m.PeerAddr == "" || s.breaker.Down(m) {
		return cluster.Member{}, false
	}
	return m, true
}

// Manifest fetches the manifest dgst from its holders, hedged as OpenBlob's, the first 200
// winning. The body is bounded by oci.MaxManifestSize and not verified: the resolver
// checks it.
func (s *Source) Manifest(ctx context.Context, registry, repository string, dgst digest.Digest) (string, []byte, string, error) {
	holders, err := s.node.Lookup(ctx, cluster.BlobKey(dgst), cluster.WithPeerHealth(s.breaker))
	if err != nil {
		return "", nil, "", fmt.Errorf("manifest %s: look up its holders: %w", dgst, err)
	}
	type manifest struct {
		mediaType string
		body      []byte
	}
	path := "/v2/" + repository + "/manifests/" + dgst.String()
	cands := s.candidates(holders, nil)
	winner, m, done, errs := hedge.First(ctx, cands, s.opts.Budget.HedgeDelay,
		func(ctx context.Context, p cluster.Member) (manifest, error) {
			mediaType, body, err := s.manifestFrom(ctx, p, registry, path)
			return manifest{mediaType, body}, err
		}, nil)
	if winner >= 0 {
		done()
		s.peerAnswers.Add(1)
		return m.mediaType, m.body, cands[winner].Name, nil
	}
	if ctx.Err() != nil {
		return "", nil, "", ctx.Err()
	}
	return "", nil, "", noPeer("manifest", dgst, errs)
}

// manifestFrom GETs the manifest at path from m.
func (s *Source) manifestFrom(ctx context.Context, m cluster.Member, registry, path string) (string, []byte, error) {
	resp, body, err := s.get(ctx, m, registry, path, false, manifestAccept, "")
	if err != nil {
		return "", nil, err
	}
	defer body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", nil, statusError(m.Name, resp.StatusCode)
	}
	tooLarge := fmt.Errorf("peer %s sent a manifest larger than %d bytes: %w", m.Name, oci.MaxManifestSize, errdefs.ErrFailedPrecondition)
	if resp.ContentLength > oci.MaxManifestSize {
		return "", nil, tooLarge
	}
	data, err := io.ReadAll(io.LimitReader(body, oci.MaxManifestSize+1))
	if err != nil {
		return "", nil, fmt.Errorf("peer %s: read manifest: %w", m.Name, err)
	}
	if len(data) > oci.MaxManifestSize {
		return "", nil, tooLarge
	}
	mediaType, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		mediaType = ""
	}
	return mediaType, data, nil
}

// Tag answers a tag from its holders' records (cluster.NewestTag), leaving out peers rejected
// lately; date is the newest registry Date among the records of the digest chosen.
func (s *Source) Tag(ctx context.Context, registry, repository, tag string) (digest.Digest, time.Time, error) {
	key := cluster.TagKey(registry, repository, tag)
	holders, err := s.node.Lookup(ctx, key, cluster.WithPeerHealth(s.breaker))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("tag %s: look up its holders: %w", key, err)
	}
	holders = slices.DeleteFunc(holders, func(h cluster.Holder) bool { return s.isRejected(h.Node) })
	dgst, ok := cluster.NewestTag(holders)
	if !ok {
		return "", time.Time{}, fmt.Errorf("tag %s: no peer holds it: %w", key, errdefs.ErrNotFound)
	}
	var date time.Time
	for _, h := range holders {
		if h.Digest == dgst && h.Date.After(date) {
			date = h.Date
		}
	}
	s.peerAnswers.Add(1)
	return dgst, date, nil
}

// Holders names the nodes the index knows to hold dgst.
func (s *Source) Holders(ctx context.Context, dgst digest.Digest) ([]string, error) {
	holders, err := s.node.Lookup(ctx, cluster.BlobKey(dgst), cluster.WithPeerHealth(s.breaker))
	if err != nil {
		return nil, fmt.Errorf("%s: look up its holders: %w", dgst, err)
	}
	names := make([]string, 0, len(holders))
	for _, h := range holders {
		names = append(names, h.Node)
	}
	return names, nil
}

// Cached announces that this node holds dgst.
func (s *Source) Cached(registry, repository string, dgst digest.Digest) {
	s.node.Announce(cluster.Record{Key: cluster.BlobKey(dgst)})
}

// Revalidated announces the registry's answer for a tag, with its Date.
func (s *Source) Revalidated(registry, repository, tag string, dgst digest.Digest, date time.Time) {
	s.node.Announce(cluster.Record{Key: cluster.TagKey(registry, repository, tag), Digest: dgst, Date: date})
}

// get sends GET path?ns=registry to m with the cluster's mutual-TLS client, with a Range header
// when rng is set. The response's headers must arrive within Budget.HeaderTimeout; its body
// (which the caller closes) fails a read that waits Budget.IdleTimeout for a byte, and counts
// the bytes in. The breaker is told whether m answered.
func (s *Source) get(ctx context.Context, m cluster.Member, registry, path string, fill bool, accept, rng string) (*http.Response, io.ReadCloser, error) {
	u := url.URL{Scheme: "https", Host: m.PeerAddr, Path: path, RawQuery: url.Values{"ns": {registry}}.Encode()}
	rctx, stop := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		stop(nil)
		return nil, nil, fmt.Errorf("peer %s: %w", m.Name, err)
	}
	if fill {
		req.Header.Set(cluster.HeaderFill, "1")
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	timeout := s.opts.Budget.HeaderTimeout
	slow := time.AfterFunc(timeout, func() {
		stop(fmt.Errorf("peer %s sent no answer within %s: %w: %w", m.Name, timeout, errdefs.ErrUnavailable, context.DeadlineExceeded))
	})
	asked := time.Now()
	resp, err := s.node.Client().Do(req)
	slow.Stop()
	if err == nil && rctx.Err() != nil { // the answer came as the time ran out
		resp.Body.Close()
		err = rctx.Err()
	}
	if err != nil {
		cause := context.Cause(rctx)
		stop(nil)
		if ctx.Err() == nil && cause != nil {
			err = cause
		} else {
			err = fmt.Errorf("peer %s: %w", m.Name, err)
		}
		s.observe(ctx, m, asked, err)
		return nil, nil, err
	}
	s.observe(ctx, m, asked, nil)
	return resp, newPeerBody(rctx, stop, resp.Body, m.Name, s.opts.Budget.IdleTimeout, &s.bytesIn), nil
}

// observe tells the breaker how a request to m, sent at asked under ctx, did. A request ended
// by its caller (another peer won the race, the client left) says nothing of m; one whose
// caller's deadline passed (the resolver's wait for the peers) is a timeout of m's.
func (s *Source) observe(ctx context.Context, m cluster.Member, asked time.Time, err error) {
	if err != nil && ctx.Err() != nil {
		cause := context.Cause(ctx)
		if !errors.Is(cause, context.DeadlineExceeded) {
			return
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", err, cause)
		}
	}
	s.breaker.Observe(m, asked, err)
}

// ping asks m's peer listener for GET /v2/ (the breaker's probe): any answer will do.
func (s *Source) ping(ctx context.Context, m cluster.Member) error {
	_, body, err := s.get(ctx, m, "", "/v2/", false, "", "")
	if err != nil {
		return err
	}
	return body.Close()
}

// peerBody is a peer's response body: a read that waits idle for a byte fails (ending the
// request), Close ends the request, and every byte read is counted.
type peerBody struct {
	ctx   context.Context
	stop  context.CancelCauseFunc
	rc    io.ReadCloser
	idle  time.Duration
	timer *time.Timer // ends the request, armed while a read waits
	in    *atomic.Int64
}

func newPeerBody(ctx context.Context, stop context.CancelCauseFunc, rc io.ReadCloser, peer string, idle time.Duration, in *atomic.Int64) *peerBody {
	b := &peerBody{ctx: ctx, stop: stop, rc: rc, idle: idle, in: in}
	b.timer = time.AfterFunc(idle, func() {
		stop(fmt.Errorf("peer %s sent no byte for %s: %w", peer, idle, errdefs.ErrUnavailable))
	})
	b.timer.Stop()
	return b
}

func (b *peerBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.idle)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	b.in.Add(int64(n))
	if err != nil && err != io.EOF {
		if cause := context.Cause(b.ctx); cause != nil {
			err = cause
		}
	}
	return n, err
}

func (b *peerBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.stop(nil)
	return err
}

// statusError is a peer's answer other than 200: ErrNotFound for a 404 (it does not hold the
// thing, or not for that repository), ErrUnavailable for any other.
func statusError(peer string, status int) error {
	var class error = errdefs.ErrUnavailable
	if status == http.StatusNotFound {
		class = errdefs.ErrNotFound
	}
	return fmt.Errorf("peer %s answered %d %s: %w", peer, status, http.StatusText(status), class)
}

// noPeer is the error when no peer sent what was asked: ErrNotFound when every peer asked
// said it does not hold it, else ErrUnavailable, with the failures (for the resolver's log).
// Nil errors (peers not asked) are left out.
func noPeer(what string, dgst digest.Digest, failed []error) error {
	for _, e := range failed {
		if e != nil && !errdefs.IsNotFound(e) {
			return fmt.Errorf("%s %s: no peer sent it: %v: %w", what, dgst, errors.Join(failed...), errdefs.ErrUnavailable)
		}
	}
	return fmt.Errorf("%s %s: no peer holds it: %w", what, dgst, errdefs.ErrNotFound)
}
