package cache

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// newStore opens a Store on a temp root and, at cleanup, checks the store's invariants (see
// checkConsistent) before closing it.
func newStore(t *testing.T, opts Options) *Store {
	t.Helper()
	root := t.TempDir()
	s, err := Open(t.Context(), root, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkConsistent(t, s)
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// checkConsistent fails the test unless bbolt's own page check passes and every indexed blob
// has a file of the indexed size holding the bytes of its digest, and every blob file is
// indexed.
func checkConsistent(t *testing.T, s *Store) {
	t.Helper()
	if err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}); err != nil {
		t.Errorf("bbolt check: %v", err)
	}
	files, bad, err := s.files.blobFiles()
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("stray files in blobs/: %v", bad)
	}
	err = s.Walk(context.Background(), func(info content.Info) error {
		p, ok := files[info.Digest]
		if !ok {
			t.Errorf("blob %s is indexed but has no file", info.Digest)
			return nil
		}
		delete(files, info.Digest)
		got, err := digestFile(p, info.Digest.Algorithm())
		if err != nil {
			return err
		}
		if got != info.Digest {
			t.Errorf("blob file %s holds %s", info.Digest, got)
		}
		if fi, err := os.Stat(p); err != nil || fi.Size() != info.Size {
			t.Errorf("blob %s: indexed size %d, file %v %v", info.Digest, info.Size, fi, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for d := range files {
		t.Errorf("blob file %s is not indexed", d)
	}
}

func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "lifeboat", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		s, err := Open(ctx, root, Options{MaxSize: 1 << 40})
		if err != nil {
			return ctx, nil, nil, err
		}
		return ctx, s, func() error {
			checkConsistent(t, s)
			return s.Close()
		}, nil
	})
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func writeBlob(t *testing.T, s *Store, mediaType string, b []byte) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(t.Context(), s, desc.Digest.String(), bytes.NewReader(b), desc); err != nil {
		t.Fatalf("write blob: %v", err)
	}
	return desc
}

func TestResumeAcrossReopen(t *testing.T) {
	root := t.TempDir()
	ctx := t.Context()
	data := randomBytes(1, 1<<20)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(data), Size: int64(len(data))}

	s, err := Open(ctx, root, Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.Writer(ctx, content.WithRef("default/1/layer"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[:300_000]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(ctx, root, Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.LastRecovery().ResumableIngest; got != 1 {
		t.Errorf("resumable ingests after reopen = %d, want 1", got)
	}
	st, err := s.Status(ctx, "default/1/layer")
	if err != nil {
		t.Fatal(err)
	}
	if st.Offset != 300_000 || st.Total != desc.Size {
		t.Fatalf("status after reopen: offset %d total %d, want 300000 and %d", st.Offset, st.Total, desc.Size)
	}
	w, err = s.Writer(ctx, content.WithRef("default/1/layer"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Digest(); got != digest.FromBytes(data[:300_000]) {
		t.Fatalf("resumed digest state %s does not match the bytes written", got)
	}
	if _, err := w.Write(data[300_000:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest); err != nil {
		t.Fatal(err)
	}
	got, err := content.ReadBlob(ctx, s, desc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("resumed blob differs from the written bytes")
	}
	if mt, _ := s.MediaType(ctx, desc.Digest); mt != desc.MediaType {
		t.Errorf("media type %q, want %q", mt, desc.MediaType)
	}
	if sts, _ := s.ListStatuses(ctx); len(sts) != 0 {
		t.Errorf("ingests left after commit: %v", sts)
	}
	checkConsistent(t, s)
}

func TestCommitMismatchCachesNothing(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 30})
	ctx := t.Context()
	good := randomBytes(2, 4096)
	bad := append([]byte(nil), good...)
	bad[100] ^= 0xff // same length, wrong bytes: what a corrupting upstream sends
	want := digest.FromBytes(good)

	for _, tc := range []struct {
		name string
		body []byte
		size int64
	}{
		{name: "wrong bytes", body: bad, size: int64(len(good))},
		{name: "truncated", body: good[:1000], size: int64(len(good))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := s.Writer(ctx, content.WithRef(tc.name), content.WithDescriptor(ocispec.Descriptor{Digest: want, Size: tc.size}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(tc.body); err != nil {
				t.Fatal(err)
			}
			err = w.Commit(ctx, tc.size, want)
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("commit error = %v, want failed precondition", err)
			}
			if _, err := s.Info(ctx, want); !errdefs.IsNotFound(err) {
				t.Fatalf("Info after a failed commit = %v, want not found", err)
			}
			if _, err := os.Stat(filepath.Join(s.Root(), "blobs", "sha256", want.Encoded())); !os.IsNotExist(err) {
				t.Fatalf("a blob file exists after a failed commit: %v", err)
			}
			if err := s.Abort(ctx, tc.name); err != nil {
				t.Fatalf("abort: %v", err)
			}
		})
	}
}

func TestConcurrentWritersOfOneBlob(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 30})
	ctx := t.Context()
	data := randomBytes(3, 256<<10)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}

	const writers = 16
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Distinct refs, as two clients pulling the same layer would use.
			ref := "ref-" + string(rune('a'+i))
			w, err := s.Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Size: desc.Size}))
			if err != nil {
				errs <- err
				return
			}
			defer w.Close()
			for off := 0; off < len(data); off += 8192 {
				if _, err := w.Write(data[off : off+8192]); err != nil {
					errs <- err
					return
				}
			}
			errs <- w.Commit(ctx, desc.Size, desc.Digest)
		}()
	}
	// Readers race the writers: they see either nothing or the whole blob.
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				ra, err := s.ReaderAt(ctx, desc)
				if errdefs.IsNotFound(err) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				b := make([]byte, ra.Size())
				_, err = ra.ReadAt(b, 0)
				ra.Close()
				if err != nil || !bytes.Equal(b, data) {
					errs <- errors.New("reader saw a partial or wrong blob")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	var committed, exists int
	for err := range errs {
		switch {
		case err == nil:
			committed++
		case errdefs.IsAlreadyExists(err):
			exists++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if committed != 1 || exists != writers-1 {
		t.Errorf("%d commits and %d already-exists answers, want 1 and %d", committed, exists, writers-1)
	}
	if used, _ := s.Usage(); used != desc.Size {
		t.Errorf("usage %d after one blob of %d bytes: a duplicate commit was counted", used, desc.Size)
	}
	if sts, _ := s.ListStatuses(ctx); len(sts) != 0 {
		t.Errorf("ingests left behind: %d", len(sts))
	}
}

func TestSecondOpenOfRootFails(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 20, OpenTimeout: 50e6})
	_, err := Open(t.Context(), s.Root(), Options{OpenTimeout: 50e6})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("second Open of a root in use = %v, want unavailable", err)
	}
}

func TestInvalidDigestsAreRejected(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 20})
	ctx := t.Context()
	for _, d := range []digest.Digest{
		"sha256:../../../../etc/passwd",
		"sha256:abc",
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"",
	} {
		if _, err := s.ReaderAt(ctx, ocispec.Descriptor{Digest: d}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ReaderAt(%q) = %v, want invalid argument", d, err)
		}
		if _, err := s.Info(ctx, d); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Info(%q) = %v, want invalid argument", d, err)
		}
	}
}
