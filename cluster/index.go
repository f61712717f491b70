package cluster

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// MaxKeyLen bounds an index key, in bytes: a tag key is a registry host (at most 253), a
// repository and a tag (at most 128); a blob key is a digest. Longer keys are dropped.
const MaxKeyLen = 1024

// Index is a home's in-memory record of which nodes hold which keys. Records expire after
// their TTL unless refreshed; a node's records go at once when it is declared dead or leaves.
// It holds at most maxKeys keys. Safe for concurrent use.
//
// Each key keeps its holders in a slice sorted by node name (a few for most keys, every member
// for the most popular ones), and each node the set of keys it holds, so that DropNode touches
// only that node's records.
type Index struct {
	maxKeys int
	ttl     time.Duration

	mu       sync.Mutex
	keys     map[string]keyRecs
	nodes    map[string]*nodeRecs
	entries  int   // records held, over all keys
	keyBytes int64 // bytes of the key strings held
	tags     int   // records that carry a tag's digest and Date
}

// keyRecs is one key's records.
type keyRecs struct {
	key     string // the map's key, to share its bytes with the nodes' sets
	holders []holder
}

// holder is one node's record of one key.
type holder struct {
	node *nodeRecs
	seen int64    // when it was last put, Unix nanoseconds
	tag  *tagInfo // tags only
}

type tagInfo struct {
	digest digest.Digest
	date   time.Time
}

// nodeRecs is the set of keys one node holds records of.
type nodeRecs struct {
	name string
	keys map[string]struct{}
}

// NewIndex returns an empty index of at most maxKeys keys whose records live for ttl.
// A ttl of zero or less keeps records until their node is dropped.
func NewIndex(maxKeys int, ttl time.Duration) *Index {
	return &Index{
		maxKeys: maxKeys,
		ttl:     ttl,
		keys:    make(map[string]keyRecs),
		nodes:   make(map[string]*nodeRecs),
	}
}

// Put records (or refreshes) node's records as of now, and returns how many were dropped
// because the index was full. Records with an empty key or one longer than MaxKeyLen are
// dropped and counted too.
func (x *Index) Put(node string, recs []Record, now time.Time) (dropped int) {
	seen := now.UnixNano()
	x.mu.Lock()
	defer x.mu.Unlock()
	n := x.nodes[node]
	for _, r := range recs {
		if r.Key == "" || len(r.Key) > MaxKeyLen {
			dropped++
			continue
		}
		kr, ok := x.keys[r.Key]
		if !ok {
			if len(x.keys) >= x.maxKeys {
				dropped++
				continue
			}
			kr = keyRecs{key: strings.Clone(r.Key)} // not a slice of a request's buffer
			x.keyBytes += int64(len(kr.key))
		}
		if n == nil {
			n = &nodeRecs{name: strings.Clone(node), keys: make(map[string]struct{})}
			x.nodes[n.name] = n
		}
		var tag *tagInfo
		if r.Digest != "" {
			tag = &tagInfo{digest: r.Digest, date: r.Date}
		}
		i, found := slices.BinarySearchFunc(kr.holders, node, func(h holder, name string) int {
			return strings.Compare(h.node.name, name)
		})
		if found {
			h := &kr.holders[i]
			h.seen = seen
			x.tags += countTag(tag) - countTag(h.tag)
			h.tag = tag
		} else {
			kr.holders = slices.Insert(kr.holders, i, holder{node: n, seen: seen, tag: tag})
			n.keys[kr.key] = struct{}{}
			x.entries++
			x.tags += countTag(tag)
		}
		x.keys[kr.key] = kr
	}
	return dropped
}

func countTag(t *tagInfo) int {
	if t == nil {
		return 0
	}
	return 1
}

// Get returns key's unexpired holders, sorted by node name.
func (x *Index) Get(key string, now time.Time) []Holder {
	x.mu.Lock()
	defer x.mu.Unlock()
	kr, ok := x.keys[key]
	if !ok {
		return nil
	}
	if x.expireKey(&kr, now.UnixNano()) {
		return nil
	}
	out := make([]Holder, len(kr.holders))
	for i, h := range kr.holders {
		out[i] = Holder{Node: h.node.name}
		if h.tag != nil {
			out[i].Digest, out[i].Date = h.tag.digest, h.tag.date
		}
	}
	return out
}

// expireKey removes kr's expired records, and kr itself when none is left (then it reports
// true). x.mu is held.
func (x *Index) expireKey(kr *keyRecs, now int64) (gone bool) {
	if x.ttl > 0 {
		kr.holders = slices.DeleteFunc(kr.holders, func(h holder) bool {
			if now-h.seen <= int64(x.ttl) {
				return false
			}
			x.forget(kr.key, h)
			return true
		})
	}
	if len(kr.holders) == 0 {
		delete(x.keys, kr.key)
		x.keyBytes -= int64(len(kr.key))
		return true
	}
	x.keys[kr.key] = *kr
	return false
}

// forget accounts for the removal of h, key's record, from the key's holders. x.mu is held.
func (x *Index) forget(key string, h holder) {
	x.entries--
	x.tags -= countTag(h.tag)
	delete(h.node.keys, key)
	if len(h.node.keys) == 0 {
		delete(x.nodes, h.node.name)
	}
}

// DropNode forgets every record of node.
func (x *Index) DropNode(node string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n, ok := x.nodes[node]
	if !ok {
		return
	}
	for key := range n.keys {
		kr := x.keys[key]
		i, found := slices.BinarySearchFunc(kr.holders, node, func(h holder, name string) int {
			return strings.Compare(h.node.name, name)
		})
		if !found {
			continue // cannot happen: the sets mirror the holders
		}
		x.entries--
		x.tags -= countTag(kr.holders[i].tag)
		kr.holders = slices.Delete(kr.holders, i, i+1)
		if len(kr.holders) == 0 {
			delete(x.keys, key)
			x.keyBytes -= int64(len(key))
		} else {
			x.keys[key] = kr
		}
	}
	delete(x.nodes, node)
}

// Expire forgets the records older than the TTL.
func (x *Index) Expire(now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	t := now.UnixNano()
	for _, kr := range x.keys {
		x.expireKey(&kr, t)
	}
}

// Bytes of memory per key, per record and per tag record, beyond the key strings themselves,
// from TestIndexSizeEstimate (heap growth with runtime.MemStats, amd64, Go 1.26): a key costs
// about 100 B (its entry in the keys map, a 16-byte string and a 40-byte keyRecs in a table
// kept at most 7/8 full, and its holders' slice); a record 57 B when keys have 1 to 3 holders
// and 100 B when they have 100 (a 24-byte holder in a slice grown by doubling, plus its entry
// in its node's key set), so 80 B; a tag record adds a 48-byte tagInfo. The test holds the
// estimate within 1.5× of the measure for those shapes (it comes out within 15%).
const (
	indexBytesPerKey    = 100
	indexBytesPerRecord = 80
	indexBytesPerTag    = 48
)

// Size reports the keys and records held, and about how many bytes of memory they take.
func (x *Index) Size() (keys, entries int, bytes int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	bytes = x.keyBytes + int64(len(x.keys))*indexBytesPerKey + int64(x.entries)*indexBytesPerRecord + int64(x.tags)*indexBytesPerTag
	return len(x.keys), x.entries, bytes
}

// NewestTag picks a tag's answer from its holders' records: the digest with the newest registry
// Date; ties broken by the number of holders that name it, then by the lowest digest. ok is
// false when hs names no digest.
func NewestTag(hs []Holder) (dgst digest.Digest, ok bool) {
	type candidate struct {
		newest  time.Time
		holders int
	}
	cs := map[digest.Digest]*candidate{}
	for _, h := range hs {
		if h.Digest == "" {
			continue
		}
		c := cs[h.Digest]
		if c == nil {
			c = &candidate{newest: h.Date}
			cs[h.Digest] = c
		}
		c.holders++
		if h.Date.After(c.newest) {
			c.newest = h.Date
		}
	}
	var best *candidate
	for d, c := range cs {
		if best == nil || c.newest.After(best.newest) ||
			c.newest.Equal(best.newest) && (c.holders > best.holders || c.holders == best.holders && d < dgst) {
			best, dgst = c, d
		}
	}
	return dgst, best != nil
}
