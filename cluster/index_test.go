package cluster

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func blobRecs(keys ...string) []Record {
	recs := make([]Record, len(keys))
	for i, k := range keys {
		recs[i] = Record{Key: k}
	}
	return recs
}

func holderNames(hs []Holder) []string {
	var names []string
	for _, h := range hs {
		names = append(names, h.Node)
	}
	return names
}

// checkIndex checks the index's invariants: the nodes' key sets mirror the keys' holders,
// holders are sorted and unique, and the counters match.
func checkIndex(t *testing.T, x *Index) {
	t.Helper()
	x.mu.Lock()
	defer x.mu.Unlock()
	entries, tags, keyBytes := 0, 0, int64(0)
	for key, kr := range x.keys {
		if kr.key != key || len(kr.holders) == 0 {
			t.Fatalf("key %q: bad entry %+v", key, kr)
		}
		keyBytes += int64(len(key))
		for i, h := range kr.holders {
			if i > 0 && kr.holders[i-1].node.name >= h.node.name {
				t.Fatalf("key %q: holders not sorted", key)
			}
			if x.nodes[h.node.name] != h.node {
				t.Fatalf("key %q: holder %s not in nodes", key, h.node.name)
			}
			if _, ok := h.node.keys[key]; !ok {
				t.Fatalf("key %q: node %s's set lacks it", key, h.node.name)
			}
			entries++
			tags += countTag(h.tag)
		}
	}
	inSets := 0
	for name, n := range x.nodes {
		if n.name != name || len(n.keys) == 0 {
			t.Fatalf("node %q: bad entry", name)
		}
		inSets += len(n.keys)
		var nodeBytes int64
		for key := range n.keys {
			kr := x.keys[key]
			i, _ := slices.BinarySearchFunc(kr.holders, name, func(h holder, name string) int { return strings.Compare(h.node.name, name) })
			nodeBytes += recordBytes(key, kr.holders[i].tag)
		}
		if nodeBytes != n.bytes {
			t.Fatalf("node %q counts %d bytes, its records %d", name, n.bytes, nodeBytes)
		}
	}
	if entries != x.entries || inSets != x.entries || tags != x.tags || keyBytes != x.keyBytes {
		t.Fatalf("counters: entries %d (sets %d) vs %d, tags %d vs %d, key bytes %d vs %d",
			entries, inSets, x.entries, tags, x.tags, keyBytes, x.keyBytes)
	}
}

func TestIndexPutGet(t *testing.T) {
	t.Parallel()
	x := NewIndex(0, time.Minute)
	d1 := digest.FromString("1")
	tag := TagKey("docker.io", "library/alpine", "3.20")
	if refused := x.Put("node-b", append(blobRecs("k1", "k2"), Record{Key: tag, Digest: d1, Date: t0}), t0); refused.Total() != 0 {
		t.Fatalf("refused %+v", refused)
	}
	x.Put("node-a", blobRecs("k1"), t0)
	x.Put("node-c", blobRecs("k1"), t0)
	if got := holderNames(x.Get("k1", t0)); !slices.Equal(got, []string{"node-a", "node-b", "node-c"}) {
		t.Fatalf("k1 holders %q", got)
	}
	if got := x.Get("nope", t0); got != nil {
		t.Fatalf("unknown key: %v", got)
	}
	hs := x.Get(tag, t0)
	if len(hs) != 1 || hs[0] != (Holder{Node: "node-b", Digest: d1, Date: t0}) {
		t.Fatalf("tag holders %+v", hs)
	}
	// A refresh replaces the tag's record rather than adding one.
	d2 := digest.FromString("2")
	x.Put("node-b", []Record{{Key: tag, Digest: d2, Date: t0.Add(time.Second)}}, t0)
	if hs := x.Get(tag, t0); len(hs) != 1 || hs[0].Digest != d2 || !hs[0].Date.Equal(t0.Add(time.Second)) {
		t.Fatalf("tag holders after refresh %+v", hs)
	}
	if keys, entries, bytes := x.Size(); keys != 3 || entries != 5 || bytes <= 0 {
		t.Fatalf("Size = %d keys, %d entries, %d bytes", keys, entries, bytes)
	}
	checkIndex(t, x)
}

func TestIndexExpiry(t *testing.T) {
	t.Parallel()
	const ttl = time.Minute
	x := NewIndex(0, ttl)
	x.Put("node-a", blobRecs("k1", "k2"), t0)
	x.Put("node-b", blobRecs("k1"), t0.Add(30*time.Second))

	// At exactly the TTL a record still counts; past it, it does not.
	if got := holderNames(x.Get("k1", t0.Add(ttl))); !slices.Equal(got, []string{"node-a", "node-b"}) {
		t.Fatalf("at the TTL: %q", got)
	}
	if got := holderNames(x.Get("k1", t0.Add(ttl+time.Nanosecond))); !slices.Equal(got, []string{"node-b"}) {
		t.Fatalf("past the TTL: %q", got)
	}
	checkIndex(t, x) // Get forgot node-a's k1 record
	if _, entries, _ := x.Size(); entries != 2 {
		t.Fatalf("entries %d after Get expired one", entries)
	}

	// A refresh keeps a record alive.
	x.Put("node-b", blobRecs("k1"), t0.Add(80*time.Second))
	x.Expire(t0.Add(2 * ttl))
	checkIndex(t, x)
	if keys, entries, _ := x.Size(); keys != 1 || entries != 1 {
		t.Fatalf("after Expire: %d keys, %d entries", keys, entries)
	}
	if got := x.Get("k2", t0.Add(2*ttl)); got != nil {
		t.Fatalf("k2 after expiry: %v", got)
	}
	x.Expire(t0.Add(10 * ttl))
	checkIndex(t, x)
	if keys, entries, bytes := x.Size(); keys != 0 || entries != 0 || bytes != 0 {
		t.Fatalf("all expired: %d keys, %d entries, %d bytes", keys, entries, bytes)
	}

	// No TTL: records stay until dropped.
	forever := NewIndex(0, 0)
	forever.Put("node-a", blobRecs("k"), t0)
	forever.Expire(t0.Add(1000 * time.Hour))
	if len(forever.Get("k", t0.Add(1000*time.Hour))) != 1 {
		t.Fatal("a record without TTL expired")
	}
}

func TestIndexDropNode(t *testing.T) {
	t.Parallel()
	x := NewIndex(0, time.Hour)
	var keys []string
	for i := range 100 {
		keys = append(keys, fmt.Sprint("k", i))
	}
	x.Put("node-a", blobRecs(keys...), t0)
	x.Put("node-b", blobRecs(keys[:50]...), t0)
	x.Put("node-c", []Record{{Key: "tag", Digest: digest.FromString("x"), Date: t0}}, t0)
	x.DropNode("node-a")
	checkIndex(t, x)
	if k, e, _ := x.Size(); k != 51 || e != 51 {
		t.Fatalf("after dropping node-a: %d keys, %d entries", k, e)
	}
	for _, key := range keys[:50] {
		if got := holderNames(x.Get(key, t0)); !slices.Equal(got, []string{"node-b"}) {
			t.Fatalf("%s: %q", key, got)
		}
	}
	if got := x.Get(keys[60], t0); got != nil {
		t.Fatalf("%s: %v", keys[60], got)
	}
	x.DropNode("node-a") // again: nothing
	x.DropNode("nobody")
	x.DropNode("node-c")
	x.DropNode("node-b")
	checkIndex(t, x)
	if k, e, b := x.Size(); k != 0 || e != 0 || b != 0 {
		t.Fatalf("empty: %d keys, %d entries, %d bytes", k, e, b)
	}
}

// digestKeys returns n blob keys (sha256 digests, 71 bytes each).
func digestKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = BlobKey(digest.FromString(fmt.Sprint(prefix, i)))
	}
	return keys
}

// The index is bounded in bytes, and each node to a quarter of them; past either, new records
// are refused and counted, refreshes are not.
func TestIndexBound(t *testing.T) {
	t.Parallel()
	const ttl = time.Minute
	newKey := recordBytes(BlobKey(digest.FromString("x")), nil) // a record of a key of its own
	x := NewIndex(40*newKey, ttl)                               // each node: 10 such records
	a := digestKeys("a", 15)
	if got := x.Put("node-a", blobRecs(a...), t0); got != (Refused{Quota: 5}) {
		t.Fatalf("node-a's 15 records: refused %+v, want 5 past its quota", got)
	}
	for _, node := range []string{"node-b", "node-c", "node-d"} {
		if got := x.Put(node, blobRecs(digestKeys(node, 10)...), t0); got.Total() != 0 {
			t.Fatalf("%s: refused %+v", node, got)
		}
	}
	if _, _, bytes := x.Size(); bytes != 40*newKey {
		t.Fatalf("the index takes %d bytes, want its bound %d", bytes, 40*newKey)
	}
	// Full: neither a new key nor a new holder of a key it holds.
	if got := x.Put("node-e", blobRecs(digestKeys("e", 1)[0], a[0]), t0); got != (Refused{Full: 2}) {
		t.Fatalf("node-e's records in a full index: refused %+v, want 2 for a full index", got)
	}
	// A refresh always lands, even one that takes more room (a blob's record becoming a tag's).
	d := digest.FromString("d")
	refresh := make([]Record, 10)
	for i, k := range a[:10] {
		refresh[i] = Record{Key: k, Digest: d, Date: t0}
	}
	if got := x.Put("node-a", refresh, t0.Add(ttl/2)); got.Total() != 0 {
		t.Fatalf("node-a's refreshes were refused: %+v", got)
	}
	if _, _, bytes := x.Size(); bytes <= 40*newKey {
		t.Fatalf("the refreshes took no room: %d bytes", bytes)
	}
	checkIndex(t, x)
	// The others' records expire; node-a's, refreshed, stay; and new records fit again.
	x.Expire(t0.Add(ttl + ttl/4))
	if keys, entries, _ := x.Size(); keys != 10 || entries != 10 {
		t.Fatalf("after the others expired: %d keys, %d records, want node-a's 10", keys, entries)
	}
	if got := x.Put("node-e", blobRecs(digestKeys("e", 1)...), t0.Add(ttl+ttl/4)); got.Total() != 0 {
		t.Fatalf("no room after expiry: refused %+v", got)
	}
	// Keys that are empty or too long are refused whatever the room.
	long := string(make([]byte, MaxKeyLen+1))
	if got := x.Put("node-e", blobRecs("", long), t0.Add(ttl+ttl/4)); got != (Refused{Shape: 2}) {
		t.Fatalf("invalid keys: refused %+v, want 2 for their shape", got)
	}
	checkIndex(t, x)
}

// One node's flood cannot take the index from the others: it fills its quota and no more, so
// the honest node's records land, are refreshed through the flood, and, once they expired (their
// holder silent for longer than the TTL), land again (the issue's suspicion: "a full index
// drops legitimate keys at their first expiry": one sender's junk held every place).
func TestIndexFloodLeavesRoomForOthers(t *testing.T) {
	t.Parallel()
	const ttl, refreshEvery = 15 * time.Minute, 5 * time.Minute
	legit := digestKeys("legit", 100)
	x := NewIndex(int64(len(legit))*recordBytes(legit[0], nil)*nodeShare, ttl)
	now := t0
	var refused Refused
	flood := func(round int) {
		refused.add(x.Put("flooder", blobRecs(digestKeys(fmt.Sprint("junk", round), 1000)...), now))
	}
	for round := range 12 { // an hour: four TTLs
		flood(round)
		if round < 3 || round >= 8 { // silent from 15 to 40 minutes: its records expire
			if got := x.Put("honest", blobRecs(legit...), now); got.Total() != 0 {
				t.Fatalf("round %d: the honest node's records were refused: %+v", round, got)
			}
			for _, k := range legit {
				if hs := x.Get(k, now); !slices.Equal(holderNames(hs), []string{"honest"}) {
					t.Fatalf("round %d: %s has holders %v", round, k, hs)
				}
			}
		}
		now = now.Add(refreshEvery)
		x.Expire(now)
	}
	if refused.Quota == 0 || refused.Full != 0 {
		t.Errorf("the flood was refused %+v: want refusals past its quota only", refused)
	}
	checkIndex(t, x)
}

func TestIndexConcurrent(t *testing.T) {
	t.Parallel()
	const bound = 500 * 300
	x := NewIndex(bound, time.Minute)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			node := fmt.Sprint("node-", w%4)
			for i := range 2000 {
				now := t0.Add(time.Duration(i) * time.Second)
				key := fmt.Sprint("k", (i*7+w)%700)
				switch i % 50 {
				case 0:
					x.DropNode(node)
				case 1:
					x.Expire(now)
				case 2:
					x.Size()
				default:
					x.Put(node, []Record{{Key: key}, {Key: "tag", Digest: digest.FromString(key), Date: now}}, now)
					x.Get(key, now)
					NewestTag(x.Get("tag", now))
				}
			}
		})
	}
	wg.Wait()
	checkIndex(t, x)
	if _, _, bytes := x.Size(); bytes > bound+bound/10 {
		t.Fatalf("%d bytes past the bound of %d and its refreshes", bytes, bound)
	}
}

func TestNewestTag(t *testing.T) {
	t.Parallel()
	d1, d2, d3 := digest.FromString("1"), digest.FromString("2"), digest.FromString("3")
	lo, hi := min(d1, d2, d3), max(d1, d2, d3)
	t1, t2 := t0, t0.Add(time.Second)
	for _, tc := range []struct {
		name string
		hs   []Holder
		want digest.Digest
	}{
		{"none", nil, ""},
		{"only blob records", []Holder{{Node: "a"}, {Node: "b"}}, ""},
		{"one", []Holder{{Node: "a", Digest: d1, Date: t1}}, d1},
		// The test 3: A revalidated to d1 at t1, later B to d2 at t2 → d2.
		{"newest date wins", []Holder{{Node: "A", Digest: d1, Date: t1}, {Node: "B", Digest: d2, Date: t2}}, d2},
		{"newest date wins over more holders", []Holder{
			{Node: "A", Digest: d1, Date: t1}, {Node: "C", Digest: d1, Date: t1}, {Node: "D", Digest: d1, Date: t1},
			{Node: "B", Digest: d2, Date: t2},
		}, d2},
		{"a digest's newest holder counts", []Holder{
			{Node: "A", Digest: d1, Date: t1}, {Node: "B", Digest: d2, Date: t1}, {Node: "C", Digest: d1, Date: t2},
		}, d1},
		{"same date: more holders", []Holder{
			{Node: "A", Digest: d1, Date: t2}, {Node: "B", Digest: d2, Date: t2}, {Node: "C", Digest: d2, Date: t1},
		}, d2},
		{"same date, as many holders: the lowest digest", []Holder{
			{Node: "A", Digest: hi, Date: t2}, {Node: "B", Digest: lo, Date: t2},
		}, lo},
		{"lowest digest, other order", []Holder{
			{Node: "B", Digest: lo, Date: t2}, {Node: "A", Digest: hi, Date: t2},
		}, lo},
		{"same instant in other zones", []Holder{
			{Node: "A", Digest: hi, Date: t2}, {Node: "B", Digest: lo, Date: t2.In(time.FixedZone("x", 3600))},
		}, lo},
		{"records without a digest are ignored", []Holder{
			{Node: "A", Date: t2}, {Node: "B", Digest: d3, Date: t1},
		}, d3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The answer must not depend on the order of the holders.
			for range 5 {
				got, ok := NewestTag(tc.hs)
				if got != tc.want || ok != (tc.want != "") {
					t.Fatalf("NewestTag = %s, %v; want %s", got, ok, tc.want)
				}
				slices.Reverse(tc.hs)
			}
		})
	}
}

// TestIndexSizeEstimate measures the heap indexes take (100,000 keys with 1 and 3 records
// each, 2,000 keys held by 100 nodes each; a tenth of the keys tags), and checks Size's
// estimate is within a factor of 1.5 of it (they come out within 15%). The constants of Size come from these measurements.
func TestIndexSizeEstimate(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocates ~100 MB: slow under -race and -short (the race detector does not change the heap's size)")
	}
	for _, tc := range []struct{ keys, holders int }{{100_000, 1}, {100_000, 3}, {2000, 100}} {
		t.Run(fmt.Sprintf("%d keys × %d", tc.keys, tc.holders), func(t *testing.T) {
			keys := testKeys(tc.keys)
			d := digest.FromString("x")
			batches := make([][]Record, tc.holders)
			for i, key := range keys {
				for n := range batches {
					r := Record{Key: key}
					if i%10 == 0 {
						r = Record{Key: key, Digest: d, Date: t0}
					}
					batches[n] = append(batches[n], r)
				}
			}
			heap := func() uint64 {
				runtime.GC()
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				return m.HeapAlloc
			}
			before := heap()
			x := NewIndex(0, time.Hour)
			for n, recs := range batches {
				x.Put(fmt.Sprint("node-", n), recs, t0)
			}
			after := heap()
			runtime.KeepAlive(batches)
			runtime.KeepAlive(keys)
			_, entries, estimate := x.Size()
			runtime.KeepAlive(x)
			if entries != tc.keys*tc.holders {
				t.Fatalf("%d entries", entries)
			}
			// The key strings were cloned into the index, so they count in the measure too.
			measured := int64(after) - int64(before)
			ratio := float64(estimate) / float64(measured)
			t.Logf("measured %d B (%.0f B/record), estimate %d B, ratio %.2f",
				measured, float64(measured)/float64(entries), estimate, ratio)
			if ratio < 1/1.5 || ratio > 1.5 {
				t.Fatalf("the estimate %d B is not within 1.5× of the measured %d B", estimate, measured)
			}
		})
	}
}
