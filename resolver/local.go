package resolver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// Local is this node's cache as the resolver serves it: a manifest or a blob counts as cached
// for a repository only when it is linked to it (it was fetched under it), so that a client
// never obtains through one repository what it could only have pulled through another. It
// never asks anyone anything: it is what a drill reads and what peers are served.
type Local struct{ store *cache.Store }

// Local returns the resolver's view of its cache.
func (r *Resolver) Local() Local { return r.local }

// Read says how Local.Manifest reads a manifest. The zero value reads the body and counts the
// read as a use of the manifest (for eviction).
type Read struct {
	// DescriptorOnly describes the manifest from the cache's index without reading it (unless
	// the index has no media type for it, which only a manifest cached by an older lifeboat
	// may lack: it is then sniffed from the body, as a GET does, so that HEAD and GET agree).
	DescriptorOnly bool
	// Peek reads without counting as a use, so that listing the cache does not change what
	// eviction removes first.
	Peek bool
}

// Manifest reads the manifest desc.Digest if it is cached and linked to the repository repoKey
// ("docker.io/library/alpine"); desc.MediaType is used when the cache has none for it.
// ErrNotFound when it is not; ErrFailedPrecondition for a cached manifest larger than
// oci.MaxManifestSize.
func (l Local) Manifest(ctx context.Context, repoKey string, desc ocispec.Descriptor, how Read) (Manifest, error) {
	if err := checkDigest(desc.Digest); err != nil {
		return Manifest{}, err
	}
	if linked, err := l.store.Linked(ctx, repoKey, desc.Digest); err != nil {
		return Manifest{}, err
	} else if !linked {
		return Manifest{}, fmt.Errorf("manifest %s@%s: %w", repoKey, desc.Digest, errdefs.ErrNotFound)
	}
	if how.DescriptorOnly && !how.Peek {
		d, err := l.store.Describe(ctx, desc.Digest)
		if err != nil {
			return Manifest{}, err
		}
		if d.Size > oci.MaxManifestSize {
			return Manifest{}, fmt.Errorf("manifest %s is %d bytes: %w", desc.Digest, d.Size, errdefs.ErrFailedPrecondition)
		}
		if d.MediaType != "" || desc.MediaType != "" {
			if d.MediaType == "" {
				d.MediaType = desc.MediaType
			}
			return Manifest{Descriptor: d}, nil
		}
	}
	var body []byte
	if how.Peek {
		b, err := l.store.Peek(ctx, desc.Digest, oci.MaxManifestSize)
		if err != nil {
			return Manifest{}, err
		}
		body = b
	} else {
		info, err := l.store.Info(ctx, desc.Digest)
		if err != nil {
			return Manifest{}, err
		}
		if info.Size > oci.MaxManifestSize {
			return Manifest{}, fmt.Errorf("manifest %s is %d bytes: %w", desc.Digest, info.Size, errdefs.ErrFailedPrecondition)
		}
		if body, err = content.ReadBlob(ctx, l.store, ocispec.Descriptor{Digest: desc.Digest, Size: info.Size}); err != nil {
			return Manifest{}, err
		}
	}
	mt, err := l.store.MediaType(ctx, desc.Digest)
	if err != nil {
		return Manifest{}, err
	}
	if mt == "" {
		mt = desc.MediaType
	}
	if mt == "" {
		mt = sniffMediaType(body)
	}
	return Manifest{Descriptor: ocispec.Descriptor{MediaType: mt, Digest: desc.Digest, Size: int64(len(body))}, Body: body}, nil
}

// Tag returns the cached target of the tag "registry/repository:tag" (ErrNotFound when the tag
// is not cached).
func (l Local) Tag(ctx context.Context, name string) (cache.Ref, error) {
	return l.store.GetRef(ctx, name)
}

// Tags lists the repository's cached tags, sorted.
func (l Local) Tags(ctx context.Context, registry, repository string) ([]string, error) {
	refs, err := l.store.Refs(ctx)
	if err != nil {
		return nil, err
	}
	var tags []string
	prefix := registry + "/" + repository + ":"
	for _, ref := range refs {
		if tag, ok := strings.CutPrefix(ref.Name, prefix); ok {
			tags = append(tags, tag)
		}
	}
	slices.Sort(tags)
	return tags, nil
}

// HasBlob says whether dgst is served under repoKey from the cache: linked to the repository
// and present.
func (l Local) HasBlob(ctx context.Context, repoKey string, dgst digest.Digest) (bool, error) {
	if err := checkDigest(dgst); err != nil {
		return false, err
	}
	linked, err := l.store.Linked(ctx, repoKey, dgst)
	if err != nil || !linked {
		return false, err
	}
	if _, err := l.store.Info(ctx, dgst); errdefs.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return true, nil
}

// StatBlob describes dgst if it is linked to repoKey and present (ErrNotFound otherwise).
func (l Local) StatBlob(ctx context.Context, repoKey string, dgst digest.Digest) (ocispec.Descriptor, error) {
	if ok, err := l.store.Linked(ctx, repoKey, dgst); err != nil {
		return ocispec.Descriptor{}, err
	} else if ok {
		if info, err := l.store.Info(ctx, dgst); err == nil {
			return ocispec.Descriptor{Digest: dgst, Size: info.Size}, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("blob %s@%s is not cached: %w", repoKey, dgst, errdefs.ErrNotFound)
}

// Blob opens dgst if it is linked to repoKey and present (ErrNotFound otherwise), with the
// status Hit.
func (l Local) Blob(ctx context.Context, repoKey string, dgst digest.Digest) (*Blob, error) {
	if ok, err := l.store.Linked(ctx, repoKey, dgst); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("blob %s@%s is not cached: %w", repoKey, dgst, errdefs.ErrNotFound)
	}
	return l.open(ctx, dgst, Hit)
}

// open opens a cached blob, whatever repository it is linked to.
func (l Local) open(ctx context.Context, dgst digest.Digest, status CacheStatus) (*Blob, error) {
	ra, err := l.store.ReaderAt(ctx, ocispec.Descriptor{Digest: dgst})
	if err != nil {
		return nil, err
	}
	size := ra.Size()
	return &Blob{
		Descriptor: ocispec.Descriptor{Digest: dgst, Size: size},
		Status:     status,
		open: func(off, length int64) (io.ReadCloser, error) {
			if err := checkRange(off, length, size); err != nil {
				return nil, err
			}
			return &sectionReader{SectionReader: io.NewSectionReader(ra, off, length), ra: ra}, nil
		},
		close: ra.Close,
	}, nil
}

// checkRange refuses a range [off, off+length) that is not within a blob of size bytes.
func checkRange(off, length, size int64) error {
	if off < 0 || off > size || length < 0 || off+length > size {
		return fmt.Errorf("range %d+%d of a %d-byte blob: %w", off, length, size, errdefs.ErrInvalidArgument)
	}
	return nil
}

// sectionReader reads a range of a cached blob. It offers the whole blob's file, for sendfile,
// when the cache has one (cache.FileBacked).
type sectionReader struct {
	*io.SectionReader
	ra content.ReaderAt
}

var _ cache.FileBacked = (*sectionReader)(nil)

func (s *sectionReader) Close() error { return nil }

// File returns the blob's file, or nil. It is the whole blob, not the range, and it belongs to
// the Blob: all its readers share the file's offset, so one reader at a time may use it.
func (s *sectionReader) File() *os.File {
	if fb, ok := s.ra.(cache.FileBacked); ok {
		return fb.File()
	}
	return nil
}

// sniffMediaType reads the mediaType field of a manifest, or guesses from its shape.
func sniffMediaType(body []byte) string {
	var m struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(body, &m) != nil {
		return "application/octet-stream"
	}
	switch {
	case m.MediaType != "":
		return m.MediaType
	case m.Manifests != nil:
		return ocispec.MediaTypeImageIndex
	default:
		return ocispec.MediaTypeImageManifest
	}
}
