package cache

import (
	"testing"

	"github.com/containerd/errdefs"
)

// TestReserve: the blobs being written together never hold more than the budget; a write that
// does not fit is refused as the cache being full; the earlier write goes on, taking back the
// room of the later ones, which then fail; released room is free again.
func TestReserve(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), t.TempDir(), Options{MaxSize: 10 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Reserve(11 << 20); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("a blob larger than the budget: %v, want resource exhausted", err)
	}
	first, err := s.Reserve(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.Reserve(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reserve(4 << 20); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("a third write past the budget: %v, want resource exhausted", err)
	}
	if got := s.Reserved(); got != 8<<20 {
		t.Fatalf("reserved %d, want %d (a refused write holds nothing)", got, 8<<20)
	}
	if err := first.Grow(8 << 20); err != nil {
		t.Fatalf("the earlier write growing: %v", err)
	}
	if got := s.Reserved(); got != 8<<20 {
		t.Errorf("reserved %d after the earlier write took the later one's room, want %d", got, 8<<20)
	}
	if err := second.Grow(5 << 20); !errdefs.IsResourceExhausted(err) {
		t.Errorf("the later write, its room taken back: %v, want resource exhausted", err)
	}
	second.Release()
	first.Release()
	first.Release() // a second release does nothing
	if got := s.Reserved(); got != 0 {
		t.Errorf("reserved %d after every release, want 0", got)
	}
	if r, err := s.Reserve(10 << 20); err != nil {
		t.Errorf("the whole budget, free again: %v", err)
	} else {
		r.Release()
	}
}
