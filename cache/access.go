package cache

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// uses tracks how blobs are used between index writes: the readers open on each, the last
// accesses not yet written to the index, and the blobs an eviction pass is removing, which can
// no longer be opened. Access times are kept in memory on reads and written to the index in one
// transaction every Options.AccessFlushInterval, so that a read costs no index write.
type uses struct {
	db *bolt.DB

	mu       sync.Mutex
	readers  map[digest.Digest]int       // open readers per blob
	accessed map[digest.Digest]time.Time // last access times not yet flushed
	evicting map[digest.Digest]struct{}  // blobs being removed by the evictor
}

func newUses(db *bolt.DB) *uses {
	return &uses{
		db:       db,
		readers:  map[digest.Digest]int{},
		accessed: map[digest.Digest]time.Time{},
		evicting: map[digest.Digest]struct{}{},
	}
}

// open counts a reader of dgst, and the access, unless the blob is being evicted: then it
// reports false. Each open that reports true is followed by one close.
func (u *uses) open(dgst digest.Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.evicting[dgst]; ok {
		return false
	}
	u.readers[dgst]++
	u.accessed[dgst] = time.Now()
	return true
}

// close forgets a reader counted by open.
func (u *uses) close(dgst digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.readers[dgst]--; u.readers[dgst] <= 0 {
		delete(u.readers, dgst)
	}
}

// touch records a use of dgst that opens nothing, unless the blob is being evicted: then it
// reports false.
func (u *uses) touch(dgst digest.Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.evicting[dgst]; ok {
		return false
	}
	u.accessed[dgst] = time.Now()
	return true
}

// isEvicting reports whether dgst is being removed by the evictor.
func (u *uses) isEvicting(dgst digest.Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.evicting[dgst]
	return ok
}

// reading lists the blobs open for reading.
func (u *uses) reading() []digest.Digest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Collect(maps.Keys(u.readers))
}

// lastAccess is the latest access of each of blobs, counting reads not yet flushed.
func (u *uses) lastAccess(blobs map[digest.Digest]blobRecord) map[digest.Digest]time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[digest.Digest]time.Time, len(blobs))
	for d, rec := range blobs {
		out[d] = u.lastAccessLocked(d, rec)
	}
	return out
}

// lastAccessLocked is the blob's latest access, counting reads not yet flushed. Callers hold
// u.mu.
func (u *uses) lastAccessLocked(dgst digest.Digest, rec blobRecord) time.Time {
	at := rec.AccessedAt
	if rec.CreatedAt.After(at) {
		at = rec.CreatedAt
	}
	if m, ok := u.accessed[dgst]; ok && m.After(at) {
		at = m
	}
	return at
}

// claim marks for removal those of dgsts that have a record in recs, are not open for reading,
// are not being written (as writing says) and were not used after since, and returns them: from
// now on they cannot be opened. The caller removes them and then calls unclaim. writing runs
// with u.mu held, so that a blob is checked and claimed at one instant; it must not call uses.
func (u *uses) claim(dgsts []digest.Digest, recs map[digest.Digest]blobRecord, since time.Time, writing func(digest.Digest) bool) []digest.Digest {
	u.mu.Lock()
	defer u.mu.Unlock()
	var claimed []digest.Digest
	for _, d := range dgsts {
		rec, ok := recs[d]
		if !ok || u.readers[d] > 0 || writing(d) || u.lastAccessLocked(d, rec).After(since) {
			continue
		}
		u.evicting[d] = struct{}{}
		claimed = append(claimed, d)
	}
	return claimed
}

// unclaim ends the claim on blobs claim returned, whether or not they were removed.
func (u *uses) unclaim(dgsts []digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, d := range dgsts {
		delete(u.evicting, d)
	}
}

// forget drops the unflushed access times of removed blobs.
func (u *uses) forget(removed []digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, dgst := range removed {
		delete(u.accessed, dgst)
	}
}

// flushLoop writes batched access times to the index every interval until stop is closed.
func (u *uses) flushLoop(ctx context.Context, interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if err := u.flush(); err != nil {
				log.G(ctx).WithError(err).Warn("cannot record blob access times")
			}
		}
	}
}

// flush writes the access times gathered since the last flush in one transaction.
func (u *uses) flush() error {
	u.mu.Lock()
	pending := u.accessed
	u.accessed = map[digest.Digest]time.Time{}
	u.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	return u.db.Update(func(tx *bolt.Tx) error {
		for dgst, at := range pending {
			rec, ok, err := getBlob(tx, dgst)
			if err != nil || !ok {
				continue // removed since: nothing to record
			}
			if at.After(rec.AccessedAt) {
				rec.AccessedAt = at
				if err := putBlob(tx, dgst, rec); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
