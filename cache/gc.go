package cache

import "context"

// EvictTarget is the usage an eviction pass brings the cache down to: the low watermark's share
// of the budget.
func (s *Store) EvictTarget() int64 { return s.space.evictTarget() }

// GC runs one eviction pass now, down to EvictTarget, as the evictor does on its own once usage
// passes the high watermark. With dryRun nothing is removed and the plan says what would be.
func (s *Store) GC(ctx context.Context, dryRun bool) (EvictionPlan, error) {
	return s.evict.evict(ctx, s.space.evictTarget(), dryRun)
}
