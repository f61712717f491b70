package cache

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestWriteToFullDiskIsResourceExhausted writes into an ingest whose file is /dev/full, where
// every write fails with ENOSPC as on a full filesystem: the error is ErrResourceExhausted and
// says the filesystem is full, for writes hashed inline and beside the write alike, and Abort
// then removes the ingest.
func TestWriteToFullDiskIsResourceExhausted(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skipf("no /dev/full here: %v", err)
	}
	for _, tc := range []struct {
		name string
		size int
	}{
		{"small write", 4 << 10},
		{"large write", 2 * parallelHashMin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, Options{MaxSize: 1 << 30})
			data := bytes.Repeat([]byte{'x'}, tc.size)
			ref := "full-" + tc.name
			if err := os.Symlink("/dev/full", s.files.ingestPath(ref)); err != nil {
				t.Fatal(err)
			}
			w, err := s.Writer(t.Context(), content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}))
			if err != nil {
				t.Fatal(err)
			}
			_, err = w.Write(data)
			t.Logf("write of %d bytes: %v", len(data), err)
			if !errdefs.IsResourceExhausted(err) || !bytes.Contains([]byte(err.Error()), []byte("filesystem is full")) {
				t.Errorf("write to a full disk: %v, want ErrResourceExhausted saying the filesystem is full", err)
			}
			w.Close()
			if err := s.Abort(t.Context(), ref); err != nil {
				t.Fatalf("abort: %v", err)
			}
			if _, err := os.Lstat(s.files.ingestPath(ref)); !os.IsNotExist(err) {
				t.Errorf("the ingest file is still there after Abort (%v)", err)
			}
			if sts, err := s.ListStatuses(t.Context()); err != nil || len(sts) != 0 {
				t.Errorf("ingests after Abort: %+v %v", sts, err)
			}
			if err := s.Abort(t.Context(), ref); !errdefs.IsNotFound(err) {
				t.Errorf("second Abort: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestLinkingWriterLinksInItsCommit writes through LinkingTo and then stops, as a process that
// crashes the moment a commit returns would: after a reopen the blob is linked to the
// repository, whether the commit cached it, found it cached, or the Writer found it cached.
// A commit that fails verification links nothing.
func TestLinkingWriterLinksInItsCommit(t *testing.T) {
	const repo = "registry.test/app"
	data := randomBytes(70, 4<<10)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data))}
	for _, tc := range []struct {
		name string
		// write caches data through ing and returns the error a caller would see.
		write func(t *testing.T, s *Store, ing content.Ingester) error
		want  error // nil, or the error class write returns
	}{
		{name: "commit caches the blob", write: func(t *testing.T, s *Store, ing content.Ingester) error {
			return content.WriteBlob(t.Context(), ing, "m", bytes.NewReader(data), desc)
		}},
		{name: "writer finds the blob cached", want: errdefs.ErrAlreadyExists, write: func(t *testing.T, s *Store, ing content.Ingester) error {
			writeBlob(t, s, desc.MediaType, data)
			_, err := ing.Writer(t.Context(), content.WithRef("m"), content.WithDescriptor(desc))
			return err
		}},
		{name: "commit finds the blob cached", want: errdefs.ErrAlreadyExists, write: func(t *testing.T, s *Store, ing content.Ingester) error {
			w, err := ing.Writer(t.Context(), content.WithRef("m")) // no expected digest: nothing to check at open
			if err != nil {
				return err
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
			writeBlob(t, s, desc.MediaType, data)
			return w.Commit(t.Context(), desc.Size, desc.Digest)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			s, err := Open(t.Context(), root, Options{MaxSize: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.write(t, s, s.LinkingTo(repo)); !errors.Is(err, tc.want) {
				t.Fatalf("write: %v, want %v", err, tc.want)
			}
			checkConsistent(t, s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = newStoreAt(t, root)
			if ok, err := s.Linked(t.Context(), repo, desc.Digest); err != nil || !ok {
				t.Errorf("after a stop right after the write: linked=%v %v, want the blob linked to %s", ok, err, repo)
			}
			if ok, _ := s.Linked(t.Context(), "registry.test/other", desc.Digest); ok {
				t.Error("the blob is linked to a repository it was not written for")
			}
		})
	}

	t.Run("failed commit", func(t *testing.T) {
		s := newStore(t, Options{MaxSize: 1 << 30})
		w, err := s.LinkingTo(repo).Writer(t.Context(), content.WithRef("m"), content.WithDescriptor(desc))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data[1:])
		if err := w.Commit(t.Context(), desc.Size, desc.Digest); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("commit of wrong bytes: %v, want ErrFailedPrecondition", err)
		}
		if ok, _ := s.Linked(t.Context(), repo, desc.Digest); ok {
			t.Error("a commit that failed linked the blob")
		}
	})
	t.Run("invalid repository", func(t *testing.T) {
		s := newStore(t, Options{MaxSize: 1 << 30})
		if _, err := s.LinkingTo("").Writer(t.Context(), content.WithRef("m")); !errdefs.IsInvalidArgument(err) {
			t.Errorf("writer linking to no repository: %v, want ErrInvalidArgument", err)
		}
	})
}
