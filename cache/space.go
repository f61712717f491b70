package cache

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Usage reports the bytes of cached blobs and the size budget.
func (s *Store) Usage() (used, budget int64) { return s.space.usage() }

// CheckRoom reports whether a blob of size bytes can be cached: it must fit within the budget
// and in the free space of the root's filesystem. If not, ErrResourceExhausted is returned with
// a sentence saying which.
func (s *Store) CheckRoom(size int64) error { return s.space.checkRoom(size) }

// space is the cache's size accounting: the bytes of indexed blobs against the budget, and the
// watermarks between which the evictor keeps them.
type space struct {
	root      string        // the cache root, whose filesystem's free space checkRoom measures
	high, low float64       // Options.HighWatermark and LowWatermark
	wake      chan struct{} // see pastHigh

	mu     sync.Mutex
	budget int64
	used   int64 // bytes of indexed blobs
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

// checkRoom is Store.CheckRoom.
func (sp *space) checkRoom(size int64) error {
	sp.mu.Lock()
	budget := sp.budget
	sp.mu.Unlock()
	if budget > 0 && size > budget {
		return fmt.Errorf("a blob of %d bytes is larger than the cache budget of %d bytes: %w", size, budget, errdefs.ErrResourceExhausted)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(sp.root, &st); err == nil {
		if free := int64(st.Bavail) * int64(st.Bsize); size > free {
			return fmt.Errorf("a blob of %d bytes does not fit in the %d bytes free on the cache's filesystem: %w", size, free, errdefs.ErrResourceExhausted)
		}
	}
	return nil
}
