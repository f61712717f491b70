// Package resolver turns image references into descriptors and bytes: from the cache first,
// from the upstream registries when they are healthy and quick, and from the cache again,
// stale, when they are not. It owns the upstream clients, per-endpoint health, and the
// single-flight streaming fills that put upstream bytes into the cache while they are served.
package resolver

import (
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CacheStatus says where an answer came from. The mirror sends it as X-Lifeboat-Cache.
type CacheStatus string

const (
	// Hit: served from the cache without asking upstream (digests, trusted tags).
	Hit CacheStatus = "hit"
	// Miss: not cached; fetched from upstream (and cached while served).
	Miss CacheStatus = "miss"
	// Stale: a cached tag served because the upstream failed or was too slow to revalidate it.
	Stale CacheStatus = "stale"
	// Revalidated: a tag confirmed (or updated) by upstream just now.
	Revalidated CacheStatus = "revalidated"
)

// Manifest is a resolved manifest or index.
type Manifest struct {
	// Descriptor has the real media type, digest and size of Body.
	Descriptor ocispec.Descriptor
	// Body is the manifest's bytes, exactly as the registry served them.
	Body []byte
	// Status says where the answer came from.
	Status CacheStatus
}

// Blob is an open blob: cached, or being filled from upstream while it is read. Close it.
type Blob struct {
	// Descriptor has the digest and size (the media type may be empty).
	Descriptor ocispec.Descriptor
	// Status is Hit, Miss or Peer.
	Status CacheStatus

	open  func(off, length int64) (io.ReadCloser, error)
	close func() error
}

// NewBlob returns an open blob of desc and status whose Reader is open and whose Close is
// close (nil: nothing to release), for a mirror.Backend other than the Resolver. open keeps
// Reader's contract: the bytes [off, off+length), or an error before the last byte.
func NewBlob(desc ocispec.Descriptor, status CacheStatus, open func(off, length int64) (io.ReadCloser, error), close func() error) *Blob {
	return &Blob{Descriptor: desc, Status: status, open: open, close: close}
}

// Reader returns the blob's bytes [off, off+length). For a fill in progress it streams the bytes
// as they arrive from upstream; if the upstream breaks or the content fails verification, the
// reader returns an error before its last byte, and the caller must not present what it read as
// complete (the mirror aborts the connection). The reader of a cached blob is a cache.FileBacked,
// whose file is the whole blob; that of a fill in progress is an io.WriterTo that sends each
// stretch from the ingest file.
func (b *Blob) Reader(off, length int64) (io.ReadCloser, error) { return b.open(off, length) }

// Close releases the blob. A fill in progress goes on without it.
func (b *Blob) Close() error {
	if b.close == nil {
		return nil
	}
	return b.close()
}
