package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/cache"
)

var _ LayerSource = (*cache.Store)(nil)

// requireOverlay skips the test unless it runs as root on a filesystem where overlayfs works:
// the snapshotter mounts overlayfs and bind mounts.
func requireOverlay(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: the overlay snapshotter mounts overlayfs and bind mounts")
	}
	if err := overlayutils.Supported(t.TempDir()); err != nil {
		t.Skipf("overlayfs is not usable here: %v", err)
	}
}

// mapSource is a LayerSource over blobs in memory.
type mapSource struct {
	mu    sync.Mutex
	blobs map[digest.Digest][]byte
}

func newMapSource() *mapSource { return &mapSource{blobs: map[digest.Digest][]byte{}} }

func (m *mapSource) put(b []byte) digest.Digest {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := digest.FromBytes(b)
	m.blobs[d] = b
	return d
}

func (m *mapSource) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return nopCloser{bytes.NewReader(b)}, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// countingSource counts the readers opened on a LayerSource.
type countingSource struct {
	LayerSource
	opened atomic.Int64
}

func (c *countingSource) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	c.opened.Add(1)
	return c.LayerSource.ReaderAt(ctx, desc)
}

// fetchingSource is a cache with a LayerFetcher that copies blobs from upstream into it.
type fetchingSource struct {
	*cache.Store
	upstream map[digest.Digest][]byte
	err      error // returned by FetchLayer when set

	mu      sync.Mutex
	fetched []string // "imageRef digest" per FetchLayer call
}

func (f *fetchingSource) FetchLayer(ctx context.Context, imageRef string, desc ocispec.Descriptor) error {
	f.mu.Lock()
	f.fetched = append(f.fetched, imageRef+" "+desc.Digest.String())
	f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	b, ok := f.upstream[desc.Digest]
	if !ok {
		return fmt.Errorf("upstream blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return content.WriteBlob(ctx, f.Store, "fetch-"+desc.Digest.String(), bytes.NewReader(b),
		ocispec.Descriptor{Digest: desc.Digest, Size: int64(len(b))})
}

func (f *fetchingSource) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.fetched...)
}

// openCache opens lifeboat's cache in a temporary directory.
func openCache(t testing.TB) *cache.Store {
	t.Helper()
	st, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close cache: %v", err)
		}
	})
	return st
}

// putBlob writes b into the cache and returns its digest.
func putBlob(t testing.TB, st content.Ingester, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if err := content.WriteBlob(t.Context(), st, "test-"+d.String(), bytes.NewReader(b),
		ocispec.Descriptor{Digest: d, Size: int64(len(b))}); err != nil {
		t.Fatal(err)
	}
	return d
}

// entry is one member of a test layer: a directory when body is nil and name ends in "/",
// else a regular file (whiteouts are files named .wh.*).
type entry struct {
	name string
	body string
}

// layer is a built test layer.
type layer struct {
	blob   []byte        // compressed tar
	diffID digest.Digest // digest of the uncompressed tar
}

func buildLayer(t testing.TB, comp compression.Compression, entries ...entry) layer {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		if e.name[len(e.name)-1] == '/' {
			hdr = &tar.Header{Name: e.name, Mode: 0o755, Typeflag: tar.TypeDir}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	w, err := compression.CompressStream(&blob, comp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(raw.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return layer{blob: blob.Bytes(), diffID: digest.FromBytes(raw.Bytes())}
}

// chainIDs returns the chain IDs of layers stacked in order.
func chainIDs(layers ...layer) []string {
	diffIDs := make([]digest.Digest, len(layers))
	for i, l := range layers {
		diffIDs[i] = l.diffID
	}
	var out []string
	for _, c := range identity.ChainIDs(diffIDs) {
		out = append(out, c.String())
	}
	return out
}

// unpackLabels are the labels containerd's unpacker (with the remote snapshot annotations
// enabled) sends with the Prepare of a layer.
func unpackLabels(chainID string, blob digest.Digest, diffID digest.Digest, imageRef string) map[string]string {
	l := map[string]string{
		snapshots.LabelSnapshotRef:                   chainID,
		snapshots.LabelSnapshotDiffID:                diffID.String(),
		"containerd.io/snapshot/cri.layer-digest":    blob.String(),
		"containerd.io/snapshot/cri.manifest-digest": digest.FromString("manifest").String(),
	}
	if imageRef != "" {
		l["containerd.io/snapshot/cri.image-ref"] = imageRef
	}
	return l
}

// extractKey is a key like the unpacker's (snapshots.UnpackKeyFormat).
func extractKey(t testing.TB, chainID string) string {
	return fmt.Sprintf(snapshots.UnpackKeyFormat, t.Name(), chainID)
}

// readTree mounts a view of the committed snapshot name and returns its regular files and
// their contents, and its directories with a value of "/".
func readTree(ctx context.Context, t testing.TB, sn snapshots.Snapshotter, name string) map[string]string {
	t.Helper()
	key := "view-" + name + "-" + t.Name()
	mounts, err := sn.View(ctx, key, name)
	if err != nil {
		t.Fatalf("view %s: %v", name, err)
	}
	defer func() {
		if err := sn.Remove(ctx, key); err != nil {
			t.Errorf("remove view: %v", err)
		}
	}()
	tree := map[string]string{}
	err = mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
		return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == root {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			switch {
			case d.IsDir():
				tree[rel] = "/"
			case d.Type().IsRegular():
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				tree[rel] = string(b)
			default:
				tree[rel] = "special " + d.Type().String()
			}
			return nil
		})
	})
	if err != nil {
		t.Fatalf("read view of %s: %v", name, err)
	}
	return tree
}

// snapshotNames lists the snapshotter's snapshots as "kind name", sorted.
func snapshotNames(ctx context.Context, t testing.TB, sn snapshots.Snapshotter) []string {
	t.Helper()
	var names []string
	if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		names = append(names, i.Kind.String()+" "+i.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}

func mustAlreadyExists(t testing.TB, mounts []mount.Mount, err error) {
	t.Helper()
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare = %v, %v; want ErrAlreadyExists", mounts, err)
	}
}

func blobDigest(l layer) digest.Digest { return digest.FromBytes(l.blob) }
