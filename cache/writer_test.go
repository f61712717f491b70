package cache

import (
	"bytes"
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
			if err := os.Symlink("/dev/full", s.ingestPath(ref)); err != nil {
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
			if _, err := os.Lstat(s.ingestPath(ref)); !os.IsNotExist(err) {
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
