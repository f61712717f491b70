package cache

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// remover removes blobs: their files, index entries and repository links, then what is kept of
// them in memory. Delete, Verify and the evictor remove blobs with it.
type remover struct {
	db    *bolt.DB
	files layout
	space *space
	uses  *uses
}

// blobs removes those of dgsts that are cached (see inTx) and returns how many.
func (r remover) blobs(ctx context.Context, dgsts []digest.Digest) (int, error) {
	var removed []digest.Digest
	var freed int64
	err := r.db.Update(func(tx *bolt.Tx) (err error) {
		removed, freed, err = r.inTx(tx, dgsts)
		return err
	})
	if err != nil {
		return 0, err
	}
	r.forget(ctx, removed, freed)
	return len(removed), nil
}

// inTx deletes the files of those of dgsts that are indexed in tx, then their index entries and
// repository links, and returns them with their total size. The files go first so that a crash
// before tx commits leaves index entries without files, which recovery drops, rather than
// unindexed files it would index again. Once tx commits, call forget.
func (r remover) inTx(tx *bolt.Tx, dgsts []digest.Digest) (removed []digest.Digest, freed int64, err error) {
	blobs := tx.Bucket(bucketBlobs)
	for _, dgst := range dgsts {
		rec, ok, err := getBlob(tx, dgst)
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			continue
		}
		p, err := r.files.blobPath(dgst)
		if err != nil {
			return nil, 0, err
		}
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return nil, 0, fmt.Errorf("remove blob %s: %w", dgst, err)
		}
		if err := blobs.Delete([]byte(dgst)); err != nil {
			return nil, 0, fmt.Errorf("remove blob %s from index: %w", dgst, err)
		}
		removed = append(removed, dgst)
		freed += rec.Size
	}
	return removed, freed, unlinkAll(tx, removed)
}

// forget updates the in-memory accounting for blobs inTx removed.
func (r remover) forget(ctx context.Context, removed []digest.Digest, freed int64) {
	r.space.free(freed)
	r.uses.forget(removed)
	if len(removed) > 0 {
		log.G(ctx).WithField("blobs", len(removed)).WithField("bytes", freed).Debug("removed blobs")
	}
}
