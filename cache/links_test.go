package cache

import (
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestEachLink(t *testing.T) {
	t.Parallel()
	s := newStore(t, Options{})
	ctx := t.Context()
	a, b := digest.FromString("a"), digest.FromString("b")
	for _, l := range []struct {
		repo string
		dgst digest.Digest
	}{{"docker.io/library/x", a}, {"docker.io/library/x", b}, {"ghcr.io/o/y", a}} {
		if err := s.Link(ctx, l.repo, l.dgst); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := s.EachLink(ctx, func(repo string, d digest.Digest) bool {
		got = append(got, repo+"@"+d.String())
		return true
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"docker.io/library/x@" + a.String(), "docker.io/library/x@" + b.String(), "ghcr.io/o/y@" + a.String()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("links %v, want %v", got, want)
	}
	n := 0
	if err := s.EachLink(ctx, func(string, digest.Digest) bool { n++; return false }); err != nil || n != 1 {
		t.Errorf("stopping after the first: %d calls, err %v", n, err)
	}
}
