package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// Ref is a cached image reference: a name such as "docker.io/library/alpine:3.20" (or
// "registry/repository@digest") and the descriptor it resolved to.
type Ref struct {
	Name   string             `json:"name"`
	Target ocispec.Descriptor `json:"target"`
	// VerifiedAt is when the upstream last confirmed Target for Name.
	VerifiedAt time.Time `json:"verifiedAt"`
	// Endpoint is the upstream endpoint that answered.
	Endpoint string `json:"endpoint,omitempty"`
	// CreatedAt is when Name was first cached.
	CreatedAt time.Time `json:"createdAt"`
	// UpstreamDate is the registry's Date header of the answer that last confirmed Target (the
	// local time of that answer when the registry sent none); zero for refs recorded without
	// one. Node clocks differ: the cluster compares revalidations by this date.
	UpstreamDate time.Time `json:"upstreamDate,omitzero"`
	// Pinned refs and what they reach are never evicted. Filled in on reads only.
	Pinned bool `json:"-"`
}

// refRecord is the index entry of a ref; the name is the key.
type refRecord struct {
	Target     ocispec.Descriptor `json:"target"`
	VerifiedAt time.Time          `json:"verifiedAt"`
	Endpoint   string             `json:"endpoint,omitempty"`
	CreatedAt  time.Time          `json:"createdAt"`
	// UpstreamDate is optional: records written before it existed decode without it.
	UpstreamDate time.Time `json:"upstreamDate,omitzero"`
}

func validRefName(name string) error {
	if name == "" || len(name) > 4096 {
		return fmt.Errorf("invalid ref name %q: %w", name, errdefs.ErrInvalidArgument)
	}
	return nil
}

// SetRef records that name resolves to target, as just verified against endpoint.
func (s *Store) SetRef(ctx context.Context, name string, target ocispec.Descriptor, endpoint string) error {
	return s.SetRefAt(ctx, name, target, endpoint, time.Time{})
}

// SetRefAt is SetRef with the registry's Date header of the answer that confirmed target (see
// Ref.UpstreamDate).
func (s *Store) SetRefAt(ctx context.Context, name string, target ocispec.Descriptor, endpoint string, upstreamDate time.Time) error {
	if err := validRefName(name); err != nil {
		return err
	}
	if err := target.Digest.Validate(); err != nil {
		return fmt.Errorf("ref %s: invalid target digest: %v: %w", name, err, errdefs.ErrInvalidArgument)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRefs)
		now := time.Now()
		rec := refRecord{Target: target, VerifiedAt: now, Endpoint: endpoint, CreatedAt: now, UpstreamDate: upstreamDate.UTC()}
		if v := b.Get([]byte(name)); v != nil {
			var old refRecord
			if json.Unmarshal(v, &old) == nil && !old.CreatedAt.IsZero() {
				rec.CreatedAt = old.CreatedAt
			}
		}
		v, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), v)
	})
}

// GetRef returns the cached ref. If there is none, ErrNotFound is returned.
func (s *Store) GetRef(ctx context.Context, name string) (Ref, error) {
	var ref Ref
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRefs).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("ref %s: %w", name, errdefs.ErrNotFound)
		}
		var err error
		ref, err = decodeRef(tx, []byte(name), v)
		return err
	})
	return ref, err
}

func decodeRef(tx *bolt.Tx, name, v []byte) (Ref, error) {
	var rec refRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return Ref{}, fmt.Errorf("index entry of ref %s: %w", name, err)
	}
	return Ref{
		Name: string(name), Target: rec.Target, VerifiedAt: rec.VerifiedAt, Endpoint: rec.Endpoint,
		CreatedAt: rec.CreatedAt, UpstreamDate: rec.UpstreamDate, Pinned: tx.Bucket(bucketPins).Get(name) != nil,
	}, nil
}

// Refs lists every cached ref in name order.
func (s *Store) Refs(ctx context.Context) ([]Ref, error) {
	var refs []Ref
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
			ref, err := decodeRef(tx, k, v)
			if err == nil {
				refs = append(refs, ref)
			}
			return err
		})
	})
	return refs, err
}

// DeleteRef forgets the ref and its pin; the blobs stay until evicted. If there is no such
// ref, ErrNotFound is returned.
func (s *Store) DeleteRef(ctx context.Context, name string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return deleteRef(tx, name) })
}

func deleteRef(tx *bolt.Tx, name string) error {
	b := tx.Bucket(bucketRefs)
	if b.Get([]byte(name)) == nil {
		return fmt.Errorf("ref %s: %w", name, errdefs.ErrNotFound)
	}
	if err := tx.Bucket(bucketPins).Delete([]byte(name)); err != nil {
		return err
	}
	return b.Delete([]byte(name))
}

// Pin keeps the ref, and every blob it reaches, out of eviction. If the ref is not cached,
// ErrNotFound is returned.
func (s *Store) Pin(ctx context.Context, name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketRefs).Get([]byte(name)) == nil {
			return fmt.Errorf("ref %s: %w", name, errdefs.ErrNotFound)
		}
		v, err := time.Now().MarshalText()
		if err != nil {
			return err
		}
		return tx.Bucket(bucketPins).Put([]byte(name), v)
	})
}

// Unpin makes the ref evictable again. If it was not pinned, ErrNotFound is returned.
func (s *Store) Unpin(ctx context.Context, name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		if b.Get([]byte(name)) == nil {
			return fmt.Errorf("pin %s: %w", name, errdefs.ErrNotFound)
		}
		return b.Delete([]byte(name))
	})
}

// Link records that dgst was fetched under repository (e.g. "docker.io/library/alpine"), so
// that it is served for that repository only, as a registry would.
func (s *Store) Link(ctx context.Context, repository string, dgst digest.Digest) error {
	if err := validRefName(repository); err != nil {
		return err
	}
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("link %s: %v: %w", repository, err, errdefs.ErrInvalidArgument)
	}
	return s.db.Update(func(tx *bolt.Tx) error { return putLink(tx, repository, dgst, time.Now()) })
}

func putLink(tx *bolt.Tx, repository string, dgst digest.Digest, at time.Time) error {
	v, err := at.MarshalText()
	if err != nil {
		return err
	}
	b, err := tx.Bucket(bucketLinks).CreateBucketIfNotExists([]byte(repository))
	if err != nil {
		return err
	}
	return b.Put([]byte(dgst), v)
}

// Linked reports whether dgst was fetched under repository.
func (s *Store) Linked(ctx context.Context, repository string, dgst digest.Digest) (bool, error) {
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketLinks).Bucket([]byte(repository)); b != nil {
			ok = b.Get([]byte(dgst)) != nil
		}
		return nil
	})
	return ok, err
}

// unlinkAll drops the links of removed blobs from every repository, and repositories left
// without links.
func unlinkAll(tx *bolt.Tx, dgsts []digest.Digest) error {
	links := tx.Bucket(bucketLinks)
	var empty [][]byte
	err := links.ForEachBucket(func(repo []byte) error {
		b := links.Bucket(repo)
		for _, dgst := range dgsts {
			if err := b.Delete([]byte(dgst)); err != nil {
				return err
			}
		}
		if k, _ := b.Cursor().First(); k == nil {
			empty = append(empty, append([]byte(nil), repo...))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, repo := range empty {
		if err := links.DeleteBucket(repo); err != nil {
			return err
		}
	}
	return nil
}
