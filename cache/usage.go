package cache

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// RefUsage is what a cached ref holds.
type RefUsage struct {
	Ref
	// Size adds up the cached blobs reachable from the ref: its index, manifests, configs and
	// layers. A blob shared with other refs counts for each of them.
	Size int64
	// Blobs is how many cached blobs the ref reaches.
	Blobs int
	// LastUsed is when the ref was last used, as eviction orders refs: the later of its last
	// verification against the upstream and the last read of its target.
	LastUsed time.Time
}

// RefUsages lists every cached ref with what it holds, in name order. Listing is not a use: no
// access time changes, so it does not change what eviction removes first.
func (s *Store) RefUsages(ctx context.Context) ([]RefUsage, error) { return s.evict.refUsages(ctx) }

// refUsages is Store.RefUsages.
func (e *evictor) refUsages(ctx context.Context) ([]RefUsage, error) {
	blobs, refs, err := e.snapshotIndex()
	if err != nil {
		return nil, err
	}
	out := make([]RefUsage, 0, len(refs))
	for _, ref := range refs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		u := RefUsage{Ref: ref, LastUsed: ref.VerifiedAt}
		for _, d := range e.reachable(ctx, ref.Target, inMap(blobs)) {
			u.Size += blobs[d].Size
			u.Blobs++
		}
		out = append(out, u)
	}
	lastAccess := e.uses.lastAccess(blobs)
	for i, u := range out {
		if at, ok := lastAccess[u.Target.Digest]; ok && at.After(u.LastUsed) {
			out[i].LastUsed = at
		}
	}
	return out, nil
}

// Peek reads a cached blob of at most limit bytes whole, without counting as a use of it: for
// describing the cache, which must not change what eviction removes first. If the blob is not
// cached, ErrNotFound is returned; if it is larger than limit, ErrFailedPrecondition.
func (s *Store) Peek(ctx context.Context, dgst digest.Digest, limit int64) ([]byte, error) {
	info, err := s.Info(ctx, dgst)
	if err != nil {
		return nil, err
	}
	if info.Size > limit {
		return nil, fmt.Errorf("blob %s is %d bytes, more than %d: %w", dgst, info.Size, limit, errdefs.ErrFailedPrecondition)
	}
	if s.uses.isEvicting(dgst) {
		return nil, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	p, err := s.files.blobPath(dgst)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", dgst, err)
	}
	return b, nil
}
