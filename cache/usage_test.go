package cache

import (
	"bytes"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

func TestRefUsages(t *testing.T) {
	t.Parallel()
	s := newStore(t, Options{MaxSize: 1 << 40})
	ctx := t.Context()
	shared := randomBytes(20, 32<<10)
	a := putImage(t, s, "registry.test/a:1", shared, randomBytes(21, 16<<10))
	b := putImage(t, s, "registry.test/b:1", shared)
	if err := s.Pin(ctx, b.ref); err != nil {
		t.Fatal(err)
	}
	size := func(img testImage) int64 {
		var n int64
		for _, d := range img.blobs {
			info, err := s.Info(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			n += info.Size
		}
		return n
	}
	usages, err := s.RefUsages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(usages) != 2 || usages[0].Name != a.ref || usages[1].Name != b.ref {
		t.Fatalf("RefUsages = %+v, want a and b in name order", usages)
	}
	for i, img := range []testImage{a, b} {
		u := usages[i]
		if u.Size != size(img) || u.Blobs != len(img.blobs) || u.Pinned != (img.ref == b.ref) || u.Target.Digest != img.manifest.Digest {
			t.Errorf("usage of %s = %+v, want %d bytes in %d blobs", img.ref, u, size(img), len(img.blobs))
		}
	}

	// Listing is not a use; a read of the target is, and shows as the last use.
	before := usages[0].LastUsed
	if again, _ := s.RefUsages(ctx); !again[0].LastUsed.Equal(before) {
		t.Errorf("RefUsages moved the last use: %v → %v", before, again[0].LastUsed)
	}
	use(t, s, a)
	after, err := s.RefUsages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !after[0].LastUsed.After(before) {
		t.Errorf("a read of %s did not move its last use (%v → %v)", a.ref, before, after[0].LastUsed)
	}
}

func TestPeekIsNotAUse(t *testing.T) {
	t.Parallel()
	s := newStore(t, Options{MaxSize: 1 << 40})
	ctx := t.Context()
	img := putImage(t, s, "registry.test/a:1", randomBytes(30, 1024))
	usages, err := s.RefUsages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body, err := s.Peek(ctx, img.manifest.Digest, 1<<20)
	if err != nil || digest.FromBytes(body) != img.manifest.Digest {
		t.Fatalf("Peek = %d bytes, %v", len(body), err)
	}
	if again, _ := s.RefUsages(ctx); !again[0].LastUsed.Equal(usages[0].LastUsed) {
		t.Error("Peek counted as a use of the blob")
	}
	if _, err := s.Peek(ctx, img.manifest.Digest, 10); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Peek over the limit: %v, want failed precondition", err)
	}
	if _, err := s.Peek(ctx, digest.FromString("absent"), 1<<20); !errdefs.IsNotFound(err) {
		t.Errorf("Peek of an absent blob: %v, want not found", err)
	}
	if b, _ := s.Peek(ctx, img.blobs[2], 1<<20); !bytes.Equal(b, randomBytes(30, 1024)) {
		t.Error("Peek of a layer returned other bytes")
	}
}

func TestGCEvictsDownToTheLowWatermark(t *testing.T) {
	t.Parallel()
	s := newStore(t, Options{MaxSize: 1 << 40})
	ctx := t.Context()
	old := putImage(t, s, "registry.test/old:1", randomBytes(40, 64<<10))
	kept := putImage(t, s, "registry.test/kept:1", randomBytes(41, 64<<10))
	use(t, s, kept)
	low := 0.85 // the documented figure (docs/configuration.md), not the constant
	if target := s.EvictTarget(); target != int64(low*float64(1<<40)) {
		t.Fatalf("EvictTarget = %d, want the low watermark of the budget", target)
	}
	// Under the target: nothing to do, even though nothing is pinned.
	if plan, err := s.GC(ctx, false); err != nil || len(plan.Refs)+len(plan.Blobs) != 0 {
		t.Fatalf("GC under the target = %+v, %v", plan, err)
	}

	// A budget the cache fills to 90%: below the high watermark, so only GC evicts.
	used, _ := s.Usage()
	s.space.mu.Lock()
	s.space.budget = used * 100 / 90
	s.space.mu.Unlock()
	plan, err := s.GC(ctx, true)
	if err != nil || len(plan.Refs) != 1 || plan.Refs[0] != old.ref {
		t.Fatalf("GC dry run = %+v, %v; want %s, the least recently used", plan, err, old.ref)
	}
	if !hasRef(t, s, old.ref) || !cached(t, s, old.blobs[2]) {
		t.Fatal("a dry run removed something")
	}
	if plan, err = s.GC(ctx, false); err != nil || len(plan.Refs) != 1 || plan.Refs[0] != old.ref || plan.Bytes <= 64<<10 {
		t.Fatalf("GC = %+v, %v", plan, err)
	}
	if hasRef(t, s, old.ref) || cached(t, s, old.blobs[2]) || !hasRef(t, s, kept.ref) || !cached(t, s, kept.blobs[2]) {
		t.Error("GC did not remove the old image alone")
	}
	if used, _ := s.Usage(); used > s.EvictTarget() {
		t.Errorf("after GC the cache holds %d bytes, over its target of %d", used, s.EvictTarget())
	}
}

// TestDefaultWatermarks pins the documented defaults (docs/configuration.md, docs/metrics.md):
// the evictor starts above 95% of the budget and brings usage down to 85%.
func TestDefaultWatermarks(t *testing.T) {
	t.Parallel()
	s := newStore(t, Options{MaxSize: 1 << 40})
	putImage(t, s, "registry.test/app:1", randomBytes(42, 64<<10))
	used, _ := s.Usage()
	for _, tc := range []struct {
		name    string
		percent int64 // usage as a share of the budget, in per mille
		over    bool
	}{
		{"at 94.9%", 949, false},
		{"at 95.1%", 951, true},
	} {
		s.space.mu.Lock()
		s.space.budget = used * 1000 / tc.percent
		over := s.space.overHighLocked()
		budget := s.space.budget
		s.space.mu.Unlock()
		if over != tc.over {
			t.Errorf("usage %s of the budget: over the high watermark = %v, want %v", tc.name, over, tc.over)
		}
		if want := int64(0.85 * float64(budget)); s.EvictTarget() != want {
			t.Errorf("usage %s: EvictTarget = %d, want 85%% of the budget %d = %d", tc.name, s.EvictTarget(), budget, want)
		}
	}
}
