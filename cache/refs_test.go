package cache

import (
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// TestRefUpstreamDate: a ref keeps the registry's Date it was recorded with; a record written
// before the field existed reads as the zero time, and SetRef records none.
func TestRefUpstreamDate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t, Options{})
	target := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: 1}
	date := time.Date(2026, 3, 1, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	if err := s.SetRefAt(ctx, "r.test/app:v1", target, "https://r.test", date); err != nil {
		t.Fatal(err)
	}
	if ref, err := s.GetRef(ctx, "r.test/app:v1"); err != nil || !ref.UpstreamDate.Equal(date) {
		t.Fatalf("GetRef = %v %v, want the date %v", ref.UpstreamDate, err, date)
	}
	if err := s.SetRef(ctx, "r.test/app:v1", target, "https://r.test"); err != nil {
		t.Fatal(err)
	}
	if ref, err := s.GetRef(ctx, "r.test/app:v1"); err != nil || !ref.UpstreamDate.IsZero() {
		t.Fatalf("after SetRef: %v %v, want no date", ref.UpstreamDate, err)
	}
	old := `{"target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + target.Digest.String() + `","size":1},"verifiedAt":"2026-01-01T00:00:00Z","createdAt":"2026-01-01T00:00:00Z"}`
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRefs).Put([]byte("r.test/app:old"), []byte(old)) }); err != nil {
		t.Fatal(err)
	}
	if ref, err := s.GetRef(ctx, "r.test/app:old"); err != nil || !ref.UpstreamDate.IsZero() || ref.Target.Digest != target.Digest {
		t.Fatalf("a record without the field: %+v %v", ref, err)
	}
}
