package cache

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testImage is an image written to a Store: a manifest with a config and layers.
type testImage struct {
	ref      string
	manifest ocispec.Descriptor
	blobs    []digest.Digest // manifest, config, layers
}

// putImage writes an image whose layers are the given byte slices, and records ref for it.
func putImage(t *testing.T, s *Store, ref string, layers ...[]byte) testImage {
	t.Helper()
	img := testImage{ref: ref}
	cfg := writeBlob(t, s, ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","ref":"`+ref+`"}`))
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfg}
	m.SchemaVersion = 2
	for _, l := range layers {
		m.Layers = append(m.Layers, writeBlob(t, s, ocispec.MediaTypeImageLayerGzip, l))
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	img.manifest = writeBlob(t, s, ocispec.MediaTypeImageManifest, b)
	img.blobs = append(img.blobs, img.manifest.Digest, cfg.Digest)
	for _, l := range m.Layers {
		img.blobs = append(img.blobs, l.Digest)
	}
	if err := s.SetRef(t.Context(), ref, img.manifest, "https://registry.test"); err != nil {
		t.Fatal(err)
	}
	return img
}

// use reads the image's manifest, as serving a pull does.
func use(t *testing.T, s *Store, img testImage) {
	t.Helper()
	time.Sleep(time.Millisecond) // distinct access times on coarse clocks; ordering, not waiting
	ra, err := s.ReaderAt(t.Context(), img.manifest)
	if err != nil {
		t.Fatal(err)
	}
	ra.Close()
}

func cached(t *testing.T, s *Store, d digest.Digest) bool {
	t.Helper()
	_, err := s.Info(t.Context(), d)
	if err != nil && !errdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

func hasRef(t *testing.T, s *Store, name string) bool {
	t.Helper()
	_, err := s.GetRef(t.Context(), name)
	return err == nil
}

func TestEvictLeastRecentlyUsedImage(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 40})
	ctx := t.Context()
	shared := randomBytes(10, 64<<10)
	a := putImage(t, s, "registry.test/a:1", shared, randomBytes(11, 64<<10))
	b := putImage(t, s, "registry.test/b:1", shared, randomBytes(12, 64<<10))
	c := putImage(t, s, "registry.test/c:1", randomBytes(13, 64<<10))
	use(t, s, a)
	use(t, s, c)
	// b is now the least recently used image; its layer shared with a must survive.

	used, _ := s.Usage()
	plan, err := s.Evict(ctx, used-1, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(plan.Refs, []string{b.ref}) {
		t.Fatalf("evicted refs %v, want [%s]", plan.Refs, b.ref)
	}
	if hasRef(t, s, b.ref) {
		t.Error("evicted ref is still cached")
	}
	for _, d := range b.blobs {
		want := d == digest.FromBytes(shared)
		if got := cached(t, s, d); got != want {
			t.Errorf("blob %s of the evicted image cached=%v, want %v", d, got, want)
		}
	}
	for _, img := range []testImage{a, c} {
		for _, d := range img.blobs {
			if !cached(t, s, d) {
				t.Errorf("blob %s of kept image %s was evicted", d, img.ref)
			}
		}
	}
	after, _ := s.Usage()
	for _, d := range plan.Blobs {
		if slices.Contains(a.blobs, d) || slices.Contains(c.blobs, d) {
			t.Errorf("plan removed %s, which a kept image reaches", d)
		}
	}
	if freed := used - after; freed != plan.Bytes || freed <= 0 {
		t.Errorf("usage fell by %d, plan says %d", freed, plan.Bytes)
	}
	if got := s.Evictions(); got != int64(len(plan.Blobs)) {
		t.Errorf("evictions counter %d, want %d", got, len(plan.Blobs))
	}
}

func TestEvictKeepsPinnedAndOpenBlobs(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 40})
	ctx := t.Context()
	pinned := putImage(t, s, "registry.test/pinned:1", randomBytes(20, 32<<10))
	open := putImage(t, s, "registry.test/open:1", randomBytes(21, 32<<10), randomBytes(22, 32<<10))
	plain := putImage(t, s, "registry.test/plain:1", randomBytes(23, 32<<10))
	lone := writeBlob(t, s, "", randomBytes(24, 1000)) // no ref reaches it
	if err := s.Pin(ctx, pinned.ref); err != nil {
		t.Fatal(err)
	}
	// A client is reading the last layer of "open".
	openLayer := open.blobs[len(open.blobs)-1]
	ra, err := s.ReaderAt(ctx, ocispec.Descriptor{Digest: openLayer})
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()

	// Dry run first: nothing changes.
	usedBefore, _ := s.Usage()
	dry, err := s.Evict(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if used, _ := s.Usage(); used != usedBefore || !cached(t, s, lone.Digest) {
		t.Fatal("a dry run removed something")
	}

	plan, err := s.Evict(ctx, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dry.Blobs, plan.Blobs) {
		t.Errorf("dry run planned %v, the real run removed %v", dry.Blobs, plan.Blobs)
	}
	if slices.Contains(plan.Refs, pinned.ref) || !hasRef(t, s, pinned.ref) {
		t.Error("the pinned ref was evicted")
	}
	for _, d := range pinned.blobs {
		if !cached(t, s, d) {
			t.Errorf("blob %s of the pinned image was evicted", d)
		}
	}
	if !cached(t, s, openLayer) {
		t.Error("a blob open for reading was evicted")
	}
	for _, d := range append(append([]digest.Digest{lone.Digest}, plain.blobs...), open.blobs[:len(open.blobs)-1]...) {
		if cached(t, s, d) {
			t.Errorf("blob %s should have been evicted", d)
		}
	}
	if hasRef(t, s, plain.ref) || hasRef(t, s, open.ref) {
		t.Error("unpinned refs survived eviction to zero")
	}

	// Once unpinned and closed, everything can go.
	ra.Close()
	if err := s.Unpin(ctx, pinned.ref); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Evict(ctx, 0, false); err != nil {
		t.Fatal(err)
	}
	if used, _ := s.Usage(); used != 0 {
		t.Errorf("usage %d after evicting everything", used)
	}
}

func TestEvictWholeIndex(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 40})
	ctx := t.Context()
	amd := putImage(t, s, "registry.test/multi:amd64", randomBytes(30, 8<<10))
	arm := putImage(t, s, "registry.test/multi:arm64", randomBytes(31, 8<<10))
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{amd.manifest, arm.manifest}}
	idx.SchemaVersion = 2
	b, _ := json.Marshal(idx)
	idxDesc := writeBlob(t, s, ocispec.MediaTypeImageIndex, b)
	if err := s.SetRef(ctx, "registry.test/multi:latest", idxDesc, ""); err != nil {
		t.Fatal(err)
	}
	// Only the index ref stays; the per-platform refs go, so the index alone holds them.
	for _, r := range []string{amd.ref, arm.ref} {
		if err := s.DeleteRef(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	plan, err := s.Evict(ctx, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(plan.Refs, []string{"registry.test/multi:latest"}) {
		t.Errorf("evicted refs %v", plan.Refs)
	}
	for _, d := range append(append([]digest.Digest{idxDesc.Digest}, amd.blobs...), arm.blobs...) {
		if cached(t, s, d) {
			t.Errorf("blob %s reachable from the evicted index is still cached", d)
		}
	}
}

func TestBackgroundEvictorHonoursWatermarks(t *testing.T) {
	const budget = 1 << 20
	s := newStore(t, Options{MaxSize: budget, HighWatermark: 0.9, LowWatermark: 0.5})
	// Each image is a little over 96 KiB: nine stay under the high watermark (0.9 MiB).
	var imgs []testImage
	for i := range 9 {
		imgs = append(imgs, putImage(t, s, "registry.test/img:"+string(rune('a'+i)), randomBytes(int64(40+i), 96<<10)))
	}
	if n := s.Evictions(); n != 0 {
		t.Fatalf("%d evictions below the high watermark", n)
	}
	// The tenth crosses it: one pass must bring usage under the low watermark (0.5 MiB),
	// removing the five oldest images and keeping the five newest.
	imgs = append(imgs, putImage(t, s, "registry.test/img:j", randomBytes(49, 96<<10)))
	deadline := time.Now().Add(10 * time.Second)
	for {
		used, _ := s.Usage()
		if used <= budget/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage %d still above the low watermark %d", used, budget/2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, img := range imgs {
		if got, want := hasRef(t, s, img.ref), i >= 5; got != want {
			t.Errorf("image %d (%s) cached=%v, want %v", i, img.ref, got, want)
		}
	}
}

// TestEvictionRechecksItsPlan changes the index between an eviction pass's plan and its
// application, as a pull or an operator can at any time, and checks that the pass sees the
// change: what became used again since the plan stays cached and readable.
func TestEvictionRechecksItsPlan(t *testing.T) {
	const other = "registry.test/other:1"
	for _, tc := range []struct {
		name string
		// meanwhile changes the index while the pass that planned to evict everything waits.
		meanwhile func(t *testing.T, s *Store, img testImage, lone ocispec.Descriptor) error
		keptRef   string // a ref that must survive, with every blob of img
		keepLone  bool   // whether lone must survive
	}{
		{name: "a tag recorded for the planned image", keptRef: other, meanwhile: func(t *testing.T, s *Store, img testImage, _ ocispec.Descriptor) error {
			return s.SetRef(t.Context(), other, img.manifest, "https://registry.test")
		}},
		{name: "the planned ref verified again", keptRef: "registry.test/app:1", meanwhile: func(t *testing.T, s *Store, img testImage, _ ocispec.Descriptor) error {
			return s.SetRef(t.Context(), img.ref, img.manifest, "https://registry.test")
		}},
		{name: "the planned ref pinned", keptRef: "registry.test/app:1", meanwhile: func(t *testing.T, s *Store, img testImage, _ ocispec.Descriptor) error {
			return s.Pin(t.Context(), img.ref)
		}},
		{name: "an unreferenced blob linked to a repository", keepLone: true, meanwhile: func(t *testing.T, s *Store, _ testImage, lone ocispec.Descriptor) error {
			return s.Link(t.Context(), "registry.test/app", lone.Digest)
		}},
		{name: "an unreferenced blob read", keepLone: true, meanwhile: func(t *testing.T, s *Store, _ testImage, lone ocispec.Descriptor) error {
			_, err := content.ReadBlob(t.Context(), s, lone)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, Options{MaxSize: 1 << 40})
			img := putImage(t, s, "registry.test/app:1", randomBytes(60, 16<<10), randomBytes(61, 16<<10))
			lone := writeBlob(t, s, "", randomBytes(62, 1000))
			var planned EvictionPlan
			s.evict.afterPlan = func(p EvictionPlan) {
				planned = p
				if err := tc.meanwhile(t, s, img, lone); err != nil {
					t.Error(err)
				}
			}
			plan, err := s.Evict(t.Context(), 0, false)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(planned.Blobs, img.manifest.Digest) || !slices.Contains(planned.Blobs, lone.Digest) {
				t.Fatalf("the pass did not plan to evict everything: %+v", planned)
			}
			if tc.keptRef != "" {
				ref, err := s.GetRef(t.Context(), tc.keptRef)
				if err != nil {
					t.Fatalf("ref %s: %v", tc.keptRef, err)
				}
				for _, d := range img.blobs {
					b, err := content.ReadBlob(t.Context(), s, ocispec.Descriptor{Digest: d})
					if err != nil || digest.FromBytes(b) != d {
						t.Errorf("blob %s that %s reaches is not readable after eviction: %v", d, ref.Name, err)
					}
					if slices.Contains(plan.Blobs, d) {
						t.Errorf("the pass reports %s removed", d)
					}
				}
			}
			if got := cached(t, s, lone.Digest); got != tc.keepLone {
				t.Errorf("the unreferenced blob cached=%v, want %v", got, tc.keepLone)
			}
			if used, _ := s.Usage(); used != sumIndexed(t, s) {
				t.Errorf("usage %d, the index holds %d bytes", used, sumIndexed(t, s))
			}
		})
	}
}

// sumIndexed adds up the sizes of the indexed blobs.
func sumIndexed(t *testing.T, s *Store) int64 {
	t.Helper()
	var n int64
	if err := s.Walk(t.Context(), func(info content.Info) error { n += info.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
