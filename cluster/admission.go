package cluster

import (
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// What a home admits of another node's announce: records of a key of the right shape, that this
// node is a home of, dated no later than its clock allows. The index then bounds what it keeps
// (Index.Put: its bytes, each node's share).

// keyShapeOK reports whether r's key is a blob's (a sha256 or sha512 digest, lower-case hex of
// the right length, as the OCI image spec allows them) with no digest of its own, or a tag's
// ("registry/repository:tag", each part as internal/oci's grammars have it, the registry
// spelled as oci.NormalizeHost spells it) with the digest it resolved to.
func keyShapeOK(r Record) bool {
	if isTagKey(r.Key) {
		registry, repository, tag, ok := splitTagKey(r.Key)
		if !ok || r.Digest == "" {
			return false
		}
		host, ok := oci.NormalizeHost(registry)
		return ok && host == registry && oci.ValidRepository(repository) && oci.ValidTag(tag) && validDigest(r.Digest)
	}
	return r.Digest == "" && validDigest(digest.Digest(r.Key))
}

// validDigest reports whether d is a digest the OCI image spec allows (sha256 or sha512).
func validDigest(d digest.Digest) bool {
	_, err := oci.ParseDigest(string(d))
	return err == nil
}

// splitTagKey splits a tag's key, TagKey's "registry/repository:tag": the registry up to the
// first slash (it may have a port), the tag after the last colon.
func splitTagKey(key string) (registry, repository, tag string, ok bool) {
	registry, rest, found := strings.Cut(key, "/")
	i := strings.LastIndexByte(rest, ':')
	if !found || i < 0 {
		return "", "", "", false
	}
	return registry, rest[:i], rest[i+1:], true
}

// homeCheck tells whether this node is a home of keys, with a grace window across membership
// changes: it counts, of the members that might rank above it for a key, only those alive for
// longer than the grace window (settled). A sender that ranks this node among a key's homes
// knows at least the settled members (gossip spreads a join within seconds), so this node is
// then among the key's homes counting only those: a record its sender rightly sent is never
// refused here, whichever members the sender has yet to hear of, or still counts though they
// left. What it admits beyond its keys is bounded by the members that joined within the
// window: when none did, exactly its keys.
type homeCheck struct {
	self     hashedName
	settled  []hashedName // the settled members, this node excluded
	replicas int
}

// homeCheck returns the check of this node's keys as of now.
func (h *home) homeCheck(now time.Time) homeCheck {
	return homeCheck{self: hashName(h.self), settled: h.view.settled(h.self, now.Add(-h.grace)), replicas: h.replicas}
}

// isHome reports whether fewer than replicas settled members rank above this node for key.
func (c homeCheck) isHome(key string) bool {
	kh := xxhash.Sum64String(key)
	me := weighted{name: c.self.name, weight: weight(kh, c.self)}
	above := 0
	for _, m := range c.settled {
		if (weighted{name: m.name, weight: weight(kh, m)}).before(me) {
			if above++; above >= c.replicas {
				return false
			}
		}
	}
	return true
}

// settled returns the members other than self alive since before since, hashed to rank them.
func (v *view) settled(self string, since time.Time) []hashedName {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []hashedName
	for name, m := range v.members {
		if m.State == Alive && name != self && m.since.Before(since) {
			out = append(out, hashName(name))
		}
	}
	return out
}

// admit sorts recs, announced by another node at now, into what the index may keep and what
// is refused: a key of the wrong shape, one this node is not a home of, a tag record dated
// more than the allowed clock skew past now.
func (h *home) admit(recs []Record, now time.Time) (keep []Record, refused Refused) {
	check := h.homeCheck(now)
	latest := now.Add(h.maxSkew)
	keep = recs[:0]
	for _, r := range recs {
		switch {
		case !keyShapeOK(r):
			refused.Shape++
		case r.Date.After(latest):
			refused.Future++
		case !check.isHome(r.Key):
			refused.NotHome++
		default:
			keep = append(keep, r)
		}
	}
	return keep, refused
}
