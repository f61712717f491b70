package cache

// The index is a bbolt database, <root>/index.db. Its buckets:
//
//	meta
//	 ├─ version        → uint64, big-endian: the schema version (see migrations)
//	 └─ budget         → int64, big-endian: the size budget fixed at first start
//	blobs
//	 └─ <digest>       → blobRecord (JSON): size, media type, created, updated, last access, labels
//	refs
//	 └─ <ref>          → refRecord (JSON): descriptor, last verified, source endpoint, last used
//	                     (<ref> is "registry/repository:tag" or "registry/repository@digest")
//	links
//	 └─ <registry/repository> (bucket)
//	     └─ <digest>   → time (RFC 3339): when the digest was fetched under that repository
//	pins
//	 └─ <ref>          → time (RFC 3339): when the ref was pinned
//	ingests
//	 └─ <ingest ref>   → ingestRecord (JSON): total, expected digest, media type, repository to
//	                     link at commit, started, updated
//
// Blob bytes live beside the index, never in it (see layout): <root>/blobs/<alg>/<hex>
// (complete, verified content only), <root>/ingest/<sha256 of ingest ref> (writes in progress)
// and <root>/quarantine/<alg>-<hex> (blobs that failed verification).

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta    = []byte("meta")
	bucketBlobs   = []byte("blobs")
	bucketRefs    = []byte("refs")
	bucketLinks   = []byte("links")
	bucketPins    = []byte("pins")
	bucketIngests = []byte("ingests")

	keyVersion = []byte("version")
	keyBudget  = []byte("budget")
)

// migration moves the index from version-1 to version. Migrations run in order, each in its own
// transaction together with the version bump, so an interrupted upgrade resumes where it stopped.
type migration struct {
	version int
	name    string
	apply   func(tx *bolt.Tx) error
}

// migrations is the ordered list of schema changes. Append only; never edit a released entry.
var migrations = []migration{
	{version: 1, name: "create the buckets", apply: func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketBlobs, bucketRefs, bucketLinks, bucketPins, bucketIngests} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}},
}

// schemaVersion is the version this code reads and writes.
var schemaVersion = migrations[len(migrations)-1].version

// migrate brings the index up to schemaVersion. An index written by a newer lifeboat is refused
// rather than guessed at.
func migrate(db *bolt.DB) error {
	current, err := readVersion(db)
	if err != nil {
		return err
	}
	if current > schemaVersion {
		return fmt.Errorf("index schema version %d is newer than this lifeboat understands (%d): upgrade lifeboat or use another root", current, schemaVersion)
	}
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		err := db.Update(func(tx *bolt.Tx) error {
			if err := m.apply(tx); err != nil {
				return err
			}
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			return meta.Put(keyVersion, encodeUint(uint64(m.version)))
		})
		if err != nil {
			return fmt.Errorf("index migration to version %d (%s): %w", m.version, m.name, err)
		}
	}
	return nil
}

func readVersion(db *bolt.DB) (int, error) {
	var v int
	err := db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return nil
		}
		if b := meta.Get(keyVersion); len(b) == 8 {
			v = int(binary.BigEndian.Uint64(b))
		}
		return nil
	})
	return v, err
}

func encodeUint(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func decodeUint(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
