package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// ingestRecord is the index entry of one write in progress. Its bytes are in
// layout.ingestPath(ref).
type ingestRecord struct {
	Total     int64         `json:"total,omitempty"`
	Expected  digest.Digest `json:"expected,omitempty"`
	MediaType string        `json:"mediaType,omitempty"`
	// Link is the repository the blob is linked to at commit (see LinkingTo). With Expected, it
	// tells recovery what a commit cut short by a crash was for (see recovery.run).
	Link      string    `json:"link,omitempty"`
	StartedAt time.Time `json:"startedAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

func getIngest(tx *bolt.Tx, ref string) (ingestRecord, bool, error) {
	var rec ingestRecord
	v := tx.Bucket(bucketIngests).Get([]byte(ref))
	if v == nil {
		return rec, false, nil
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, false, fmt.Errorf("index entry of ingest %q: %w", ref, err)
	}
	return rec, true, nil
}

func putIngest(tx *bolt.Tx, ref string, rec ingestRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketIngests).Put([]byte(ref), v)
}

// Writer begins or resumes the write named by the WithRef option. A write that was closed, or
// interrupted by a crash, resumes at the offset of the bytes on disk. Only one Writer per ref
// may be open: a second gets ErrUnavailable. If the expected digest in the descriptor is
// already cached, ErrAlreadyExists is returned and nothing is written. The descriptor's media
// type is recorded with the blob at commit.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	return s.ingests.writer(ctx, "", opts...)
}

// LinkingTo returns an Ingester whose writes link their blob to repository (as Link does) in the
// same index transaction that caches it, so that no crash can leave the blob cached but not
// linked, where a registry mirror would not serve it. Its Writer behaves as Store.Writer, except
// that when the expected blob is already cached it links it before returning ErrAlreadyExists;
// a commit that finds the content cached links it too.
func (s *Store) LinkingTo(repository string) content.Ingester {
	return linkingIngester{ingests: s.ingests, repository: repository}
}

type linkingIngester struct {
	ingests    *ingests
	repository string
}

func (l linkingIngester) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	if err := validRefName(l.repository); err != nil {
		return nil, err
	}
	return l.ingests.writer(ctx, l.repository, opts...)
}

// Status reports the write named ref. If there is none, ErrNotFound is returned.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	return s.ingests.status(ref)
}

// ListStatuses lists writes in progress matching any of the filters (field "ref").
func (s *Store) ListStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	return s.ingests.list(fs...)
}

// Abort drops the write named ref and its bytes. If there is none, ErrNotFound is returned.
//
// The bytes go first: a write that failed because the filesystem is full gives its space back
// even when the index, on the same filesystem, cannot take the change. An index entry left
// without its file is dropped by recovery at the next Open, and a Writer reopening the ref starts
// over.
func (s *Store) Abort(ctx context.Context, ref string) error { return s.ingests.abort(ref) }

// OpenIngest opens the bytes written so far under ref for reading, so that a write in progress
// can be streamed to readers while it is being written. The file stays readable after the
// ingest is committed or aborted. If there is no such ingest, ErrNotFound is returned.
func (s *Store) OpenIngest(ref string) (*os.File, error) { return s.ingests.openFile(ref) }

// ingests are the writes in progress: their index entries and files, the Writers open on them,
// and the commit that moves their bytes into blobs/ (see writer).
type ingests struct {
	db    *bolt.DB
	files layout
	space *space // counts the blobs commits add

	mu      sync.Mutex
	active  map[string]*writer    // ingest refs with an open Writer
	writing map[digest.Digest]int // expected digests of open Writers
}

func newIngests(db *bolt.DB, files layout, space *space) *ingests {
	return &ingests{db: db, files: files, space: space, active: map[string]*writer{}, writing: map[digest.Digest]int{}}
}

// writer opens a Writer whose commit links the blob to link, unless link is "".
func (in *ingests) writer(ctx context.Context, link string, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, opt := range opts {
		if err := opt(&wo); err != nil {
			return nil, err
		}
	}
	ref := wo.Ref
	if ref == "" {
		return nil, fmt.Errorf("writer ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	expected := wo.Desc.Digest
	if expected != "" {
		if err := expected.Validate(); err != nil {
			return nil, fmt.Errorf("invalid expected digest %q: %v: %w", expected, err, errdefs.ErrInvalidArgument)
		}
	}

	in.mu.Lock()
	if _, busy := in.active[ref]; busy {
		in.mu.Unlock()
		return nil, fmt.Errorf("ingest %q is being written: %w", ref, errdefs.ErrUnavailable)
	}
	in.active[ref] = nil
	in.mu.Unlock()

	w, err := in.open(ctx, ref, link, wo.Desc.Size, expected, wo.Desc.MediaType)
	in.mu.Lock()
	defer in.mu.Unlock()
	if err != nil {
		delete(in.active, ref)
		return nil, err
	}
	in.active[ref] = w
	if expected != "" {
		in.writing[expected]++
	}
	return w, nil
}

func (in *ingests) open(ctx context.Context, ref, link string, total int64, expected digest.Digest, mediaType string) (*writer, error) {
	if expected != "" {
		cached, err := in.linkIfCached(expected, link)
		if err != nil {
			return nil, err
		}
		if cached {
			return nil, fmt.Errorf("blob %s: %w", expected, errdefs.ErrAlreadyExists)
		}
	}
	alg := digest.Canonical
	if expected != "" && expected.Algorithm().Available() {
		alg = expected.Algorithm()
	}
	w := &writer{ingests: in, ref: ref, link: link, path: in.files.ingestPath(ref), expected: expected, digester: alg.Digester()}

	var rec ingestRecord
	var found bool
	if err := in.db.View(func(tx *bolt.Tx) (err error) {
		rec, found, err = getIngest(tx, ref)
		return err
	}); err != nil {
		return nil, err
	}
	if found && total > 0 && rec.Total > 0 && total != rec.Total {
		log.G(ctx).WithField("ref", ref).Infof("ingest total changed from %d to %d: starting over", rec.Total, total)
		found = false
	}
	if found {
		// Resume: the digest state is rebuilt from the bytes already on disk.
		f, err := os.Open(w.path)
		if err == nil {
			w.offset, err = io.Copy(w.digester.Hash(), f)
			f.Close()
		}
		if err != nil {
			log.G(ctx).WithField("ref", ref).WithError(err).Info("cannot resume ingest: starting over")
			found = false
			w.digester = alg.Digester()
			w.offset = 0
		}
	}
	if !found {
		now := time.Now()
		rec = ingestRecord{Total: total, Expected: expected, MediaType: mediaType, Link: link, StartedAt: now, UpdatedAt: now}
		if err := in.db.Update(func(tx *bolt.Tx) error { return putIngest(tx, ref, rec) }); err != nil {
			return nil, fmt.Errorf("record ingest %q: %w", ref, err)
		}
	}
	if rec.MediaType == "" {
		rec.MediaType = mediaType
	}
	w.rec = rec

	flags := os.O_WRONLY | os.O_CREATE
	if !found {
		flags |= os.O_TRUNC
	}
	fp, err := os.OpenFile(w.path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open ingest %q: %w", ref, err)
	}
	if _, err := fp.Seek(w.offset, io.SeekStart); err != nil {
		fp.Close()
		return nil, fmt.Errorf("seek ingest %q: %w", ref, err)
	}
	w.fp = fp
	return w, nil
}

// linkIfCached reports whether dgst is cached and, if it is and link is not "", links it to
// that repository in the same transaction.
func (in *ingests) linkIfCached(dgst digest.Digest, link string) (bool, error) {
	var cached bool
	check := func(tx *bolt.Tx) error {
		_, ok, err := getBlob(tx, dgst)
		if err != nil || !ok {
			return err
		}
		cached = true
		if link == "" {
			return nil
		}
		return putLink(tx, link, dgst, time.Now())
	}
	if link == "" {
		return cached, in.db.View(check)
	}
	return cached, in.db.Update(check)
}

// release forgets the writer's claim on its ref. It is idempotent.
func (in *ingests) release(w *writer) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if cur, ok := in.active[w.ref]; !ok || cur != w {
		return
	}
	delete(in.active, w.ref)
	if w.expected != "" {
		if in.writing[w.expected]--; in.writing[w.expected] <= 0 {
			delete(in.writing, w.expected)
		}
	}
}

// commit moves verified ingest bytes into blobs/ and indexes them, in one index
// transaction so two writers of the same content cannot both add it. With a link, the same
// transaction links the blob to that repository, whether it was added now or cached already.
func (in *ingests) commit(ctx context.Context, ref, link, ingest string, dgst digest.Digest, size int64, mediaType string, labels map[string]string) error {
	target, err := in.files.blobPath(dgst)
	if err != nil {
		return err
	}
	var exists bool
	err = in.db.Update(func(tx *bolt.Tx) error {
		now := time.Now()
		if link != "" {
			if err := putLink(tx, link, dgst, now); err != nil {
				return err
			}
		}
		if _, ok, err := getBlob(tx, dgst); err != nil || ok {
			exists = ok
			if ok {
				err = tx.Bucket(bucketIngests).Delete([]byte(ref))
			}
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
			return err
		}
		if err := os.Rename(ingest, target); err != nil {
			return fmt.Errorf("move ingest into place: %w", err)
		}
		if err := syncDir(filepath.Dir(target)); err != nil {
			return err
		}
		if err := putBlob(tx, dgst, blobRecord{
			Size: size, MediaType: mediaType, CreatedAt: now, UpdatedAt: now, AccessedAt: now,
			Labels: copyLabels(labels),
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketIngests).Delete([]byte(ref))
	})
	if err != nil {
		return fmt.Errorf("commit blob %s: %w", dgst, noSpace(err))
	}
	if exists {
		if err := os.Remove(ingest); err != nil && !os.IsNotExist(err) {
			log.G(ctx).WithError(err).WithField("ref", ref).Warn("cannot remove ingest of content already cached")
		}
		return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrAlreadyExists)
	}
	in.space.add(size)
	return nil
}

// current is the open Writer of ref, or nil.
func (in *ingests) current(ref string) *writer {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.active[ref]
}

// isWriting reports whether a Writer expecting dgst is open.
func (in *ingests) isWriting(dgst digest.Digest) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.writing[dgst] > 0
}

// expected lists the digests open Writers expect.
func (in *ingests) expected() []digest.Digest {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Collect(maps.Keys(in.writing))
}

// status is Store.Status.
func (in *ingests) status(ref string) (content.Status, error) {
	if w := in.current(ref); w != nil {
		return w.Status()
	}
	var st content.Status
	err := in.db.View(func(tx *bolt.Tx) error {
		rec, ok, err := getIngest(tx, ref)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
		}
		st = in.statusOf(ref, rec)
		return nil
	})
	return st, err
}

func (in *ingests) statusOf(ref string, rec ingestRecord) content.Status {
	st := content.Status{Ref: ref, Total: rec.Total, Expected: rec.Expected, StartedAt: rec.StartedAt, UpdatedAt: rec.UpdatedAt}
	if fi, err := os.Stat(in.files.ingestPath(ref)); err == nil {
		st.Offset = fi.Size()
	}
	return st
}

// list is Store.ListStatuses.
func (in *ingests) list(fs ...string) ([]content.Status, error) {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("status filter: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []content.Status
	err = in.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIngests).ForEach(func(k, v []byte) error {
			var rec ingestRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("index entry of ingest %q: %w", k, err)
			}
			ref := string(k)
			var st content.Status
			if w := in.current(ref); w != nil {
				st, _ = w.Status()
			} else {
				st = in.statusOf(ref, rec)
			}
			if filter.Match(adaptStatus(st)) {
				out = append(out, st)
			}
			return nil
		})
	})
	return out, err
}

func adaptStatus(st content.Status) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 0 {
			return "", false
		}
		switch fieldpath[0] {
		case "ref":
			return st.Ref, true
		case "expected":
			return st.Expected.String(), st.Expected != ""
		}
		return "", false
	})
}

// abort is Store.Abort.
func (in *ingests) abort(ref string) error {
	var found bool
	rmErr := os.Remove(in.files.ingestPath(ref))
	if rmErr == nil {
		found = true
	} else if !os.IsNotExist(rmErr) {
		return fmt.Errorf("abort ingest %q: %w", ref, rmErr)
	}
	err := in.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIngests)
		if b.Get([]byte(ref)) == nil {
			return nil
		}
		found = true
		return b.Delete([]byte(ref))
	})
	if err != nil {
		return fmt.Errorf("abort ingest %q: %w", ref, noSpace(err))
	}
	if !found {
		return fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
	}
	return nil
}

// openFile is Store.OpenIngest.
func (in *ingests) openFile(ref string) (*os.File, error) {
	f, err := os.Open(in.files.ingestPath(ref))
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
	}
	return f, err
}
