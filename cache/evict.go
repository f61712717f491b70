package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
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

func (s *Store) overHighLocked() bool {
	return s.budget > 0 && float64(s.used) > s.opts.HighWatermark*float64(s.budget)
}

func (s *Store) kickEvictor() {
	select {
	case s.evictKick <- struct{}{}:
	default:
	}
}

// Evictions is the number of blobs the evictor removed since Open.
func (s *Store) Evictions() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evictions
}

func (s *Store) evictLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(evictInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.evictKick:
		case <-t.C:
		}
		s.mu.Lock()
		over := s.overHighLocked()
		target := int64(s.opts.LowWatermark * float64(s.budget))
		s.mu.Unlock()
		if !over {
			continue
		}
		plan, err := s.Evict(ctx, target, false)
		if err != nil {
			log.G(ctx).WithError(err).Warn("cache eviction failed")
			continue
		}
		used, budget := s.Usage()
		log.G(ctx).WithField("refs", len(plan.Refs)).WithField("blobs", len(plan.Blobs)).
			WithField("freed", plan.Bytes).WithField("used", used).WithField("budget", budget).
			Info("evicted least recently used images")
	}
}

// evictUnit is what eviction removes together: an image ref with what it reaches, or one blob
// no ref reaches.
type evictUnit struct {
	ref      string // "" for a lone blob
	blobs    []digest.Digest
	lastUsed time.Time
}

// Evict removes least recently used images until the cached bytes are at most target. An image
// is a ref with the blobs reachable from it (index → manifests → config and layers); a blob is
// removed only when no kept ref reaches it. Blobs no ref reaches are evicted on their own last
// use. Pinned refs, what they reach, and blobs open for reading or being written are kept.
// With dryRun, nothing is removed and the plan says what would be.
func (s *Store) Evict(ctx context.Context, target int64, dryRun bool) (EvictionPlan, error) {
	var plan EvictionPlan
	blobs, refs, err := s.snapshotIndex()
	if err != nil {
		return plan, err
	}

	// What each ref reaches, and how many kept refs reach each blob.
	reach := make(map[string][]digest.Digest, len(refs))
	holders := map[digest.Digest]int{}
	protected := map[digest.Digest]bool{}
	for _, ref := range refs {
		r := s.reachable(ctx, ref.Target, blobs)
		reach[ref.Name] = r
		for _, d := range r {
			holders[d]++
			if ref.Pinned {
				protected[d] = true
			}
		}
	}

	s.mu.Lock()
	used := s.used
	for d := range s.readers {
		protected[d] = true
	}
	for d := range s.writing {
		protected[d] = true
	}
	var units []evictUnit
	for _, ref := range refs {
		if ref.Pinned {
			continue
		}
		last := ref.VerifiedAt
		if rec, ok := blobs[ref.Target.Digest]; ok {
			if at := s.lastAccessLocked(ref.Target.Digest, rec); at.After(last) {
				last = at
			}
		}
		units = append(units, evictUnit{ref: ref.Name, blobs: reach[ref.Name], lastUsed: last})
	}
	for d, rec := range blobs {
		if holders[d] == 0 {
			units = append(units, evictUnit{blobs: []digest.Digest{d}, lastUsed: s.lastAccessLocked(d, rec)})
		}
	}
	s.mu.Unlock()

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
	return s.applyEviction(ctx, plan)
}

// applyEviction removes the plan's refs and blobs. Blobs opened for reading since the plan was
// made are kept; a ReaderAt that arrives during the removal finds them gone.
func (s *Store) applyEviction(ctx context.Context, plan EvictionPlan) (EvictionPlan, error) {
	s.mu.Lock()
	var doomed []digest.Digest
	for _, d := range plan.Blobs {
		if s.readers[d] > 0 || s.writing[d] > 0 {
			continue
		}
		s.evicting[d] = struct{}{}
		doomed = append(doomed, d)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		for _, d := range doomed {
			delete(s.evicting, d)
		}
		s.mu.Unlock()
	}()

	if err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range plan.Refs {
			if err := deleteRef(tx, name); err != nil && !errdefs.IsNotFound(err) {
				return err
			}
		}
		return nil
	}); err != nil {
		return plan, fmt.Errorf("evict refs: %w", err)
	}
	sizes := map[digest.Digest]int64{}
	_ = s.db.View(func(tx *bolt.Tx) error {
		for _, d := range doomed {
			if rec, ok, _ := getBlob(tx, d); ok {
				sizes[d] = rec.Size
			}
		}
		return nil
	})
	if _, err := s.removeBlobs(ctx, doomed); err != nil {
		return plan, fmt.Errorf("evict blobs: %w", err)
	}
	plan.Blobs, plan.Bytes = doomed, 0
	for _, d := range doomed {
		plan.Bytes += sizes[d]
	}
	s.mu.Lock()
	s.evictions += int64(len(doomed))
	s.mu.Unlock()
	return plan, nil
}

// reachable lists the cached blobs reachable from desc: desc itself, and for an index or a
// manifest its children, recursively. Children that are not cached are skipped.
func (s *Store) reachable(ctx context.Context, desc ocispec.Descriptor, blobs map[digest.Digest]blobRecord) []digest.Digest {
	seen := map[digest.Digest]bool{}
	var out []digest.Digest
	var walk func(desc ocispec.Descriptor, depth int)
	walk = func(desc ocispec.Descriptor, depth int) {
		rec, ok := blobs[desc.Digest]
		if !ok || seen[desc.Digest] || depth > 8 {
			return
		}
		seen[desc.Digest] = true
		out = append(out, desc.Digest)
		mt := desc.MediaType
		if mt == "" {
			mt = rec.MediaType
		}
		children, err := s.children(desc.Digest, mt, rec.Size)
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
func (s *Store) children(dgst digest.Digest, mediaType string, size int64) ([]ocispec.Descriptor, error) {
	isIndex, isManifest := images.IsIndexType(mediaType), images.IsManifestType(mediaType)
	unknown := mediaType == "" || mediaType == "application/json"
	if !isIndex && !isManifest && !unknown || size > maxManifestSize {
		return nil, nil
	}
	p, err := s.blobPath(dgst)
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
func (s *Store) snapshotIndex() (map[digest.Digest]blobRecord, []Ref, error) {
	blobs := map[digest.Digest]blobRecord{}
	var refs []Ref
	err := s.db.View(func(tx *bolt.Tx) error {
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
