package cluster

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// MaxKeyLen bounds an index key, in bytes: a tag key is a registry host (at most 255), a
// repository (at most 255) and a tag (at most 128); a blob key is a digest. Longer keys are
// refused.
const MaxKeyLen = 1024

// nodeShare is the share of an index's bound one node's records may take (a quarter): no
// sender, however many records it announces, fills a home's index alone.
const nodeShare = 4

// Index is a home's in-memory record of which nodes hold which keys. Records expire after
// their TTL unless refreshed; a node's records go at once when it is declared dead or leaves.
// Safe for concurrent use.
//
// It is bounded in bytes of memory (as Size estimates them), and each node's records to a
// share of that bound (1/nodeShare): past either bound, a new record (a new key, or a new holder
// of a key) is refused and counted, but a refresh of a record it holds always lands, so that
// records whose holders keep refreshing them never leave a full index.
//
// Each key keeps its holders in a slice sorted by node name (a few for most keys, every member
// for the most popular ones), and each node the set of keys it holds, so that DropNode touches
// only that node's records.
type Index struct {
	maxBytes, maxNodeBytes int64 // zero: no bound
	ttl                    time.Duration

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
	// bytes is what its records would take if each were its key's only one (recordBytes):
	// what its quota counts.
	bytes int64
}

// Refused counts the records a home refused, by reason.
type Refused struct {
	// Full: a new record, while the index held its bound of bytes.
	Full int64
	// Quota: a new record of a node whose records held their share of the index.
	Quota int64
	// Shape: a key that is neither a blob's digest (sha256 or sha512) nor a tag
	// ("registry/repository:tag"), or a record whose digest does not match its kind.
	Shape int64
	// NotHome: a key this node is not a home of, nor was within the grace window of a
	// membership change.
	NotHome int64
	// Future: a tag record whose registry Date is further past this home's clock than the
	// allowed clock skew.
	Future int64
}

// Total is the sum of the refusals.
func (r Refused) Total() int64 { return r.Full + r.Quota + r.Shape + r.NotHome + r.Future }

// Reasons names the refusals by reason, as metrics and status name them: full, quota, shape,
// not_home, future.
func (r Refused) Reasons() map[string]int64 {
	return map[string]int64{"full": r.Full, "quota": r.Quota, "shape": r.Shape, "not_home": r.NotHome, "future": r.Future}
}

// add adds o to r.
func (r *Refused) add(o Refused) {
	r.Full += o.Full
	r.Quota += o.Quota
	r.Shape += o.Shape
	r.NotHome += o.NotHome
	r.Future += o.Future
}

// NewIndex returns an empty index of about maxBytes bytes of memory at most (zero or less: no
// bound) whose records live for ttl. A ttl of zero or less keeps records until their node is
// dropped.
func NewIndex(maxBytes int64, ttl time.Duration) *Index {
	x := &Index{
		ttl:   ttl,
		keys:  make(map[string]keyRecs),
		nodes: make(map[string]*nodeRecs),
	}
	if maxBytes > 0 {
		x.maxBytes, x.maxNodeBytes = maxBytes, max(maxBytes/nodeShare, 1)
	}
	return x
}

// Put records (or refreshes) node's records as of now, and counts those it refused: a new
// record past the index's bound (Full) or past node's share of it (Quota); a key that is empty
// or longer than MaxKeyLen (Shape). A refresh of a record the index holds is never refused.
func (x *Index) Put(node string, recs []Record, now time.Time) (refused Refused) {
	seen := now.UnixNano()
	x.mu.Lock()
	defer x.mu.Unlock()
	n := x.nodes[node]
	for _, r := range recs {
		if r.Key == "" || len(r.Key) > MaxKeyLen {
			refused.Shape++
			continue
		}
		var tag *tagInfo
		if r.Digest != "" {
			tag = &tagInfo{digest: r.Digest, date: r.Date}
		}
		kr, ok := x.keys[r.Key]
		i, found := 0, false
		if ok {
			i, found = slices.BinarySearchFunc(kr.holders, node, func(h holder, name string) int {
				return strings.Compare(h.node.name, name)
			})
		}
		if found {
			// A refresh: it lands whatever the bounds.
			h := &kr.holders[i]
			h.seen = seen
			d := countTag(tag) - countTag(h.tag)
			x.tags += d
			h.node.bytes += int64(d) * indexBytesPerTag
			h.tag = tag
			continue
		}
		cost := recordBytes(r.Key, tag)
		if x.maxNodeBytes > 0 && n != nil && n.bytes+cost > x.maxNodeBytes {
			refused.Quota++
			continue
		}
		grow := cost
		if ok {
			grow -= int64(len(r.Key)) + indexBytesPerKey // the key is there already
		}
		if x.maxBytes > 0 && x.bytes()+grow > x.maxBytes {
			refused.Full++
			continue
		}
		if !ok {
			kr = keyRecs{key: strings.Clone(r.Key)} // not a slice of a request's buffer
			x.keyBytes += int64(len(kr.key))
		}
		if n == nil {
			n = &nodeRecs{name: strings.Clone(node), keys: make(map[string]struct{})}
			x.nodes[n.name] = n
		}
		kr.holders = slices.Insert(kr.holders, i, holder{node: n, seen: seen, tag: tag})
		n.keys[kr.key] = struct{}{}
		n.bytes += cost
		x.entries++
		x.tags += countTag(tag)
		x.keys[kr.key] = kr
	}
	return refused
}

// recordBytes is what a record of key costs its node's quota: the memory of the record, and of
// its key as if no other node held it.
func recordBytes(key string, tag *tagInfo) int64 {
	return int64(len(key)) + indexBytesPerKey + indexBytesPerRecord + int64(countTag(tag))*indexBytesPerTag
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
	h.node.bytes -= recordBytes(key, h.tag)
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
		n.bytes -= recordBytes(key, kr.holders[i].tag)
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
	return len(x.keys), x.entries, x.bytes()
}

// bytes is about how many bytes of memory the index takes. x.mu is held.
func (x *Index) bytes() int64 {
	return x.keyBytes + int64(len(x.keys))*indexBytesPerKey + int64(x.entries)*indexBytesPerRecord + int64(x.tags)*indexBytesPerTag
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
