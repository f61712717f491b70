package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// ingestRecord is the index entry of one write in progress. Its bytes are in ingestPath(ref).
type ingestRecord struct {
	Total     int64         `json:"total,omitempty"`
	Expected  digest.Digest `json:"expected,omitempty"`
	MediaType string        `json:"mediaType,omitempty"`
	// Link is the repository the blob is linked to at commit (see LinkingTo). With Expected, it
	// tells recovery what a commit cut short by a crash was for (see recover).
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
	return s.writer(ctx, "", opts...)
}

// LinkingTo returns an Ingester whose writes link their blob to repository (as Link does) in the
// same index transaction that caches it, so that no crash can leave the blob cached but not
// linked, where a registry mirror would not serve it. Its Writer behaves as Store.Writer, except
// that when the expected blob is already cached it links it before returning ErrAlreadyExists;
// a commit that finds the content cached links it too.
func (s *Store) LinkingTo(repository string) content.Ingester {
	return linkingIngester{s: s, repository: repository}
}

type linkingIngester struct {
	s          *Store
	repository string
}

func (l linkingIngester) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	if err := validRefName(l.repository); err != nil {
		return nil, err
	}
	return l.s.writer(ctx, l.repository, opts...)
}

// writer opens a Writer whose commit links the blob to link, unless link is "".
func (s *Store) writer(ctx context.Context, link string, opts ...content.WriterOpt) (content.Writer, error) {
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

	s.mu.Lock()
	if _, busy := s.activeRefs[ref]; busy {
		s.mu.Unlock()
		return nil, fmt.Errorf("ingest %q is being written: %w", ref, errdefs.ErrUnavailable)
	}
	s.activeRefs[ref] = nil
	s.mu.Unlock()

	w, err := s.openWriter(ctx, ref, link, wo.Desc.Size, expected, wo.Desc.MediaType)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(s.activeRefs, ref)
		return nil, err
	}
	s.activeRefs[ref] = w
	if expected != "" {
		s.writing[expected]++
	}
	return w, nil
}

func (s *Store) openWriter(ctx context.Context, ref, link string, total int64, expected digest.Digest, mediaType string) (*writer, error) {
	if expected != "" {
		cached, err := s.linkIfCached(expected, link)
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
	w := &writer{s: s, ref: ref, link: link, path: s.files.ingestPath(ref), expected: expected, digester: alg.Digester()}

	var rec ingestRecord
	var found bool
	if err := s.db.View(func(tx *bolt.Tx) (err error) {
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
		if err := s.db.Update(func(tx *bolt.Tx) error { return putIngest(tx, ref, rec) }); err != nil {
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
func (s *Store) linkIfCached(dgst digest.Digest, link string) (bool, error) {
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
		return cached, s.db.View(check)
	}
	return cached, s.db.Update(check)
}

// release forgets the writer's claim on its ref. It is idempotent.
func (s *Store) release(w *writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.activeRefs[w.ref]; !ok || cur != w {
		return
	}
	delete(s.activeRefs, w.ref)
	if w.expected != "" {
		if s.writing[w.expected]--; s.writing[w.expected] <= 0 {
			delete(s.writing, w.expected)
		}
	}
}

// writer is one open write transaction. It is not safe for concurrent use.
type writer struct {
	s        *Store
	ref      string
	link     string // the repository the blob is linked to at commit, if any
	path     string
	expected digest.Digest
	fp       *os.File
	offset   int64
	digester digest.Digester
	rec      ingestRecord
	broken   error // set when the digest state no longer matches the file
}

var _ content.Writer = (*writer)(nil)

// parallelHashMin is the write size from which hashing runs beside the file write rather than
// after it: sha256 and the page-cache copy take similar time, so overlapping them nearly halves
// the cost of a large write.
const parallelHashMin = 64 << 10

func (w *writer) Write(p []byte) (n int, err error) {
	if w.fp == nil {
		return 0, fmt.Errorf("write to closed ingest %q: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	if w.broken != nil {
		return 0, w.broken
	}
	defer func() { err = noSpace(err) }()
	if len(p) < parallelHashMin {
		n, err = w.fp.Write(p)
		w.digester.Hash().Write(p[:n])
	} else {
		hashed := make(chan struct{})
		go func() {
			w.digester.Hash().Write(p)
			close(hashed)
		}()
		n, err = w.fp.Write(p)
		<-hashed
		if n < len(p) {
			// The hash has seen bytes the file has not. A Writer reopened with the same ref
			// rebuilds the state from the file and resumes.
			w.broken = fmt.Errorf("ingest %q: short write, reopen the writer to resume: %w", w.ref, noSpace(err))
		}
	}
	w.offset += int64(n)
	w.rec.UpdatedAt = time.Now()
	return n, err
}

// Digest is the digest of the bytes written so far.
func (w *writer) Digest() digest.Digest { return w.digester.Digest() }

func (w *writer) Status() (content.Status, error) {
	return content.Status{
		Ref:       w.ref,
		Offset:    w.offset,
		Total:     w.rec.Total,
		Expected:  w.rec.Expected,
		StartedAt: w.rec.StartedAt,
		UpdatedAt: w.rec.UpdatedAt,
	}, nil
}

// Truncate discards what was written. Only a size of 0 is supported.
func (w *writer) Truncate(size int64) error {
	if size != 0 {
		return fmt.Errorf("truncate ingest to %d: only 0 is supported: %w", size, errdefs.ErrInvalidArgument)
	}
	if w.fp == nil {
		return fmt.Errorf("truncate closed ingest %q: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	if err := w.fp.Truncate(0); err != nil {
		return err
	}
	if _, err := w.fp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	w.offset = 0
	w.broken = nil
	w.digester.Hash().Reset()
	w.rec.UpdatedAt = time.Now()
	return nil
}

// Close keeps the write for a later Writer with the same ref to resume.
func (w *writer) Close() error {
	if w.fp == nil {
		return nil
	}
	defer w.s.release(w)
	err := w.fp.Close()
	w.fp = nil
	if uerr := w.s.db.Update(func(tx *bolt.Tx) error {
		if _, ok, _ := getIngest(tx, w.ref); !ok {
			return nil // aborted meanwhile
		}
		return putIngest(tx, w.ref, w.rec)
	}); err == nil {
		err = uerr
	}
	return err
}

// Commit verifies the written bytes against size and expected (when given), makes them durable
// and moves them into the cache under their digest. A mismatch fails with ErrFailedPrecondition
// and keeps the ingest, so it can be resumed or aborted; nothing is added to blobs/. If the
// content is already cached, the ingest is dropped and ErrAlreadyExists returned. The writer
// is closed either way.
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	defer w.s.release(w)
	var base content.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return err
		}
	}
	fp := w.fp
	if fp == nil {
		return fmt.Errorf("commit of closed ingest %q: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	w.fp = nil
	if w.broken != nil {
		fp.Close()
		return w.broken
	}
	err := fp.Sync()
	if cerr := fp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("flush ingest %q: %w", w.ref, noSpace(err))
	}
	fi, err := os.Stat(w.path)
	if err != nil {
		return fmt.Errorf("ingest %q: %w", w.ref, err)
	}
	if size > 0 && size != fi.Size() {
		return fmt.Errorf("ingest %q has %d bytes, expected %d: %w", w.ref, fi.Size(), size, errdefs.ErrFailedPrecondition)
	}
	dgst := w.digester.Digest()
	if expected != "" && expected.Algorithm() != dgst.Algorithm() {
		if !expected.Algorithm().Available() {
			return fmt.Errorf("unsupported digest algorithm %q: %w", expected.Algorithm(), errdefs.ErrInvalidArgument)
		}
		if dgst, err = digestFile(w.path, expected.Algorithm()); err != nil {
			return fmt.Errorf("rehash ingest %q: %w", w.ref, err)
		}
	}
	if expected != "" && expected != dgst {
		return fmt.Errorf("ingest %q has digest %s, expected %s: %w", w.ref, dgst, expected, errdefs.ErrFailedPrecondition)
	}
	if w.link != "" && (w.rec.Link != w.link || w.rec.Expected != dgst) {
		// The ingest's index entry says what the commit is for before the bytes move into
		// blobs/, so that recovery can finish a commit a crash cuts short (a resumed write, or
		// one that named no digest, did not say so when it began).
		w.rec.Link, w.rec.Expected = w.link, dgst
		if err := w.s.db.Update(func(tx *bolt.Tx) error { return putIngest(tx, w.ref, w.rec) }); err != nil {
			return fmt.Errorf("record ingest %q: %w", w.ref, noSpace(err))
		}
	}
	return w.s.commitIngest(ctx, w.ref, w.link, w.path, dgst, fi.Size(), w.rec.MediaType, base.Labels)
}

// commitIngest moves verified ingest bytes into blobs/ and indexes them, in one index
// transaction so two writers of the same content cannot both add it. With a link, the same
// transaction links the blob to that repository, whether it was added now or cached already.
func (s *Store) commitIngest(ctx context.Context, ref, link, ingest string, dgst digest.Digest, size int64, mediaType string, labels map[string]string) error {
	target, err := s.files.blobPath(dgst)
	if err != nil {
		return err
	}
	var exists bool
	err = s.db.Update(func(tx *bolt.Tx) error {
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
	s.space.add(size)
	return nil
}

func digestFile(path string, alg digest.Algorithm) (digest.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return alg.FromReader(f)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Status reports the write named ref. If there is none, ErrNotFound is returned.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	s.mu.Lock()
	w := s.activeRefs[ref]
	s.mu.Unlock()
	if w != nil {
		return w.Status()
	}
	var st content.Status
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, ok, err := getIngest(tx, ref)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
		}
		st = s.statusOf(ref, rec)
		return nil
	})
	return st, err
}

func (s *Store) statusOf(ref string, rec ingestRecord) content.Status {
	st := content.Status{Ref: ref, Total: rec.Total, Expected: rec.Expected, StartedAt: rec.StartedAt, UpdatedAt: rec.UpdatedAt}
	if fi, err := os.Stat(s.files.ingestPath(ref)); err == nil {
		st.Offset = fi.Size()
	}
	return st
}

// ListStatuses lists writes in progress matching any of the filters (field "ref").
func (s *Store) ListStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("status filter: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []content.Status
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIngests).ForEach(func(k, v []byte) error {
			var rec ingestRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("index entry of ingest %q: %w", k, err)
			}
			ref := string(k)
			s.mu.Lock()
			w := s.activeRefs[ref]
			s.mu.Unlock()
			var st content.Status
			if w != nil {
				st, _ = w.Status()
			} else {
				st = s.statusOf(ref, rec)
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

// Abort drops the write named ref and its bytes. If there is none, ErrNotFound is returned.
//
// The bytes go first: a write that failed because the filesystem is full gives its space back
// even when the index, on the same filesystem, cannot take the change. An index entry left
// without its file is dropped by recovery at the next Open, and a Writer reopening the ref starts
// over.
func (s *Store) Abort(ctx context.Context, ref string) error {
	var found bool
	rmErr := os.Remove(s.files.ingestPath(ref))
	if rmErr == nil {
		found = true
	} else if !os.IsNotExist(rmErr) {
		return fmt.Errorf("abort ingest %q: %w", ref, rmErr)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
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

// noSpace classifies a write that failed because the cache's filesystem is full (or the user's
// quota is used up) as ErrResourceExhausted, with a sentence saying so; other errors pass
// unchanged.
func noSpace(err error) error {
	if err == nil || errdefs.IsResourceExhausted(err) {
		return err
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("the cache's filesystem is full: %w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}

// OpenIngest opens the bytes written so far under ref for reading, so that a write in progress
// can be streamed to readers while it is being written. The file stays readable after the
// ingest is committed or aborted. If there is no such ingest, ErrNotFound is returned.
func (s *Store) OpenIngest(ref string) (*os.File, error) {
	f, err := os.Open(s.files.ingestPath(ref))
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
	}
	return f, err
}
