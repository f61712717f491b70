package cluster

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// Index is a home's in-memory record of which nodes hold which keys. Records expire after
// their TTL unless refreshed; a node's records go at once when it is declared dead or leaves.
// It holds at most maxKeys keys. Safe for concurrent use.
type Index struct{}

// NewIndex returns an empty index of at most maxKeys keys whose records live for ttl.
func NewIndex(maxKeys int, ttl time.Duration) *Index { panic("not implemented yet") }

// Put records (or refreshes) node's records as of now, and returns how many were dropped
// because the index was full.
func (x *Index) Put(node string, recs []Record, now time.Time) (dropped int) {
	panic("not implemented yet")
}

// Get returns key's unexpired holders, sorted by node name.
func (x *Index) Get(key string, now time.Time) []Holder { panic("not implemented yet") }

// DropNode forgets every record of node.
func (x *Index) DropNode(node string) { panic("not implemented yet") }

// Expire forgets the records older than the TTL.
func (x *Index) Expire(now time.Time) { panic("not implemented yet") }

// Size reports the keys and records held, and about how many bytes of memory they take.
func (x *Index) Size() (keys, entries int, bytes int64) { panic("not implemented yet") }

// NewestTag picks a tag's answer from its holders' records: the digest with the newest registry
// Date; ties broken by the number of holders that name it, then by the lowest digest. ok is
// false when hs names no digest.
func NewestTag(hs []Holder) (dgst digest.Digest, ok bool) { panic("not implemented yet") }
