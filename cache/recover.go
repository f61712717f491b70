package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// RecoveryReport says what Open repaired.
type RecoveryReport struct {
	DroppedEntries  []digest.Digest // index entries whose blob file was missing
	Reindexed       []digest.Digest // blob files without an index entry, verified and indexed
	Relinked        int             // links of reindexed blobs restored from their ingest's entry
	Quarantined     []string        // files in blobs/ that were not a blob with that digest
	OrphanIngests   int             // ingest files without an index entry, removed
	DroppedIngests  int             // ingest entries without a file, dropped
	ResumableIngest int             // ingests kept for a Writer to resume
}

// LastRecovery is what the last Open repaired.
func (s *Store) LastRecovery() RecoveryReport { return s.recovered }

// recovery makes the index and the files agree after a crash, at Open (see run).
type recovery struct {
	db    *bolt.DB
	files layout
}

// run makes the index and the files agree after a crash. Blob files only ever appear by an
// atomic rename of verified bytes, so a blob file is complete; what a crash can leave is:
//   - an index entry without its file (crash while removing): the entry is dropped;
//   - a blob file without an index entry (crash between rename and index commit): it is
//     rehashed and indexed if it matches its name, quarantined if not; the entry of the ingest
//     it was committed from, still in the index, gives its media type and the repository it
//     was to be linked to in that commit (see LinkingTo);
//   - an ingest file without an index entry, or the reverse: removed, or dropped.
//
// Ingests that have both are kept for their writers to resume.
func (r recovery) run(ctx context.Context) (RecoveryReport, error) {
	var rep RecoveryReport
	files, bad, err := r.files.blobFiles()
	if err != nil {
		return rep, err
	}
	for _, p := range bad {
		if err := r.files.quarantine(p); err != nil {
			return rep, err
		}
		rep.Quarantined = append(rep.Quarantined, p)
	}
	ingestFiles := map[string]bool{}
	entries, err := os.ReadDir(r.files.ingestDir())
	if err != nil {
		return rep, err
	}
	for _, e := range entries {
		ingestFiles[e.Name()] = true
	}

	var unindexed []digest.Digest
	committing := map[digest.Digest][]ingestRecord{} // entries of ingests whose file is gone, by digest
	err = r.db.Update(func(tx *bolt.Tx) error {
		var missing [][]byte
		blobs := tx.Bucket(bucketBlobs)
		if err := blobs.ForEach(func(k, _ []byte) error {
			if _, ok := files[digest.Digest(k)]; ok {
				delete(files, digest.Digest(k))
			} else {
				missing = append(missing, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range missing {
			rep.DroppedEntries = append(rep.DroppedEntries, digest.Digest(k))
			if err := blobs.Delete(k); err != nil {
				return err
			}
		}
		if err := unlinkAll(tx, rep.DroppedEntries); err != nil {
			return err
		}

		ingests := tx.Bucket(bucketIngests)
		var gone [][]byte
		if err := ingests.ForEach(func(k, v []byte) error {
			name := digest.FromBytes(k).Encoded()
			if ingestFiles[name] {
				delete(ingestFiles, name)
				rep.ResumableIngest++
				return nil
			}
			gone = append(gone, append([]byte(nil), k...))
			var rec ingestRecord
			if json.Unmarshal(v, &rec) == nil && rec.Expected != "" {
				committing[rec.Expected] = append(committing[rec.Expected], rec)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range gone {
			rep.DroppedIngests++
			if err := ingests.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	for name := range ingestFiles {
		if err := os.Remove(filepath.Join(r.files.ingestDir(), name)); err != nil && !os.IsNotExist(err) {
			return rep, err
		}
		rep.OrphanIngests++
	}

	for dgst := range files {
		unindexed = append(unindexed, dgst)
	}
	for _, dgst := range unindexed {
		ok, linked, err := r.reindex(dgst, committing[dgst])
		if err != nil {
			return rep, err
		}
		if ok {
			rep.Reindexed = append(rep.Reindexed, dgst)
			rep.Relinked += linked
		} else {
			rep.Quarantined = append(rep.Quarantined, files[dgst])
		}
	}
	if len(rep.DroppedEntries)+len(rep.Reindexed)+len(rep.Quarantined)+rep.OrphanIngests+rep.DroppedIngests > 0 {
		log.G(ctx).WithField("dropped_entries", len(rep.DroppedEntries)).WithField("reindexed", len(rep.Reindexed)).
			WithField("relinked", rep.Relinked).
			WithField("quarantined", len(rep.Quarantined)).WithField("orphan_ingests", rep.OrphanIngests).
			WithField("dropped_ingests", rep.DroppedIngests).Warn("cache repaired after an unclean stop")
	}
	return rep, nil
}

// reindex verifies an unindexed blob file and indexes it, or quarantines it if its bytes do not
// match its name. The entries of the ingests it was being committed from, if any, give its
// media type and the repositories its commit was to link it to, which are linked in the same
// transaction. It reports whether the blob was kept, and how many links it restored.
func (r recovery) reindex(dgst digest.Digest, from []ingestRecord) (kept bool, linked int, err error) {
	p, _ := r.files.blobPath(dgst)
	got, err := digestFile(p, dgst.Algorithm())
	if err != nil {
		return false, 0, err
	}
	if got != dgst {
		return false, 0, r.files.quarantine(p)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return false, 0, err
	}
	err = r.db.Update(func(tx *bolt.Tx) error {
		mt := fi.ModTime()
		rec := blobRecord{Size: fi.Size(), CreatedAt: mt, UpdatedAt: mt, AccessedAt: mt}
		for _, in := range from {
			if rec.MediaType == "" {
				rec.MediaType = in.MediaType
			}
			if in.Link == "" {
				continue
			}
			if err := putLink(tx, in.Link, dgst, mt); err != nil {
				return err
			}
			linked++
		}
		return putBlob(tx, dgst, rec)
	})
	return err == nil, linked, err
}

// VerifyReport says what Verify found.
type VerifyReport struct {
	Checked int             `json:"checked"`
	Bytes   int64           `json:"bytes"`
	Corrupt []digest.Digest `json:"corrupt"` // content does not match the digest
	Missing []digest.Digest `json:"missing"` // indexed, but the file is gone
	// Repaired is true when corrupt and missing blobs were removed from the index (and corrupt
	// files moved to quarantine/), so that the next use fetches them again.
	Repaired bool `json:"repaired"`
}

// Verify rehashes every cached blob. With repair, corrupt blobs are quarantined and they and
// missing ones are dropped from the index. Blobs being read are verified like the others: their
// readers keep the bytes they opened.
func (s *Store) Verify(ctx context.Context, repair bool) (VerifyReport, error) {
	return s.verify.verify(ctx, repair)
}

// verifier rehashes the cached blobs when asked (see Store.Verify), one pass at a time.
type verifier struct {
	db     *bolt.DB
	files  layout
	remove remover

	mu sync.Mutex // held by a pass
}

// verify is Store.Verify.
func (vr *verifier) verify(ctx context.Context, repair bool) (VerifyReport, error) {
	vr.mu.Lock()
	defer vr.mu.Unlock()
	rep := VerifyReport{Repaired: repair}
	var dgsts []digest.Digest
	if err := vr.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			var rec blobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			dgsts = append(dgsts, digest.Digest(k))
			return nil
		})
	}); err != nil {
		return rep, err
	}
	var bad []digest.Digest
	for _, d := range dgsts {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		p, err := vr.files.blobPath(d)
		if err != nil {
			return rep, err
		}
		got, err := digestFile(p, d.Algorithm())
		switch {
		case os.IsNotExist(err):
			rep.Missing = append(rep.Missing, d)
			bad = append(bad, d)
			continue
		case err != nil:
			return rep, fmt.Errorf("verify %s: %w", d, err)
		}
		rep.Checked++
		if fi, err := os.Stat(p); err == nil {
			rep.Bytes += fi.Size()
		}
		if got != d {
			rep.Corrupt = append(rep.Corrupt, d)
			bad = append(bad, d)
			log.G(ctx).WithField("digest", d).WithField("actual", got).Error("cached blob is corrupt")
		}
	}
	if !repair || len(bad) == 0 {
		return rep, nil
	}
	for _, d := range rep.Corrupt {
		p, _ := vr.files.blobPath(d)
		if err := vr.files.quarantine(p); err != nil && !os.IsNotExist(err) {
			return rep, err
		}
	}
	if _, err := vr.remove.blobs(ctx, bad); err != nil && !errdefs.IsNotFound(err) {
		return rep, err
	}
	return rep, nil
}
