package plan

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/oci"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// FuzzParseImageRef: any string either is refused or normalizes to a reference that parses
// again to the same registry, repository, tag and digest.
func FuzzParseImageRef(f *testing.F) {
	for _, s := range []string{"alpine", "docker.io/library/alpine:3.20", "ghcr.io/org/app@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"localhost:5000/a/b:c", "UPPER/case", "a/../b", "host:99999/x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ir, err := parseImageRef(s)
		if err != nil {
			return
		}
		again, err := parseImageRef(ir.name)
		if err != nil {
			t.Fatalf("%q normalized to %q, which does not parse: %v", s, ir.name, err)
		}
		if again != ir {
			t.Fatalf("%q: %+v, then %+v", s, ir, again)
		}
		if !oci.ValidRepository(ir.repository) {
			t.Fatalf("%q gave an invalid repository %q", s, ir.repository)
		}
	})
}

// FuzzPlatformManifest chooses a platform's manifest from any index body, at any depth, as
// Warm and Check do. The choice must be containerd's: the first entry, in index order, of the
// best match, entries without a platform last; none when nothing matches. A body that is not
// an index is an error, and so is any index past maxIndexDepth. Following the choice while it
// is an index again (the body standing for each nested index) must end within maxIndexDepth.
func FuzzPlatformManifest(f *testing.F) {
	f.Add([]byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00","platform":{"os":"linux","architecture":"amd64"}}]}`), "linux/amd64", uint8(0))
	f.Add([]byte(`{"manifests":[{"platform":null},{}]}`), "linux/arm64", uint8(1))
	f.Add([]byte(`[]`), "", uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, spec string, depth uint8) {
		p, err := platforms.Parse(spec)
		if err != nil {
			p = platforms.MustParse("linux/amd64")
		}
		matcher := platforms.Only(p)
		m := resolver.Manifest{Descriptor: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(body)}, Body: body}
		d := int(depth) % (2 * maxIndexDepth)
		child, ok, err := platformManifest(m, matcher, d)
		if d >= maxIndexDepth {
			if err == nil || ok || !strings.Contains(err.Error(), "nested more than") {
				t.Fatalf("depth %d: %+v %v %v, want the depth error", d, child, ok, err)
			}
			return
		}
		var idx ocispec.Index
		if jerr := json.Unmarshal(body, &idx); jerr != nil {
			if err == nil || !errdefs.IsDataLoss(err) {
				t.Fatalf("a body that is not an index (%v): %+v %v %v", jerr, child, ok, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("an index at depth %d: %v", d, err)
		}
		var best *ocispec.Descriptor
		for i := range idx.Manifests {
			e := &idx.Manifests[i]
			switch {
			case e.Platform != nil && !matcher.Match(*e.Platform):
			case best == nil,
				best.Platform == nil && e.Platform != nil,
				best.Platform != nil && e.Platform != nil && matcher.Less(*e.Platform, *best.Platform):
				best = e
			}
		}
		if ok != (best != nil) || ok && !reflect.DeepEqual(child, *best) {
			t.Fatalf("chose %+v (ok %v), want %+v", child, ok, best)
		}

		// Nested: while the choice is an index, descend into it (this body again).
		for steps := 0; ok && images.IsIndexType(child.MediaType); steps++ {
			if steps > maxIndexDepth {
				t.Fatalf("descended %d indexes deep from depth %d", steps, d)
			}
			d++
			child, ok, err = platformManifest(m, matcher, d)
			if err != nil {
				if d < maxIndexDepth || !strings.Contains(err.Error(), "nested more than") {
					t.Fatalf("depth %d: %v", d, err)
				}
				break
			}
		}
	})
}

// planFuzzTag is the tag FuzzPlanPull plans a pull of.
const planFuzzTag = "t"

// FuzzPlanPull plans pulls from an upstream whose manifests are the input: up to 8 documents
// separated by "\n--\n", where "@k" stands for the digest of document k. A reference forward
// (k greater than the document's own number) is the true digest; a reference back or to
// itself cannot be (the digest would depend on itself), so it is a digest no document has, which
// the upstream answers with document k anyway, as lying registries do. Tag "t" is document 0;
// any other tag is answered too (document len(tag) mod n), for indexes that name children by
// tag. Whatever the input, the walk must end with a bounded number of upstream requests, cache
// nothing that did not verify, record no tag but "t", and return only what verified: the
// manifests by their true digests, named by the documents, and the blobs they name, by valid
// digests.
func FuzzPlanPull(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"config":{"digest":"`+digest.FromString("c").String()+`","size":1},"layers":[]}`), false)
	f.Add([]byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"@0"}]}`), true)
	f.Fuzz(func(t *testing.T, input []byte, all bool) {
		if len(input) > 64<<10 {
			return
		}
		up := newMemUpstream(input)
		p, store := newPlanner(t, "https://mem.test", func(o *resolver.Options) {
			o.NewClient = func(string, string) (endpoints.Client, error) { return up, nil }
		})
		ctx := t.Context()
		plan, err := p.PlanPull(ctx, testRegistry+"/app:"+planFuzzTag, platforms.Only(platforms.MustParse("linux/amd64")), all)

		// Bounded: the tag, each document at most once, and the request that failed.
		if n := up.requests.Load(); n > int64(len(up.docs))+2 {
			t.Fatalf("%d upstream requests for %d documents", n, len(up.docs))
		}
		// Nothing unverified cached: every cached blob is a document under its own digest.
		if err := store.Walk(ctx, func(info content.Info) error {
			if _, ok := up.docs[info.Digest]; !ok {
				t.Errorf("cached %s, which is no document's digest", info.Digest)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		refs, rerr := store.Refs(ctx)
		if rerr != nil {
			t.Fatal(rerr)
		}
		for _, ref := range refs {
			if ref.Name != testRegistry+"/app:"+planFuzzTag {
				t.Errorf("the walk recorded tag %s", ref.Name)
			}
		}
		if err != nil {
			return
		}

		// Only what verified comes back.
		if plan.Digest != up.tags[planFuzzTag] {
			t.Errorf("plan of %s, want document 0, %s", plan.Digest, up.tags[planFuzzTag])
		}
		named := bytes.Join(up.final, nil)
		manifests := map[digest.Digest]bool{}
		blobs := map[digest.Digest]bool{}
		for _, m := range plan.Manifests {
			body, ok := up.docs[m.Digest]
			if !ok || int64(len(body)) != m.Size {
				t.Fatalf("planned manifest %s (%d bytes) is no document", m.Digest, m.Size)
			}
			if m.Digest != plan.Digest && !bytes.Contains(named, []byte(m.Digest)) {
				t.Errorf("planned manifest %s, which no document names", m.Digest)
			}
			if manifests[m.Digest] {
				t.Errorf("manifest %s planned twice", m.Digest)
			}
			manifests[m.Digest] = true
			bs, err := imageBlobs(resolver.Manifest{Descriptor: m, Body: body})
			if err != nil {
				t.Fatalf("planned manifest %s: %v", m.Digest, err)
			}
			for _, b := range bs {
				blobs[b.Digest] = true
			}
		}
		for _, b := range plan.Blobs {
			if err := b.Digest.Validate(); err != nil {
				t.Errorf("planned blob %q: %v", b.Digest, err)
			}
			if !blobs[b.Digest] {
				t.Errorf("planned blob %s, which no planned manifest names", b.Digest)
			}
			delete(blobs, b.Digest)
		}
		for d := range blobs {
			if _, walked := up.docs[d]; !walked { // a blob named like a manifest is planned once, as that
				t.Errorf("blob %s of a planned manifest is not planned", d)
			}
		}
	})
}

// memUpstream is FuzzPlanPull's upstream: a endpoints.Client over documents held in memory.
type memUpstream struct {
	final    [][]byte                 // the documents, with their references filled in
	docs     map[digest.Digest][]byte // by true digest
	lies     map[digest.Digest][]byte // digests no document has, answered with one anyway
	tags     map[string]digest.Digest
	requests atomic.Int64
}

var _ endpoints.Client = (*memUpstream)(nil)

func newMemUpstream(input []byte) *memUpstream {
	tmpl := bytes.SplitN(input, []byte("\n--\n"), 8)
	n := len(tmpl)
	u := &memUpstream{final: make([][]byte, n), docs: map[digest.Digest][]byte{}, lies: map[digest.Digest][]byte{}, tags: map[string]digest.Digest{}}
	lie := func(k int) digest.Digest { return digest.FromString("no document has this digest " + strconv.Itoa(k)) }
	for i := n - 1; i >= 0; i-- {
		doc := tmpl[i]
		for k := range 8 {
			d := lie(k)
			if k > i && k < n {
				d = digest.FromBytes(u.final[k])
			}
			doc = bytes.ReplaceAll(doc, []byte("@"+strconv.Itoa(k)), []byte(d))
		}
		u.final[i] = doc
		u.docs[digest.FromBytes(doc)] = doc
	}
	for k := range 8 {
		u.lies[lie(k)] = u.final[k%n]
	}
	u.tags[planFuzzTag] = digest.FromBytes(u.final[0])
	return u
}

func (u *memUpstream) Endpoint() string           { return "https://mem.test" }
func (u *memUpstream) Ping(context.Context) error { return nil }

func (u *memUpstream) HeadManifest(_ context.Context, _, reference string) (ocispec.Descriptor, time.Time, error) {
	u.requests.Add(1)
	if _, err := digest.Parse(reference); err == nil {
		return ocispec.Descriptor{}, time.Time{}, fmt.Errorf("HEAD by digest: %w", errdefs.ErrNotImplemented)
	}
	d, ok := u.tags[reference]
	if !ok {
		d = digest.FromBytes(u.final[len(reference)%len(u.final)])
	}
	return ocispec.Descriptor{Digest: d, Size: int64(len(u.docs[d]))}, time.Time{}, nil
}

func (u *memUpstream) GetManifest(_ context.Context, _, reference string) (ocispec.Descriptor, []byte, error) {
	u.requests.Add(1)
	body, ok := u.docs[digest.Digest(reference)]
	if !ok {
		body, ok = u.lies[digest.Digest(reference)]
	}
	if !ok {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: %w", reference, errdefs.ErrNotFound)
	}
	return ocispec.Descriptor{Digest: digest.Digest(reference), Size: int64(len(body))}, body, nil
}

func (u *memUpstream) GetBlob(context.Context, string, digest.Digest) (io.ReadCloser, int64, error) {
	return nil, 0, errdefs.ErrNotFound
}

func (u *memUpstream) HeadBlob(context.Context, string, digest.Digest) (int64, error) {
	return 0, errdefs.ErrNotFound
}

func (u *memUpstream) Tags(context.Context, string) ([]string, error) {
	return nil, errdefs.ErrNotFound
}

func (u *memUpstream) Referrers(context.Context, string, digest.Digest, string) ([]byte, string, error) {
	return nil, "", errdefs.ErrNotFound
}
