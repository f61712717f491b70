package cluster

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// Rendezvous returns the n names (fewer when there are fewer) with the highest
// rendezvous (highest-random-weight) hash for key, highest first. The order of names does not
// matter; removing one name moves only the keys it ranked in the top n.
//
// A name's weight for key is xxHash64(h(key) ‖ h(name)), h being xxHash64 and the two hashes
// written as 8 little-endian bytes each; equal weights (equal names, or a 64-bit collision) rank
// the lower name first. xxHash rather than a cryptographic hash: rendezvous needs only an even,
// independent spread, and every node computes it against every member for each key it announces
// or looks up; a weight costs a few ns here against about 200 ns for SHA-256. A cryptographic
// hash would buy nothing: member names are public within the cluster, so whoever can choose
// keys can aim them at a node under any unkeyed hash. Hashing the two fixed-size hashes rather
// than the two strings lets a caller hash each name once for many keys (see Ranking). Every node
// of a cluster must use the same function; TestRendezvousGolden pins it.
func Rendezvous(key string, names []string, n int) []string {
	return NewRanking(names).Top(key, n)
}

// Ranking is a list of names hashed once, to rank them for many keys as Rendezvous does (the
// cluster simulation ranks thousands of members for each of its keys).
type Ranking struct{ names []hashedName }

// NewRanking hashes names for Top.
func NewRanking(names []string) Ranking {
	hs := make([]hashedName, len(names))
	for i, name := range names {
		hs[i] = hashName(name)
	}
	return Ranking{names: hs}
}

// Top is Rendezvous(key, names, n) for the names r was made of.
func (r Ranking) Top(key string, n int) []string {
	if n <= 0 || len(r.names) == 0 {
		return nil
	}
	top := rank(xxhash.Sum64String(key), r.names, n)
	out := make([]string, len(top))
	for i, w := range top {
		out[i] = w.name
	}
	return out
}

// hashedName is a member name with its hash, to rank it for many keys.
type hashedName struct {
	name string
	hash uint64
}

func hashName(name string) hashedName {
	return hashedName{name: name, hash: xxhash.Sum64String(name)}
}

// weighted is a name with its rendezvous weight for one key.
type weighted struct {
	name   string
	weight uint64
}

// before reports whether w ranks above v: a higher weight, or an equal one and a lower name.
func (w weighted) before(v weighted) bool {
	if w.weight != v.weight {
		return w.weight > v.weight
	}
	return w.name < v.name
}

// weight is name's rendezvous weight for the key whose hash is keyHash.
func weight(keyHash uint64, name hashedName) uint64 {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], keyHash)
	binary.LittleEndian.PutUint64(b[8:], name.hash)
	return xxhash.Sum64(b[:])
}

// rank returns the n names with the highest weight for the key whose hash is keyHash, highest
// first.
func rank(keyHash uint64, names []hashedName, n int) []weighted {
	n = min(n, len(names))
	if n <= 0 {
		return nil
	}
	// top holds the best n so far, best first; n is small (the replicas), so insertion into a
	// sorted slice beats a heap.
	top := make([]weighted, 0, n)
	for _, name := range names {
		w := weighted{name: name.name, weight: weight(keyHash, name)}
		if len(top) == n && !w.before(top[n-1]) {
			continue
		}
		if len(top) < n {
			top = append(top, w)
		} else {
			top[n-1] = w
		}
		for i := len(top) - 1; i > 0 && top[i].before(top[i-1]); i-- {
			top[i], top[i-1] = top[i-1], top[i]
		}
	}
	return top
}
