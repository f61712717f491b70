package cluster

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// A tag's lookup merges the homes' answers: every node once, with its newest record.
func TestMergeHolders(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a1 := Holder{Node: "a", Digest: "sha256:1", Date: t0}
	a2 := Holder{Node: "a", Digest: "sha256:2", Date: t0.Add(time.Second)}
	b1 := Holder{Node: "b", Digest: "sha256:1", Date: t0}
	for _, tc := range []struct {
		name    string
		answers [][]Holder
		want    []Holder
	}{
		{"one home", [][]Holder{{a1, b1}}, []Holder{a1, b1}},
		{"a home that knows only some", [][]Holder{{b1}, {a1, b1}}, []Holder{b1, a1}},
		{"a newer record of a node wins", [][]Holder{{a1}, {a2, b1}}, []Holder{a2, b1}},
		{"an older one does not replace it", [][]Holder{{a2}, {a1}}, []Holder{a2}},
		{"no answer names a holder", [][]Holder{nil, {}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var merged []Holder
			for _, hs := range tc.answers {
				merged = mergeHolders(merged, hs)
			}
			if !slices.Equal(merged, tc.want) {
				t.Errorf("merged %v, want %v", merged, tc.want)
			}
		})
	}
	if !isTagKey(TagKey("docker.io", "library/alpine", "3.20")) || isTagKey(BlobKey("sha256:0000000000000000000000000000000000000000000000000000000000000000")) {
		t.Error("isTagKey mixes up tag and blob keys")
	}
}

// healthLog is a PeerHealth that holds down the members named in down and records what the
// lookups tell it.
type healthLog struct {
	down     map[string]bool
	mu       sync.Mutex
	observed map[string][]error
}

func (h *healthLog) Down(m Member) bool { return h.down[m.Name] }

func (h *healthLog) Observe(m Member, _ time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.observed == nil {
		h.observed = map[string][]error{}
	}
	h.observed[m.Name] = append(h.observed[m.Name], err)
}

// A stopped home does not hold up a lookup once every other home answered without a holder:
// the lookup ends with their answer instead of waiting out LookupTimeout, for a blob's key and
// for a tag's alike, and tells the caller's breaker which home straggled. A home the breaker
// holds down is not asked at all.
func TestLookupDoesNotWaitOnAStraggler(t *testing.T) {
	t.Parallel()
	const timeout = 10 * time.Second
	opt := func(c *Config) { c.Replicas = 3; c.LookupTimeout = timeout }
	r := startNode(t, "127.0.21.1", "r", nil, opt)
	a := startNode(t, "127.0.21.2", "a", []string{r.gossipAddr}, opt)
	s := startNode(t, "127.0.21.3", "s", []string{r.gossipAddr}, opt)
	eventually(t, 10*time.Second, "three members alive on each node", allAlive(r, a, s))
	s.hangLookups.Store(true)

	for _, k := range []string{key(1), key(2), TagKey("registry.test", "app", "v1")} {
		health := &healthLog{}
		start := time.Now()
		hs, err := r.Lookup(t.Context(), k, WithPeerHealth(health))
		took := time.Since(start)
		if err != nil || len(hs) != 0 {
			t.Fatalf("lookup of %s, a home stopped, the others without a holder: %v, %v; want nothing", k, hs, err)
		}
		if took > timeout/4 {
			t.Errorf("lookup of %s took %v: it waited on the stopped home (LookupTimeout %v)", k, took, timeout)
		}
		health.mu.Lock()
		if got := health.observed["s"]; len(got) != 1 || !errors.Is(got[0], ErrStraggler) {
			t.Errorf("the breaker was told %v of the stopped home, want ErrStraggler", got)
		}
		if got := health.observed["a"]; len(got) != 1 || got[0] != nil {
			t.Errorf("the breaker was told %v of the home that answered, want one nil", got)
		}
		if _, ok := health.observed["r"]; ok {
			t.Error("the breaker was told of this node")
		}
		health.mu.Unlock()
	}

	// Held down, the stopped home is not asked.
	asked := s.hung.Load()
	health := &healthLog{down: map[string]bool{"s": true}}
	for i := range 3 {
		if hs, err := r.Lookup(t.Context(), key(10+i), WithPeerHealth(health)); err != nil || len(hs) != 0 {
			t.Fatalf("lookup with the stopped home down: %v, %v", hs, err)
		}
	}
	if s.hung.Load() != asked {
		t.Errorf("the home held down was asked %d times", s.hung.Load()-asked)
	}

	// A holder that the answering home knows still wins.
	a.Announce(Record{Key: key(1)})
	eventually(t, 10*time.Second, "r finds a as the holder of the key", func() bool {
		hs, err := r.Lookup(t.Context(), key(1))
		return err == nil && slices.Equal(holderNames(hs), []string{"a"})
	})
}

// TestOwnAnswerMakesNoStraggler: with two homes, this node and another, this node's own answer
// (at once, from its index) does not make the other a straggler: the lookup waits for it, as
// for a home that needs a new connection, up to LookupTimeout, and tells the breaker it timed
// out, not that it straggled.
func TestOwnAnswerMakesNoStraggler(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	opt := func(c *Config) { c.Replicas = 2; c.LookupTimeout = timeout }
	r := startNode(t, "127.0.22.1", "r", nil, opt)
	h := startNode(t, "127.0.22.2", "h", []string{r.gossipAddr}, opt)
	eventually(t, 10*time.Second, "two members alive on each node", allAlive(r, h))
	h.hangLookups.Store(true)

	health := &healthLog{}
	start := time.Now()
	if hs, err := r.Lookup(t.Context(), key(1), WithPeerHealth(health)); err != nil || len(hs) != 0 {
		t.Fatalf("lookup, the other home hung: %v, %v; want nothing", hs, err)
	}
	if took := time.Since(start); took < timeout*9/10 {
		t.Errorf("the lookup ended after %v, before LookupTimeout (%v): it did not wait for the other home", took, timeout)
	}
	health.mu.Lock()
	defer health.mu.Unlock()
	if got := health.observed["h"]; len(got) != 1 || errors.Is(got[0], ErrStraggler) || !errors.Is(got[0], context.DeadlineExceeded) {
		t.Errorf("the breaker was told %v of the other home, want its timeout", got)
	}
}
