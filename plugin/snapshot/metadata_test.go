package snapshot

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// TestThroughContainerdMetadata drives the snapshotter through containerd's metadata
// snapshotter, the layer containerd puts in front of every snapshotter, proxy plugins included:
// it namespaces keys and parents, keeps only the inherited labels, and on ErrAlreadyExists
// looks the target up by its reference label and parent. Layers are unpacked in three
// namespaces; a base layer containerd applied itself in two of them makes the backend parents
// of the cached top layer differ.
func TestThroughContainerdMetadata(t *testing.T) {
	t.Parallel()
	st := openCache(t)
	src := &countingSource{LayerSource: st}
	ctx, sn := newTestSnapshotter(t, src)

	dir := t.TempDir()
	bdb, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bdb.Close() })
	cs, err := local.NewStore(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	db := metadata.NewDB(bdb, cs, map[string]snapshots.Snapshotter{"lifeboat": sn})
	if err := db.Init(ctx); err != nil {
		t.Fatal(err)
	}
	msn := db.Snapshotter("lifeboat")

	base := buildLayer(t, compression.Gzip, baseFiles...)
	top := buildLayer(t, compression.Gzip, entry{name: "etc/"}, entry{name: "etc/.wh.motd"}, entry{name: "app", body: "v1"})
	chains := chainIDs(base, top)
	baseLabels := unpackLabels(chains[0], blobDigest(base), base.diffID, "docker.io/library/app:1")
	topLabels := unpackLabels(chains[1], putBlob(t, st, top.blob), top.diffID, "docker.io/library/app:1")
	topLabels[labelParentChainID] = chains[0]
	want := map[string]string{
		"etc": "/", "etc/hostname": "lifeboat\n", "usr": "/", "usr/share": "/", "usr/share/doc.txt": "docs", "app": "v1",
	}

	// unpackBase applies the base layer the way containerd's unpacker does when the
	// snapshotter does not have it: Prepare, apply, Commit with the labels.
	containerdApplies := newMapSource()
	containerdApplies.put(base.blob)
	unpackBase := func(ctx context.Context, labels map[string]string) {
		t.Helper()
		key := "extract-base " + chains[0]
		mounts, err := msn.Prepare(ctx, key, "", snapshots.WithLabels(labels))
		if err != nil {
			t.Fatalf("Prepare of the uncached base layer: %v", err)
		}
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: blobDigest(base), Size: int64(len(base.blob))}
		if _, err := apply.NewFileSystemApplier(containerdApplies).Apply(ctx, desc, mounts); err != nil {
			t.Fatal(err)
		}
		if err := msn.Commit(ctx, chains[0], key, snapshots.WithLabels(labels)); err != nil {
			t.Fatal(err)
		}
	}
	unpackTop := func(ctx context.Context) {
		t.Helper()
		// The gc.root label stands for the image that references the snapshot.
		mounts, err := msn.Prepare(ctx, "extract-top "+chains[1], chains[0], snapshots.WithLabels(topLabels),
			snapshots.WithLabels(map[string]string{"containerd.io/gc.root": "image"}))
		mustAlreadyExists(t, mounts, err)
		info, err := msn.Stat(ctx, chains[1])
		if err != nil || info.Kind != snapshots.KindCommitted || info.Parent != chains[0] {
			t.Fatalf("containerd's Stat(top) = %+v, %v; want committed on the base", info, err)
		}
		if got := readTree(ctx, t, msn, chains[1]); !maps.Equal(got, want) {
			t.Errorf("view of the image:\n got %v\nwant %v", got, want)
		}
	}

	// Namespaces a and b: containerd applies the base layer itself, in a because it is not
	// cached, in b because the pull sends no remote snapshot annotations (the base of a is
	// found by its reference label otherwise). The top layer comes from the cache, on a
	// different backend parent in each namespace.
	plainLabels := maps.Clone(baseLabels)
	delete(plainLabels, labelLayerDigest)
	delete(plainLabels, labelImageRef)
	for _, c := range []struct {
		ns     string
		labels map[string]string
	}{{"a", baseLabels}, {"b", plainLabels}} {
		ns, nctx := c.ns, namespaces.WithNamespace(ctx, c.ns)
		unpackBase(nctx, c.labels)
		opened := src.opened.Load()
		unpackTop(nctx)
		if src.opened.Load() == opened {
			t.Errorf("namespace %s: the top layer was not applied from the cache", ns)
		}
	}
	var tops []string
	if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Labels[snapshots.LabelSnapshotRef] == chains[1] {
			tops = append(tops, i.Kind.String()+" "+i.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(tops)
	if len(tops) != 2 || tops[0] != "Committed "+chains[1] || !strings.HasPrefix(tops[1], "Committed "+chains[1]+"@") {
		t.Errorf("backend snapshots of the top layer %v, want %s and one under a derived name", tops, chains[1])
	}

	// Namespace c: both layers are found in the backend (the base one as containerd committed
	// it in another namespace), so nothing is applied.
	putBlob(t, st, base.blob)
	cctx := namespaces.WithNamespace(ctx, "c")
	opened := src.opened.Load()
	mounts, err := msn.Prepare(cctx, "extract-base "+chains[0], "", snapshots.WithLabels(baseLabels))
	mustAlreadyExists(t, mounts, err)
	unpackTop(cctx)
	if n := src.opened.Load() - opened; n != 0 {
		t.Errorf("namespace c opened layers %d times, want 0: both were committed already", n)
	}

	// containerd's garbage collector removes a backend snapshot only when no namespace uses it.
	if err := msn.Remove(cctx, chains[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GarbageCollect(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"a", "b"} {
		if got := readTree(namespaces.WithNamespace(ctx, ns), t, msn, chains[1]); !maps.Equal(got, want) {
			t.Errorf("namespace %s after c removed its image and GC: got %v, want %v", ns, got, want)
		}
	}
	if _, err := msn.Stat(cctx, chains[1]); !errdefs.IsNotFound(err) {
		t.Errorf("namespace c still has the top layer: %v", err)
	}
}
