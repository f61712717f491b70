package cluster

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/opencontainers/go-digest"
)

// testKeys returns k distinct blob keys, the same every run.
func testKeys(k int) []string {
	keys := make([]string, k)
	var b [8]byte
	for i := range keys {
		binary.BigEndian.PutUint64(b[:], uint64(i))
		keys[i] = BlobKey(digest.FromBytes(b[:]))
	}
	return keys
}

func testNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%03d", i)
	}
	return names
}

// slowRendezvous is the definition, computed the obvious way: every name's
// xxHash64(le64(xxHash64(key)) ‖ le64(xxHash64(name))), sorted.
func slowRendezvous(key string, names []string, n int) []string {
	ws := make([]weighted, len(names))
	for i, name := range names {
		b := binary.LittleEndian.AppendUint64(nil, xxhash.Sum64String(key))
		b = binary.LittleEndian.AppendUint64(b, xxhash.Sum64String(name))
		ws[i] = weighted{name: name, weight: xxhash.Sum64(b)}
	}
	slices.SortFunc(ws, func(a, b weighted) int {
		if a.before(b) {
			return -1
		}
		if b.before(a) {
			return 1
		}
		return 0
	})
	var out []string
	for _, w := range ws[:min(n, len(ws))] {
		out = append(out, w.name)
	}
	return out
}

// within6Sigma fails t unless got is within 6 standard deviations of the binomial(trials, p)
// mean, after checking the 6σ band is itself narrower than maxRel of the mean, so that the
// assertion says something. The hashing is deterministic, so these checks cannot flake; 6σ says
// the keys and names chosen here are no lucky draw.
func within6Sigma(t *testing.T, what string, got, trials int, p, maxRel float64) {
	t.Helper()
	mean := float64(trials) * p
	tol := 6 * math.Sqrt(float64(trials)*p*(1-p))
	if tol > maxRel*mean {
		t.Fatalf("%s: the 6σ band ±%.0f is wider than %.0f%% of the mean %.0f; use more keys", what, tol, 100*maxRel, mean)
	}
	if math.Abs(float64(got)-mean) > tol {
		t.Errorf("%s: %d, want %.0f ± %.0f (6σ)", what, got, mean, tol)
	}
}

// ringCase is a cluster shape for the statistical tests, and how wide their 6σ band may be,
// relative to the expected count.
type ringCase struct {
	members, replicas int
	maxRel            float64
}

func (c ringCase) String() string { return fmt.Sprintf("N=%d,replicas=%d", c.members, c.replicas) }

func TestRendezvousGolden(t *testing.T) {
	t.Parallel()
	// Every node must rank members the same way, across versions too: a change of the hash
	// would re-home every key of a cluster being upgraded. These values pin the function.
	names := testNames(10)
	for _, tc := range []struct {
		key  string
		want []string
	}{
		{"sha256:0000000000000000000000000000000000000000000000000000000000000000", []string{"node-009", "node-008", "node-001"}},
		{"docker.io/library/alpine:3.20", []string{"node-008", "node-009", "node-003"}},
	} {
		got := Rendezvous(tc.key, names, 3)
		if !slices.Equal(got, tc.want) {
			t.Errorf("Rendezvous(%s) = %q, want %q", tc.key, got, tc.want)
		}
	}
}

func TestRendezvousDefinition(t *testing.T) {
	t.Parallel()
	names := testNames(37)
	for _, key := range append(testKeys(200), "", "docker.io/library/alpine:3.20", strings.Repeat("k", 300)) {
		for _, n := range []int{1, 3, 37} {
			if got, want := Rendezvous(key, names, n), slowRendezvous(key, names, n); !slices.Equal(got, want) {
				t.Fatalf("Rendezvous(%q, n=%d) = %q, want %q", key, n, got, want)
			}
		}
	}
}

func TestRendezvousEdges(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		names []string
		n     int
		want  int
	}{
		{"no names", nil, 3, 0},
		{"n zero", testNames(5), 0, 0},
		{"n negative", testNames(5), -1, 0},
		{"fewer names than n", testNames(2), 3, 2},
		{"one name", testNames(1), 3, 1},
		{"many names", testNames(50), 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Rendezvous("k", tc.names, tc.n)
			if len(got) != tc.want {
				t.Fatalf("got %d names %q, want %d", len(got), got, tc.want)
			}
			seen := map[string]bool{}
			for _, g := range got {
				if seen[g] || !slices.Contains(tc.names, g) {
					t.Fatalf("got %q: a name twice or one not given", got)
				}
				seen[g] = true
			}
		})
	}
	// Equal names (a misuse) tie on weight; the result is still deterministic.
	if got := Rendezvous("k", []string{"b", "a", "a"}, 3); len(got) != 3 {
		t.Fatalf("got %q", got)
	}
}

func TestRendezvousOrderOfNamesDoesNotMatter(t *testing.T) {
	t.Parallel()
	names := testNames(100)
	keys := testKeys(2000)
	want := make([][]string, len(keys))
	for i, k := range keys {
		want[i] = Rendezvous(k, names, 3)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		shuffled := slices.Clone(names)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		for i, k := range keys {
			if got := Rendezvous(k, shuffled, 3); !slices.Equal(got, want[i]) {
				t.Fatalf("key %s: %q after a shuffle, %q before", k, got, want[i])
			}
		}
	}
}

// TestRendezvousRemoveMovesOnlyItsKeys is the test 7: removing one of N members moves
// about replicas/N of the keys' homes, and only keys that member was a home of.
func TestRendezvousRemoveMovesOnlyItsKeys(t *testing.T) {
	t.Parallel()
	const k = 100_000
	keys := testKeys(k)
	for _, tc := range []ringCase{
		{10, 1, 0.06},
		{10, 3, 0.04},
		{100, 1, 0.2},
		{100, 3, 0.11},
	} {
		t.Run(tc.String(), func(t *testing.T) {
			t.Parallel()
			names := testNames(tc.members)
			gone := names[tc.members/2]
			rest := slices.Delete(slices.Clone(names), tc.members/2, tc.members/2+1)
			moved := 0
			for _, key := range keys {
				before := Rendezvous(key, names, tc.replicas)
				after := Rendezvous(key, rest, tc.replicas)
				i := slices.Index(before, gone)
				if i < 0 {
					if !slices.Equal(before, after) {
						t.Fatalf("key %s moved from %q to %q though %s was not among its homes", key, before, after, gone)
					}
					continue
				}
				moved++
				// The others keep their order; one new home joins at the end.
				kept := slices.Delete(slices.Clone(before), i, i+1)
				if !slices.Equal(after[:len(kept)], kept) || slices.Contains(before, after[len(after)-1]) {
					t.Fatalf("key %s: homes %q became %q after %s left", key, before, after, gone)
				}
			}
			within6Sigma(t, "keys moved", moved, k, float64(tc.replicas)/float64(tc.members), tc.maxRel)
		})
	}
}

// TestRendezvousAddMovesItsShare: a new member takes about replicas/(N+1) of the keys' home
// places, each from the key's lowest-ranked home, and changes nothing else.
func TestRendezvousAddMovesItsShare(t *testing.T) {
	t.Parallel()
	const k = 100_000
	keys := testKeys(k)
	for _, tc := range []ringCase{
		{10, 3, 0.04},
		{100, 3, 0.11},
	} {
		t.Run(tc.String(), func(t *testing.T) {
			t.Parallel()
			names := testNames(tc.members)
			more := append(slices.Clone(names), "node-new")
			moved := 0
			for _, key := range keys {
				before := Rendezvous(key, names, tc.replicas)
				after := Rendezvous(key, more, tc.replicas)
				i := slices.Index(after, "node-new")
				if i < 0 {
					if !slices.Equal(before, after) {
						t.Fatalf("key %s moved from %q to %q though the new member is not its home", key, before, after)
					}
					continue
				}
				moved++
				if want := slices.Insert(slices.Clone(before[:len(before)-1]), i, "node-new"); !slices.Equal(after, want) {
					t.Fatalf("key %s: homes %q became %q, want %q", key, before, after, want)
				}
			}
			within6Sigma(t, "keys moved", moved, k, float64(tc.replicas)/float64(tc.members+1), tc.maxRel)
		})
	}
}

// TestRendezvousEvenLoad: every member is a home of about replicas/N of the keys.
func TestRendezvousEvenLoad(t *testing.T) {
	t.Parallel()
	const k = 100_000
	keys := testKeys(k)
	for _, tc := range []ringCase{
		// 100k keys on 10 members: ±6σ is ±5.7% of the 10,000 each holds as first home, and
		// ±2.9% of the 30,000 home places each holds with 3 replicas.
		{10, 1, 0.06},
		{10, 3, 0.03},
		{100, 3, 0.11},
	} {
		t.Run(tc.String(), func(t *testing.T) {
			t.Parallel()
			names := testNames(tc.members)
			count := map[string]int{}
			first := map[string]int{}
			for _, key := range keys {
				homes := Rendezvous(key, names, tc.replicas)
				first[homes[0]]++
				for _, h := range homes {
					count[h]++
				}
			}
			for _, name := range names {
				within6Sigma(t, name+" home places", count[name], k, float64(tc.replicas)/float64(tc.members), tc.maxRel)
				if tc.replicas > 1 {
					// Being first home (the coalescing fill's home) is even too; the band is
					// wider, so only check it on few members.
					if tc.members <= 10 {
						within6Sigma(t, name+" first homes", first[name], k, 1/float64(tc.members), 0.06)
					}
				}
			}
		})
	}
}

func BenchmarkRendezvous(b *testing.B) {
	for _, members := range []int{20, 1000} {
		b.Run(fmt.Sprint(members), func(b *testing.B) {
			names := testNames(members)
			key := testKeys(1)[0]
			for b.Loop() {
				Rendezvous(key, names, 3)
			}
		})
	}
}

func BenchmarkRank(b *testing.B) {
	names := testNames(1000)
	hs := make([]hashedName, len(names))
	for i, n := range names {
		hs[i] = hashName(n)
	}
	for b.Loop() {
		rank(12345, hs, 3)
	}
}
