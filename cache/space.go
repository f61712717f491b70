package cache

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Usage reports the bytes of cached blobs and the size budget.
func (s *Store) Usage() (used, budget int64) { return s.space.usage() }

// space is the cache's size accounting: the bytes of indexed blobs against the budget, and the
// watermarks between which the evictor keeps them.
type space struct {
	root      string        // the cache root, whose filesystem's free space reserve measures
	high, low float64       // Options.HighWatermark and LowWatermark
	wake      chan struct{} // see pastHigh

	mu       sync.Mutex
	budget   int64
	used     int64 // bytes of indexed blobs
	reserved int64 // bytes of the budget held by blobs being written (Store.Reserve)
	rooms    map[*Room]struct{}
	seq      uint64 // of the last room reserved
}

// loadSpace reads the budget (fixing it now if this is the first start and none is configured)
// and adds up the indexed blobs.
func loadSpace(db *bolt.DB, root string, opts Options) (*space, error) {
	sp := &space{root: root, high: opts.HighWatermark, low: opts.LowWatermark, wake: make(chan struct{}, 1)}
	budget, err := loadBudget(db, root, opts.MaxSize)
	if err != nil {
		return nil, err
	}
	sp.budget = budget
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(_, v []byte) error {
			var rec blobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			sp.used += rec.Size
			return nil
		})
	})
	return sp, err
}

// loadBudget returns the configured budget, or the one fixed at first start, fixing it now if
// this is the first start.
func loadBudget(db *bolt.DB, root string, maxSize int64) (int64, error) {
	if maxSize > 0 {
		return maxSize, nil
	}
	var budget int64
	err := db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if b := meta.Get(keyBudget); len(b) == 8 {
			budget = int64(decodeUint(b))
			return nil
		}
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil {
			return fmt.Errorf("measure free space of %s: %w", root, err)
		}
		budget = int64(float64(st.Bavail) * float64(st.Bsize) * DefaultBudgetShare)
		return meta.Put(keyBudget, encodeUint(uint64(budget)))
	})
	return budget, err
}

func (sp *space) overHighLocked() bool {
	return sp.budget > 0 && float64(sp.used) > sp.high*float64(sp.budget)
}

func (sp *space) targetLocked() int64 { return int64(sp.low * float64(sp.budget)) }

// add counts a blob of n bytes just indexed, and wakes the evictor if usage is now over the
// high watermark.
func (sp *space) add(n int64) {
	sp.mu.Lock()
	sp.used += n
	over := sp.overHighLocked()
	sp.mu.Unlock()
	if over {
		select {
		case sp.wake <- struct{}{}:
		default:
		}
	}
}

// pastHigh is signalled, without blocking, whenever a blob is added while usage is over the
// high watermark: it wakes the evictor.
func (sp *space) pastHigh() <-chan struct{} { return sp.wake }

// free counts n bytes of blobs just removed.
func (sp *space) free(n int64) {
	sp.mu.Lock()
	sp.used -= n
	sp.mu.Unlock()
}

func (sp *space) usage() (used, budget int64) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.used, sp.budget
}

// evictTarget is the usage an eviction pass brings the cache down to.
func (sp *space) evictTarget() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.targetLocked()
}

// overHigh reports whether usage is over the high watermark, and the eviction target.
func (sp *space) overHigh() (over bool, target int64) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.overHighLocked(), sp.targetLocked()
}

// Reserve sets aside room in the budget for a blob of size bytes (0 when its size is not known
// yet) that is being written, such as a fill from a registry: the blobs being written together
// never hold more than the budget, however many fills run at once. Grow the room as a blob of
// unknown size arrives, and Release it once the blob is committed or abandoned.
//
// A blob that does not fit is refused with ErrResourceExhausted and a sentence saying why:
// larger than the budget, or than the free space of the root's filesystem, or than what the
// writes that started before it leave. Writes that started earlier come first: when one must
// grow and the budget is held, the room of the writes that started after it is taken back
// (their next Grow fails), so that the oldest always goes on and concurrent writes of blobs
// that do not fit together cannot all starve each other.
func (s *Store) Reserve(size int64) (*Room, error) {
	sp := s.space
	sp.mu.Lock()
	sp.seq++
	r := &Room{sp: sp, seq: sp.seq}
	if sp.rooms == nil {
		sp.rooms = map[*Room]struct{}{}
	}
	sp.rooms[r] = struct{}{}
	sp.mu.Unlock()
	if err := r.Grow(size); err != nil {
		r.Release()
		return nil, err
	}
	return r, nil
}

// Room is the share of the budget a blob being written holds (Store.Reserve). Its methods are
// for the one writer that reserved it.
type Room struct {
	sp  *space
	seq uint64 // the order of the writes: lower started earlier
	// Under sp.mu:
	n        int64
	revoked  bool // an earlier write took the room back
	released bool
}

// Grow makes the room size bytes, when that is more than it holds, with the checks of Reserve.
func (r *Room) Grow(size int64) error {
	sp := r.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	switch {
	case r.revoked:
		return fmt.Errorf("downloads that started earlier took the cache budget this one held: %w", errdefs.ErrResourceExhausted)
	case r.released || size <= r.n:
		return nil
	case sp.budget > 0 && size > sp.budget:
		return fmt.Errorf("a blob of %d bytes is larger than the cache budget of %d bytes: %w", size, sp.budget, errdefs.ErrResourceExhausted)
	}
	extra := size - r.n
	var st unix.Statfs_t
	if err := unix.Statfs(sp.root, &st); err == nil {
		if free := int64(st.Bavail) * int64(st.Bsize); extra > free {
			return fmt.Errorf("%d more bytes of a download do not fit in the %d bytes free on the cache's filesystem: %w", extra, free, errdefs.ErrResourceExhausted)
		}
	}
	if sp.budget > 0 && sp.reserved+extra > sp.budget && !sp.takeBackLocked(r, sp.reserved+extra-sp.budget) {
		return fmt.Errorf("the downloads in progress hold %d bytes of the cache budget of %d bytes, and %d more do not fit: %w", sp.reserved, sp.budget, extra, errdefs.ErrResourceExhausted)
	}
	sp.reserved += extra
	r.n = size
	return nil
}

// takeBackLocked takes back the rooms of the writes that started after r, the latest first,
// until need bytes are free, and says whether they are; it takes nothing when they would not
// be. The caller holds sp.mu.
func (sp *space) takeBackLocked(r *Room, need int64) bool {
	var later []*Room
	var held int64
	for o := range sp.rooms {
		if o.seq > r.seq && !o.revoked && o.n > 0 {
			later = append(later, o)
			held += o.n
		}
	}
	if held < need {
		return false
	}
	slices.SortFunc(later, func(a, b *Room) int { return cmp.Compare(b.seq, a.seq) })
	for _, o := range later {
		if need <= 0 {
			break
		}
		sp.reserved -= o.n
		need -= o.n
		o.n, o.revoked = 0, true
	}
	return true
}

// Release gives the room back; later calls do nothing.
func (r *Room) Release() {
	sp := r.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if r.released {
		return
	}
	r.released = true
	sp.reserved -= r.n
	r.n = 0
	delete(sp.rooms, r)
}

// Reserved reports the bytes of the budget the blobs being written hold (Store.Reserve).
func (s *Store) Reserved() int64 {
	s.space.mu.Lock()
	defer s.space.mu.Unlock()
	return s.space.reserved
}
