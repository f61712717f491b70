// Package cache is lifeboat's persistent, content-addressed blob store: verified blob files on
// disk indexed by bbolt, with image references, repository links, pins, resumable ingests and an
// image-aware size budget. It implements containerd's content.Store and knows nothing of HTTP or
// registries; the resolver and the containerd plugins are built on it.
package cache

import (
	"context"
	_ "crypto/sha256" // digest algorithms the cache verifies with
	_ "crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var _ content.Store = (*Store)(nil)

// Defaults for Options fields left zero.
const (
	DefaultHighWatermark       = 0.95
	DefaultLowWatermark        = 0.85
	DefaultAccessFlushInterval = 10 * time.Second
	// DefaultBudgetShare is the share of the root filesystem's free space taken as the budget
	// at first start when no size is configured.
	DefaultBudgetShare = 0.80
)

// Options tune a Store. The zero value is usable.
type Options struct {
	// MaxSize is the size budget in bytes for blob content. Zero keeps the budget fixed at first
	// start: DefaultBudgetShare of the free space of the root's filesystem at that time.
	MaxSize int64
	// HighWatermark is the share of MaxSize past which the evictor starts removing images.
	HighWatermark float64
	// LowWatermark is the share of MaxSize the evictor brings usage down to.
	LowWatermark float64
	// AccessFlushInterval is how often last-access times, kept in memory on reads, are written
	// to the index in one transaction.
	AccessFlushInterval time.Duration
	// OpenTimeout bounds the wait for the index lock held by another process.
	OpenTimeout time.Duration
}

func (o *Options) setDefaults() {
	if o.HighWatermark <= 0 || o.HighWatermark > 1 {
		o.HighWatermark = DefaultHighWatermark
	}
	if o.LowWatermark <= 0 || o.LowWatermark >= o.HighWatermark {
		o.LowWatermark = min(DefaultLowWatermark, o.HighWatermark*0.9)
	}
	if o.AccessFlushInterval <= 0 {
		o.AccessFlushInterval = DefaultAccessFlushInterval
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = time.Second
	}
}

// Store is the cache. All methods are safe for concurrent use.
//
// Store itself answers for cached blobs (reads, labels, removal) and for refs, links and pins,
// from the index. The rest it hands to parts that keep their own state: ingests (writes in
// progress), space (the budget), uses (open readers, access times, blobs being evicted), the
// evictor, the verifier and, at Open, recovery.
type Store struct {
	files     layout
	db        *bolt.DB
	recovered RecoveryReport // what Open repaired

	space   *space
	uses    *uses
	ingests *ingests
	remove  remover
	evict   *evictor
	verify  *verifier

	stop      chan struct{}  // closed by Close
	wg        sync.WaitGroup // background goroutines
	closeOnce sync.Once
	closeErr  error
}

// blobRecord is the index entry of one blob.
type blobRecord struct {
	Size       int64             `json:"size"`
	MediaType  string            `json:"mediaType,omitempty"`
	CreatedAt  time.Time         `json:"createdAt"`
	UpdatedAt  time.Time         `json:"updatedAt"`
	AccessedAt time.Time         `json:"accessedAt"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// Open opens (creating if needed) the cache rooted at root, repairs what a crash may have left
// (see recovery.run), and starts the background evictor and access-time flusher. The root is
// locked for the lifetime of the Store: a second Open of the same root, from this or another
// process, fails with ErrUnavailable after Options.OpenTimeout.
func Open(ctx context.Context, root string, opts Options) (*Store, error) {
	opts.setDefaults()
	files := layout{root: root}
	if err := files.create(); err != nil {
		return nil, err
	}
	db, err := bolt.Open(files.indexPath(), 0o600, &bolt.Options{
		Timeout:        opts.OpenTimeout,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("cache root %s is in use by another lifeboat process: %w", root, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("open cache index: %w", err)
	}
	s, err := open(ctx, db, files, opts)
	if err != nil {
		db.Close()
		return nil, err
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.evict.loop(ctx, s.stop)
	}()
	go func() {
		defer s.wg.Done()
		s.uses.flushLoop(ctx, opts.AccessFlushInterval, s.stop)
	}()
	return s, nil
}

// open brings the index to the current schema, repairs what a crash left, and builds the
// Store's parts on it.
func open(ctx context.Context, db *bolt.DB, files layout, opts Options) (*Store, error) {
	if err := migrate(db); err != nil {
		return nil, err
	}
	recovered, err := recovery{db: db, files: files}.run(ctx)
	if err != nil {
		return nil, fmt.Errorf("cache recovery: %w", err)
	}
	sp, err := loadSpace(db, files.root, opts)
	if err != nil {
		return nil, err
	}
	uses := newUses(db)
	ingests := newIngests(db, files, sp)
	remove := remover{db: db, files: files, space: sp, uses: uses}
	return &Store{
		files:     files,
		db:        db,
		recovered: recovered,
		space:     sp,
		uses:      uses,
		ingests:   ingests,
		remove:    remove,
		evict:     &evictor{db: db, files: files, space: sp, uses: uses, ingests: ingests, remove: remove},
		verify:    &verifier{db: db, files: files, remove: remove},
		stop:      make(chan struct{}),
	}, nil
}

// Close stops the background work, writes pending access times and closes the index.
// Open readers and writers must be closed first; their files stay consistent either way.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		s.closeErr = errors.Join(s.uses.flush(), s.db.Close())
	})
	return s.closeErr
}

// Root is the directory the cache lives in.
func (s *Store) Root() string { return s.files.root }

func getBlob(tx *bolt.Tx, dgst digest.Digest) (blobRecord, bool, error) {
	var rec blobRecord
	v := tx.Bucket(bucketBlobs).Get([]byte(dgst))
	if v == nil {
		return rec, false, nil
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, false, fmt.Errorf("index entry of blob %s: %w", dgst, err)
	}
	return rec, true, nil
}

func putBlob(tx *bolt.Tx, dgst digest.Digest, rec blobRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketBlobs).Put([]byte(dgst), v)
}

func (rec blobRecord) info(dgst digest.Digest) content.Info {
	return content.Info{
		Digest:    dgst,
		Size:      rec.Size,
		CreatedAt: rec.CreatedAt,
		UpdatedAt: rec.UpdatedAt,
		Labels:    rec.Labels,
	}
}

// Info returns the blob's metadata. If the blob is not cached, ErrNotFound is returned.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	if err := dgst.Validate(); err != nil {
		return content.Info{}, fmt.Errorf("invalid digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	var info content.Info
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, ok, err := getBlob(tx, dgst)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
		}
		info = rec.info(dgst)
		return nil
	})
	return info, err
}

// MediaType returns the media type the blob was written with, or "" if none was given.
// If the blob is not cached, ErrNotFound is returned.
func (s *Store) MediaType(ctx context.Context, dgst digest.Digest) (string, error) {
	var mt string
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, ok, err := getBlob(tx, dgst)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
		}
		mt = rec.MediaType
		return nil
	})
	return mt, err
}

// Describe returns the blob's size and media type ("" if none was given) from the index,
// without opening the blob: what a HEAD needs. It counts as a use of the blob (for eviction),
// as a read does. If the blob is not cached, or is being evicted, ErrNotFound is returned.
func (s *Store) Describe(ctx context.Context, dgst digest.Digest) (ocispec.Descriptor, error) {
	if err := dgst.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("invalid digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	var rec blobRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		r, ok, err := getBlob(tx, dgst)
		if err == nil && !ok {
			err = fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
		}
		rec = r
		return err
	})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if !s.uses.touch(dgst) {
		return ocispec.Descriptor{}, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return ocispec.Descriptor{MediaType: rec.MediaType, Digest: dgst, Size: rec.Size}, nil
}

// Update changes the blob's labels: all of them when fieldpaths is empty or holds "labels",
// else the ones named "labels.<key>" (a key missing from info.Labels is removed). Other field
// paths give ErrInvalidArgument; a missing blob gives ErrNotFound.
func (s *Store) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	var out content.Info
	err := s.db.Update(func(tx *bolt.Tx) error {
		rec, ok, err := getBlob(tx, info.Digest)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("blob %s: %w", info.Digest, errdefs.ErrNotFound)
		}
		if len(fieldpaths) == 0 {
			fieldpaths = []string{"labels"}
		}
		for _, path := range fieldpaths {
			switch {
			case path == "labels":
				rec.Labels = copyLabels(info.Labels)
			case strings.HasPrefix(path, "labels."):
				key := strings.TrimPrefix(path, "labels.")
				if v, ok := info.Labels[key]; ok {
					if rec.Labels == nil {
						rec.Labels = map[string]string{}
					}
					rec.Labels[key] = v
				} else {
					delete(rec.Labels, key)
				}
			default:
				return fmt.Errorf("cannot update field %q of blob %s: %w", path, info.Digest, errdefs.ErrInvalidArgument)
			}
		}
		if len(rec.Labels) == 0 {
			rec.Labels = nil
		}
		rec.UpdatedAt = time.Now()
		out = rec.info(info.Digest)
		return putBlob(tx, info.Digest, rec)
	})
	return out, err
}

func copyLabels(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Walk calls fn for every cached blob matching any of the filters (containerd filter syntax on
// the fields digest and labels). fn runs outside any index transaction and may call the Store.
func (s *Store) Walk(ctx context.Context, fn content.WalkFunc, fs ...string) error {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return fmt.Errorf("walk filter: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	var infos []content.Info
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			var rec blobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("index entry of blob %s: %w", k, err)
			}
			info := rec.info(digest.Digest(k))
			if filter.Match(content.AdaptInfo(info)) {
				infos = append(infos, info)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the blob. If it is not cached, ErrNotFound is returned. Readers already open
// keep reading the removed bytes until they close.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	removed, err := s.remove.blobs(ctx, []digest.Digest{dgst})
	if err != nil {
		return err
	}
	if removed == 0 {
		return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return nil
}

// ReaderAt opens the blob for reading. If it is not cached, ErrNotFound is returned. The blob
// cannot be evicted while the reader is open.
func (s *Store) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	p, err := s.files.blobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	if !s.uses.open(desc.Digest) {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}

	f, err := os.Open(p)
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			return &reader{f: f, size: fi.Size(), release: func() { s.uses.close(desc.Digest) }}, nil
		}
		f.Close()
	}
	s.uses.close(desc.Digest)
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return nil, fmt.Errorf("open blob %s: %w", desc.Digest, err)
}

// FileBacked is a blob reader whose bytes are an open file's, so that they can be sent with
// sendfile: io.Copy from an *os.File (or an io.LimitedReader of one) to net/http's
// ResponseWriter hands the copy to the kernel instead of passing every byte through user space.
// It is an optional capability, found by type assertion. The readers of Store.ReaderAt offer
// it, and so do the resolver's readers of cached blobs; the mirror sends blobs with it.
type FileBacked interface {
	// File returns the blob's file: byte i of the blob is at offset i. The file belongs to the
	// reader and is open until the reader is closed. The caller may Seek and Read it, one
	// caller at a time (the offset is shared), and must not close it. A reader that has no file
	// after all returns nil.
	File() *os.File
}

var _ FileBacked = (*reader)(nil)

// reader is a content.ReaderAt over a blob file that releases its eviction hold on Close.
type reader struct {
	f       *os.File
	size    int64
	once    sync.Once
	release func()
}

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.f.ReadAt(p, off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

func (r *reader) Size() int64 { return r.size }

// File returns the blob's file (see FileBacked).
func (r *reader) File() *os.File { return r.f }

func (r *reader) Close() error {
	err := r.f.Close()
	r.once.Do(r.release)
	return err
}
