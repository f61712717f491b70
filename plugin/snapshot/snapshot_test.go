package snapshot

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"github.com/opencontainers/go-digest"
)

// newTestSnapshotter opens a Snapshotter over src in a temporary directory.
func newTestSnapshotter(t *testing.T, src LayerSource) (context.Context, *Snapshotter) {
	t.Helper()
	requireOverlay(t)
	sn, err := New(filepath.Join(t.TempDir(), "snapshots"), src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sn.Close(); err != nil {
			t.Errorf("close snapshotter: %v", err)
		}
	})
	return logtest.WithT(t.Context(), t), sn
}

var baseFiles = []entry{
	{name: "etc/"},
	{name: "etc/hostname", body: "lifeboat\n"},
	{name: "etc/motd", body: "served from the cache\n"},
	{name: "usr/"},
	{name: "usr/share/"},
	{name: "usr/share/doc.txt", body: "docs"},
}

func TestPrepareAppliesCachedLayer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		comp compression.Compression
	}{
		{name: "gzip", comp: compression.Gzip},
		{name: "zstd", comp: compression.Zstd},
		{name: "uncompressed", comp: compression.Uncompressed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := openCache(t)
			ctx, sn := newTestSnapshotter(t, st)
			l := buildLayer(t, tc.comp, baseFiles...)
			blob := putBlob(t, st, l.blob)
			chain := chainIDs(l)[0]

			labels := unpackLabels(chain, blob, l.diffID, "docker.io/library/test:1")
			key := extractKey(t, chain)
			mounts, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(labels))
			mustAlreadyExists(t, mounts, err)

			info, err := sn.Stat(ctx, chain)
			if err != nil {
				t.Fatalf("Stat(%s): %v", chain, err)
			}
			if info.Kind != snapshots.KindCommitted || info.Parent != "" {
				t.Errorf("target is %v with parent %q, want committed with no parent", info.Kind, info.Parent)
			}
			for k, v := range labels {
				if info.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, info.Labels[k], v)
				}
			}
			if _, err := sn.Stat(ctx, key); !errdefs.IsNotFound(err) {
				t.Errorf("Stat(key) = %v, want not found: the remote snapshot protocol creates no active snapshot", err)
			}
			if got, want := snapshotNames(ctx, t, sn), []string{"Committed " + chain}; !slices.Equal(got, want) {
				t.Errorf("snapshots %v, want %v (no temporary snapshot left)", got, want)
			}
			want := map[string]string{
				"etc": "/", "etc/hostname": "lifeboat\n", "etc/motd": "served from the cache\n",
				"usr": "/", "usr/share": "/", "usr/share/doc.txt": "docs",
			}
			if got := readTree(ctx, t, sn, chain); !maps.Equal(got, want) {
				t.Errorf("view of %s:\n got %v\nwant %v", chain, got, want)
			}
			usage, err := sn.Usage(ctx, chain)
			if err != nil || usage.Size == 0 {
				t.Errorf("Usage = %+v, %v; want the size of the applied files", usage, err)
			}
		})
	}
}

func TestPrepareStackedLayersWithWhiteouts(t *testing.T) {
	t.Parallel()
	st := openCache(t)
	ctx, sn := newTestSnapshotter(t, st)

	base := buildLayer(t, compression.Gzip, append(slices.Clone(baseFiles),
		entry{name: "var/"}, entry{name: "var/cache/"}, entry{name: "var/cache/old", body: "stale"})...)
	top := buildLayer(t, compression.Gzip,
		entry{name: "etc/"},
		entry{name: "etc/.wh.motd"},                    // removes a file of the base layer
		entry{name: "etc/hostname", body: "changed\n"}, // replaces one
		entry{name: "var/"},
		entry{name: "var/cache/"},
		entry{name: "var/cache/.wh..wh..opq"}, // makes the directory opaque
		entry{name: "var/cache/new", body: "fresh"},
		entry{name: "opt/"},
		entry{name: "opt/app", body: "app"},
	)
	chains := chainIDs(base, top)
	for i, l := range []layer{base, top} {
		parent := ""
		if i > 0 {
			parent = chains[i-1]
		}
		labels := unpackLabels(chains[i], putBlob(t, st, l.blob), l.diffID, "")
		if i > 0 {
			labels[labelParentChainID] = chains[i-1]
		}
		mounts, err := sn.Prepare(ctx, extractKey(t, chains[i]), parent, snapshots.WithLabels(labels))
		mustAlreadyExists(t, mounts, err)
	}
	info, err := sn.Stat(ctx, chains[1])
	if err != nil || info.Kind != snapshots.KindCommitted || info.Parent != chains[0] {
		t.Fatalf("Stat(top) = %+v, %v; want committed on %s", info, err, chains[0])
	}
	want := map[string]string{
		"etc": "/", "etc/hostname": "changed\n",
		"usr": "/", "usr/share": "/", "usr/share/doc.txt": "docs",
		"var": "/", "var/cache": "/", "var/cache/new": "fresh",
		"opt": "/", "opt/app": "app",
	}
	if got := readTree(ctx, t, sn, chains[1]); !maps.Equal(got, want) {
		t.Errorf("view of the top layer:\n got %v\nwant %v", got, want)
	}
	// The base layer is unchanged.
	if got := readTree(ctx, t, sn, chains[0]); got["etc/motd"] != "served from the cache\n" || got["var/cache/old"] != "stale" {
		t.Errorf("view of the base layer changed: %v", got)
	}
}

// TestPrepareFallsBack checks that every case the cache cannot serve behaves as the plain
// overlay snapshotter: an active snapshot for key, nothing committed, nothing left behind.
func TestPrepareFallsBack(t *testing.T) {
	t.Parallel()
	good := buildLayer(t, compression.Gzip, baseFiles...)
	other := buildLayer(t, compression.Gzip, entry{name: "other", body: "x"})
	truncated := good.blob[:len(good.blob)/2]

	for _, tc := range []struct {
		name   string
		cached [][]byte // blobs in the cache
		labels func(chain string) map[string]string
		fetch  error // the source has a failing LayerFetcher
	}{
		{
			name:   "no labels",
			cached: [][]byte{good.blob},
			labels: func(string) map[string]string { return nil },
		},
		{
			name:   "no layer digest label",
			cached: [][]byte{good.blob},
			labels: func(chain string) map[string]string {
				return map[string]string{snapshots.LabelSnapshotRef: chain, snapshots.LabelSnapshotDiffID: good.diffID.String()}
			},
		},
		{
			name:   "layer not cached",
			cached: [][]byte{other.blob},
			labels: func(chain string) map[string]string {
				return unpackLabels(chain, digest.FromBytes(good.blob), good.diffID, "docker.io/library/test:1")
			},
		},
		{
			name: "layer not cached and the fetch fails",
			labels: func(chain string) map[string]string {
				return unpackLabels(chain, digest.FromBytes(good.blob), good.diffID, "docker.io/library/test:1")
			},
			fetch: fmt.Errorf("upstream down: %w", errdefs.ErrUnavailable),
		},
		{
			name:   "wrong diff ID",
			cached: [][]byte{good.blob},
			labels: func(chain string) map[string]string {
				return unpackLabels(chain, digest.FromBytes(good.blob), other.diffID, "")
			},
		},
		{
			name:   "truncated blob",
			cached: [][]byte{truncated},
			labels: func(chain string) map[string]string {
				return unpackLabels(chain, digest.FromBytes(truncated), good.diffID, "")
			},
		},
		{
			name:   "not a tar",
			cached: [][]byte{[]byte("this is not a layer")},
			labels: func(chain string) map[string]string {
				return unpackLabels(chain, digest.FromString("this is not a layer"), good.diffID, "")
			},
		},
		{
			name:   "parallel unpack without the parent",
			cached: [][]byte{good.blob},
			labels: func(chain string) map[string]string {
				l := unpackLabels(chain, digest.FromBytes(good.blob), good.diffID, "")
				l[labelParentChainID] = digest.FromString("parent").String()
				return l
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := openCache(t)
			var src LayerSource = st
			if tc.fetch != nil {
				src = &fetchingSource{Store: st, err: tc.fetch}
			}
			ctx, sn := newTestSnapshotter(t, src)
			for _, b := range tc.cached {
				putBlob(t, st, b)
			}
			chain := chainIDs(good)[0]
			key := extractKey(t, chain)

			mounts, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(tc.labels(chain)))
			if err != nil {
				t.Fatalf("Prepare: %v; want the plain overlay answer", err)
			}
			if len(mounts) != 1 || mounts[0].Type != "bind" || !slices.Contains(mounts[0].Options, "rw") {
				t.Errorf("mounts %+v, want one rw bind mount as overlay gives for a snapshot without parent", mounts)
			}
			info, err := sn.Stat(ctx, key)
			if err != nil || info.Kind != snapshots.KindActive {
				t.Errorf("Stat(key) = %+v, %v; want an active snapshot", info, err)
			}
			if got, want := snapshotNames(ctx, t, sn), []string{"Active " + key}; !slices.Equal(got, want) {
				t.Errorf("snapshots %v, want %v", got, want)
			}
			if names := activeEntries(ctx, t, sn, key); len(names) != 0 {
				t.Errorf("the active snapshot is not empty: %v", names)
			}
			if fsrc, ok := src.(*fetchingSource); ok && len(fsrc.calls()) != 1 {
				t.Errorf("FetchLayer calls %v, want one", fsrc.calls())
			}
		})
	}
}

// activeEntries lists the top directory of the active snapshot key, which has no parent.
func activeEntries(ctx context.Context, t *testing.T, sn *Snapshotter, key string) []string {
	t.Helper()
	mounts, err := sn.Mounts(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		t.Fatalf("unexpected mounts %+v", mounts)
	}
	entries, err := os.ReadDir(mounts[0].Source)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// countDirs counts the entries of dir.
func countDirs(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func TestPrepareFetchesMissingLayer(t *testing.T) {
	t.Parallel()
	l := buildLayer(t, compression.Gzip, baseFiles...)
	blob := digest.FromBytes(l.blob)
	chain := chainIDs(l)[0]

	t.Run("with the image ref", func(t *testing.T) {
		t.Parallel()
		src := &fetchingSource{Store: openCache(t), upstream: map[digest.Digest][]byte{blob: l.blob}}
		ctx, sn := newTestSnapshotter(t, src)
		mounts, err := sn.Prepare(ctx, extractKey(t, chain), "",
			snapshots.WithLabels(unpackLabels(chain, blob, l.diffID, "ghcr.io/org/app:v1")))
		mustAlreadyExists(t, mounts, err)
		if got, want := src.calls(), []string{"ghcr.io/org/app:v1 " + blob.String()}; !slices.Equal(got, want) {
			t.Errorf("FetchLayer calls %v, want %v", got, want)
		}
		if _, err := src.Info(ctx, blob); err != nil {
			t.Errorf("the fetched layer is not in the cache: %v", err)
		}
		if got := readTree(ctx, t, sn, chain); got["etc/hostname"] != "lifeboat\n" {
			t.Errorf("view %v lacks etc/hostname", got)
		}
	})
	t.Run("without the image ref", func(t *testing.T) {
		t.Parallel()
		src := &fetchingSource{Store: openCache(t), upstream: map[digest.Digest][]byte{blob: l.blob}}
		ctx, sn := newTestSnapshotter(t, src)
		key := extractKey(t, chain)
		if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(unpackLabels(chain, blob, l.diffID, ""))); err != nil {
			t.Fatalf("Prepare: %v; want the plain overlay answer", err)
		}
		if calls := src.calls(); len(calls) != 0 {
			t.Errorf("FetchLayer called %v without an image ref", calls)
		}
		if _, err := sn.Stat(ctx, chain); !errdefs.IsNotFound(err) {
			t.Errorf("Stat(target) = %v, want not found", err)
		}
	})
}

func TestPrepareExistingTarget(t *testing.T) {
	t.Parallel()
	st := openCache(t)
	src := &countingSource{LayerSource: st}
	ctx, sn := newTestSnapshotter(t, src)
	l := buildLayer(t, compression.Gzip, baseFiles...)
	blob := putBlob(t, st, l.blob)
	chain := chainIDs(l)[0]
	labels := snapshots.WithLabels(unpackLabels(chain, blob, l.diffID, ""))

	mounts, err := sn.Prepare(ctx, "extract-1 "+chain, "", labels)
	mustAlreadyExists(t, mounts, err)
	opened := src.opened.Load()
	mounts, err = sn.Prepare(ctx, "extract-2 "+chain, "", labels)
	mustAlreadyExists(t, mounts, err)
	if n := src.opened.Load() - opened; n != 0 {
		t.Errorf("the second Prepare opened the layer %d times, want 0", n)
	}

	// A target containerd committed itself (it carries the reference label) is found too.
	other := buildLayer(t, compression.Gzip, entry{name: "b", body: "b"})
	otherChain := chainIDs(other)[0]
	active := "ns/1/extract-3 " + otherChain
	if _, err := sn.Prepare(ctx, active, ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "ns/2/"+otherChain, active,
		snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: otherChain})); err != nil {
		t.Fatal(err)
	}
	opened = src.opened.Load()
	mounts, err = sn.Prepare(ctx, "ns/3/extract-4 "+otherChain, "",
		snapshots.WithLabels(unpackLabels(otherChain, putBlob(t, st, other.blob), other.diffID, "")))
	mustAlreadyExists(t, mounts, err)
	if n := src.opened.Load() - opened; n != 0 {
		t.Errorf("Prepare of a target committed by containerd opened the layer %d times, want 0", n)
	}
}

func TestPrepareConcurrentSameTarget(t *testing.T) {
	t.Parallel()
	l := buildLayer(t, compression.Gzip, baseFiles...)
	chain := chainIDs(l)[0]
	prepare := func(ctx context.Context, sn *Snapshotter, i int, blob digest.Digest) error {
		_, err := sn.Prepare(ctx, fmt.Sprintf("extract-%d %s", i, chain), "",
			snapshots.WithLabels(unpackLabels(chain, blob, l.diffID, "")))
		return err
	}

	// How many readers one apply opens, measured on its own.
	st := openCache(t)
	one := &countingSource{LayerSource: st}
	ctx, sn := newTestSnapshotter(t, one)
	if err := prepare(ctx, sn, 0, putBlob(t, st, l.blob)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare = %v, want ErrAlreadyExists", err)
	}

	st = openCache(t)
	many := &countingSource{LayerSource: st}
	ctx, sn = newTestSnapshotter(t, many)
	blob := putBlob(t, st, l.blob)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = prepare(ctx, sn, i, blob) })
	}
	wg.Wait()
	for i, err := range errs {
		if !errdefs.IsAlreadyExists(err) {
			t.Errorf("Prepare %d = %v, want ErrAlreadyExists", i, err)
		}
	}
	if got, want := many.opened.Load(), one.opened.Load(); got != want {
		t.Errorf("%d concurrent Prepares opened the layer %d times, one apply opens it %d times", n, got, want)
	}
	if got, want := snapshotNames(ctx, t, sn), []string{"Committed " + chain}; !slices.Equal(got, want) {
		t.Errorf("snapshots %v, want %v", got, want)
	}
}

func TestPrepareCanceledWhileWaiting(t *testing.T) {
	t.Parallel()
	st := openCache(t)
	ctx, sn := newTestSnapshotter(t, st)
	l := buildLayer(t, compression.Gzip, baseFiles...)
	blob := putBlob(t, st, l.blob)
	chain := chainIDs(l)[0]

	unlock, err := sn.locks.lock(ctx, chain) // an apply of the same target in progress
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = sn.Prepare(cctx, extractKey(t, chain), "", snapshots.WithLabels(unpackLabels(chain, blob, l.diffID, "")))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Prepare with a canceled context = %v, want context.Canceled", err)
	}
	unlock()
	mounts, err := sn.Prepare(ctx, extractKey(t, chain), "", snapshots.WithLabels(unpackLabels(chain, blob, l.diffID, "")))
	mustAlreadyExists(t, mounts, err)
	if len(sn.locks.locks) != 0 {
		t.Errorf("lock entries left: %v", sn.locks.locks)
	}
}

func TestNewRemovesInterruptedApplies(t *testing.T) {
	t.Parallel()
	requireOverlay(t)
	ctx := logtest.WithT(t.Context(), t)
	root := filepath.Join(t.TempDir(), "snapshots")
	sn, err := New(root, newMapSource())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "base-active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	stale := tempKey("sha256:abc")
	if _, err := sn.Prepare(ctx, stale, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "user-active", "base"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}

	sn, err = New(root, newMapSource())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if got, want := snapshotNames(ctx, t, sn), []string{"Active user-active", "Committed base"}; !slices.Equal(got, want) {
		t.Errorf("snapshots after reopening %v, want %v", got, want)
	}
	if n := countDirs(t, filepath.Join(root, "snapshots")); n != 2 {
		t.Errorf("%d snapshot directories after reopening, want 2", n)
	}
}

func TestNewNeedsASource(t *testing.T) {
	t.Parallel()
	if _, err := New(t.TempDir(), nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("New with no source = %v, want ErrInvalidArgument", err)
	}
}
