package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// writer is one open write transaction. It is not safe for concurrent use.
type writer struct {
	ingests  *ingests
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
	defer w.ingests.release(w)
	err := w.fp.Close()
	w.fp = nil
	if uerr := w.ingests.db.Update(func(tx *bolt.Tx) error {
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
	defer w.ingests.release(w)
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
		if err := w.ingests.db.Update(func(tx *bolt.Tx) error { return putIngest(tx, w.ref, w.rec) }); err != nil {
			return fmt.Errorf("record ingest %q: %w", w.ref, noSpace(err))
		}
	}
	return w.ingests.commit(ctx, w.ref, w.link, w.path, dgst, fi.Size(), w.rec.MediaType, base.Labels)
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
