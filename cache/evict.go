package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// evictInterval is how often the evictor checks usage without being woken by a commit.
const evictInterval = time.Minute

// maxManifestSize bounds what the evictor reads to find an image's children.
const maxManifestSize = 4 << 20

// EvictionPlan is what one eviction pass removes (or, in a dry run, would remove).
type EvictionPlan struct {
	// Refs are the evicted image refs, least recently used first.
	Refs []string `json:"refs"`
	// Blobs are the removed blobs: those reachable only from evicted refs, and unreferenced
	// blobs.
	Blobs []digest.Digest `json:"blobs"`
	// Bytes is the size of Blobs.
	Bytes int64 `json:"bytes"`
}

// Evict removes least recently used images until the cached bytes are at most target. An image
// is a ref with the blobs reachable from it (index → manifests → config and layers); a blob is
// removed only when no kept ref reaches it. Blobs no ref reaches are evicted on their own last
// use. Pinned refs, what they reach, and blobs open for reading or being written are kept, and
// so is whatever is used again while the pass runs (see evictor.apply).
// With dryRun, nothing is removed and the plan says what would be.
func (s *Store) Evict(ctx context.Context, target int64, dryRun bool) (EvictionPlan, error) {
	return s.evict.evict(ctx, target, dryRun)
}

// Evictions is the number of blobs the evictor removed since Open.
func (s *Store) Evictions() int64 { return s.evict.removed() }

// evictor removes least recently used images to keep the cache within its budget: on its own
// once usage passes the high watermark (see loop), and when asked (Store.Evict and GC).
type evictor struct {
	db      *bolt.DB
	files   layout
	space   *space
	uses    *uses
	ingests *ingests
	remove  remover

	evictions atomic.Int64 // blobs removed since Open

	// afterPlan, when set (by tests, before the Store is used), runs in each eviction pass
	// between making its plan and applying it.
	afterPlan func(EvictionPlan)
}

// loop runs an eviction pass whenever usage is over the high watermark: at start, when a
// commit takes it there, and every evictInterval, until stop is closed.
func (e *evictor) loop(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(evictInterval)
	defer t.Stop()
	for {
		if over, target := e.space.overHigh(); over {
			e.evictDownTo(ctx, target)
		}
		select {
		case <-stop:
			return
		case <-e.space.pastHigh():
		case <-t.C:
		}
	}
}

// removed is the number of blobs the evictor removed since Open.
func (e *evictor) removed() int64 { return e.evictions.Load() }

// evictDownTo runs one pass of the evictor and logs what it did.
func (e *evictor) evictDownTo(ctx context.Context, target int64) {
	plan, err := e.evict(ctx, target, false)
	if err != nil {
		log.G(ctx).WithError(err).Warn("cache eviction failed")
		return
	}
	used, budget := e.space.usage()
	log.G(ctx).WithField("refs", len(plan.Refs)).WithField("blobs", len(plan.Blobs)).
		WithField("freed", plan.Bytes).WithField("used", used).WithField("budget", budget).
		Info("evicted least recently used images")
}

// evictUnit is what eviction removes together: an image ref with what it reaches, or one blob
// no ref reaches.
type evictUnit struct {
	ref      string // "" for a lone blob
	blobs    []digest.Digest
	lastUsed time.Time
}

// evict is Store.Evict.
func (e *evictor) evict(ctx context.Context, target int64, dryRun bool) (EvictionPlan, error) {
	var plan EvictionPlan
	planned := time.Now()
	blobs, refs, err := e.snapshotIndex()
	if err != nil {
		return plan, err
	}

	// What each ref reaches, and how many kept refs reach each blob.
	reach := make(map[string][]digest.Digest, len(refs))
	holders := map[digest.Digest]int{}
	protected := map[digest.Digest]bool{}
	for _, ref := range refs {
		r := e.reachable(ctx, ref.Target, inMap(blobs))
		reach[ref.Name] = r
		for _, d := range r {
			holders[d]++
			if ref.Pinned {
				protected[d] = true
			}
		}
	}

	used, _ := e.space.usage()
	for _, d := range e.uses.reading() {
		protected[d] = true
	}
	for _, d := range e.ingests.expected() {
		protected[d] = true
	}
	lastAccess := e.uses.lastAccess(blobs)
	var units []evictUnit
	for _, ref := range refs {
		if ref.Pinned {
			continue
		}
		last := ref.VerifiedAt
		if at, ok := lastAccess[ref.Target.Digest]; ok && at.After(last) {
			last = at
		}
		units = append(units, evictUnit{ref: ref.Name, blobs: reach[ref.Name], lastUsed: last})
	}
	for d := range blobs {
		if holders[d] == 0 {
			units = append(units, evictUnit{blobs: []digest.Digest{d}, lastUsed: lastAccess[d]})
		}
	}

	sort.SliceStable(units, func(i, j int) bool { return units[i].lastUsed.Before(units[j].lastUsed) })
	for _, u := range units {
		if used-plan.Bytes <= target {
			break
		}
		var free []digest.Digest
		for _, d := range u.blobs {
			if u.ref != "" {
				holders[d]--
			}
			if holders[d] <= 0 && !protected[d] {
				free = append(free, d)
			}
		}
		if u.ref != "" {
			plan.Refs = append(plan.Refs, u.ref)
		}
		for _, d := range free {
			plan.Blobs = append(plan.Blobs, d)
			plan.Bytes += blobs[d].Size
		}
	}
	if dryRun || (len(plan.Refs) == 0 && len(plan.Blobs) == 0) {
		return plan, nil
	}
	if e.afterPlan != nil {
		e.afterPlan(plan)
	}
	return e.apply(ctx, plan, planned, refs)
}

// apply removes what the plan names, planned at that time from the refs of snapshot,
// except what was used again since. It decides and removes in one index transaction, which bbolt
// serialises with every other index write, so that nothing recorded before it is missed and
// nothing recorded after it can name a blob it is removing. It keeps:
//   - a planned ref verified again, moved to another target, or pinned since, and what it reaches;
//   - the blobs that refs recorded or moved since reach;
//   - blobs linked to a repository, read, or opened for reading or writing since.
//
// The blob files are removed inside the transaction, before it commits: a crash in between
// leaves index entries without files, which recovery drops. A ReaderAt that arrives during the
// removal finds the blob gone.
func (e *evictor) apply(ctx context.Context, plan EvictionPlan, planned time.Time, snapshot []Ref) (EvictionPlan, error) {
	before := make(map[string]Ref, len(snapshot))
	for _, ref := range snapshot {
		before[ref.Name] = ref
	}
	var done EvictionPlan
	var doomed []digest.Digest
	defer func() { e.uses.unclaim(doomed) }()
	err := e.db.Update(func(tx *bolt.Tx) error {
		refs := tx.Bucket(bucketRefs)
		kept := map[string]bool{}
		for _, name := range plan.Refs {
			v := refs.Get([]byte(name))
			if v == nil {
				continue
			}
			ref, err := decodeRef(tx, []byte(name), v)
			if err != nil {
				return err
			}
			if old := before[name]; ref.Pinned || ref.Target.Digest != old.Target.Digest || !ref.VerifiedAt.Equal(old.VerifiedAt) {
				kept[name] = true
				continue
			}
			if err := deleteRef(tx, name); err != nil {
				return err
			}
			done.Refs = append(done.Refs, name)
		}

		// The plan counted what the refs of its snapshot reach; walk only the others.
		held := map[digest.Digest]bool{}
		inIndex := func(d digest.Digest) (blobRecord, bool) {
			rec, ok, _ := getBlob(tx, d)
			return rec, ok
		}
		if err := refs.ForEach(func(k, v []byte) error {
			ref, err := decodeRef(tx, k, v)
			if err != nil {
				return err
			}
			if old, ok := before[ref.Name]; ok && !kept[ref.Name] && old.Target.Digest == ref.Target.Digest {
				return nil
			}
			for _, d := range e.reachable(ctx, ref.Target, inIndex) {
				held[d] = true
			}
			return nil
		}); err != nil {
			return err
		}
		linked, err := linkedSince(tx, plan.Blobs, planned)
		if err != nil {
			return err
		}

		candidates := map[digest.Digest]blobRecord{}
		for _, d := range plan.Blobs {
			if rec, ok := inIndex(d); ok && !held[d] && !linked[d] {
				candidates[d] = rec
			}
		}
		doomed = e.uses.claim(plan.Blobs, candidates, planned, e.ingests.isWriting)
		done.Blobs, done.Bytes, err = e.remove.inTx(tx, doomed)
		return err
	})
	if err != nil {
		return plan, fmt.Errorf("evict: %w", err)
	}
	e.remove.forget(ctx, done.Blobs, done.Bytes)
	e.evictions.Add(int64(len(done.Blobs)))
	return done, nil
}

// linkedSince reports which of dgsts were linked to some repository at or after since.
func linkedSince(tx *bolt.Tx, dgsts []digest.Digest, since time.Time) (map[digest.Digest]bool, error) {
	out := map[digest.Digest]bool{}
	links := tx.Bucket(bucketLinks)
	err := links.ForEachBucket(func(repo []byte) error {
		b := links.Bucket(repo)
		for _, d := range dgsts {
			v := b.Get([]byte(d))
			if v == nil {
				continue
			}
			var at time.Time
			if err := at.UnmarshalText(v); err != nil {
				return fmt.Errorf("link of %s to %s: %w", d, repo, err)
			}
			if !at.Before(since) {
				out[d] = true
			}
		}
		return nil
	})
	return out, err
}

// inMap looks blobs up in a snapshot of the index.
func inMap(blobs map[digest.Digest]blobRecord) func(digest.Digest) (blobRecord, bool) {
	return func(d digest.Digest) (blobRecord, bool) {
		rec, ok := blobs[d]
		return rec, ok
	}
}

// reachable lists the cached blobs reachable from desc: desc itself, and for an index or a
// manifest its children, recursively. lookup says which blobs are cached; children that are
// not are skipped.
func (e *evictor) reachable(ctx context.Context, desc ocispec.Descriptor, lookup func(digest.Digest) (blobRecord, bool)) []digest.Digest {
	seen := map[digest.Digest]bool{}
	var out []digest.Digest
	var walk func(desc ocispec.Descriptor, depth int)
	walk = func(desc ocispec.Descriptor, depth int) {
		if seen[desc.Digest] || depth > 8 {
			return
		}
		rec, ok := lookup(desc.Digest)
		if !ok {
			return
		}
		seen[desc.Digest] = true
		out = append(out, desc.Digest)
		mt := desc.MediaType
		if mt == "" {
			mt = rec.MediaType
		}
		children, err := e.children(desc.Digest, mt, rec.Size)
		if err != nil {
			log.G(ctx).WithError(err).WithField("digest", desc.Digest).Debug("cannot read image children")
		}
		for _, c := range children {
			walk(c, depth+1)
		}
	}
	walk(desc, 0)
	return out
}

// children parses a manifest or index blob for its children. Other blobs have none. It reads the
// file directly so that eviction does not count as a use.
func (e *evictor) children(dgst digest.Digest, mediaType string, size int64) ([]ocispec.Descriptor, error) {
	isIndex, isManifest := images.IsIndexType(mediaType), images.IsManifestType(mediaType)
	unknown := mediaType == "" || mediaType == "application/json"
	if !isIndex && !isManifest && !unknown || size > maxManifestSize {
		return nil, nil
	}
	p, err := e.files.blobPath(dgst)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	out, err := parseChildren(b)
	if err != nil {
		if unknown {
			return nil, nil // not JSON: a layer or other blob written without a media type
		}
		return nil, fmt.Errorf("parse %s: %w", dgst, err)
	}
	return out, nil
}

// parseChildren reads the descriptors an index (manifests) or a manifest (config, layers) names.
func parseChildren(b []byte) ([]ocispec.Descriptor, error) {
	var doc struct {
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
		Manifests []ocispec.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	out := append([]ocispec.Descriptor(nil), doc.Manifests...)
	if doc.Config != nil {
		out = append(out, *doc.Config)
	}
	return append(out, doc.Layers...), nil
}

// snapshotIndex reads every blob record and every ref in one read transaction.
func (e *evictor) snapshotIndex() (map[digest.Digest]blobRecord, []Ref, error) {
	blobs := map[digest.Digest]blobRecord{}
	var refs []Ref
	err := e.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			var rec blobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("index entry of blob %s: %w", k, err)
			}
			blobs[digest.Digest(k)] = rec
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
			ref, err := decodeRef(tx, k, v)
			refs = append(refs, ref)
			return err
		})
	})
	return blobs, refs, err
}
