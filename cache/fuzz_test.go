package cache

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzEvictWalk stores arbitrary bytes as a manifest of an image and runs eviction over it:
// whatever a registry served, walking it must not panic or loop, and eviction must keep the
// index consistent. Run it longer with `make fuzz`.
func FuzzEvictWalk(f *testing.F) {
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: 1}}}
	b, _ := json.Marshal(idx)
	f.Add(b, ocispec.MediaTypeImageIndex)
	m := ocispec.Manifest{Config: ocispec.Descriptor{Digest: digest.FromString("c")}, Layers: []ocispec.Descriptor{{Digest: digest.FromString("l")}}}
	b, _ = json.Marshal(m)
	f.Add(b, ocispec.MediaTypeImageManifest)
	f.Add([]byte(`{"manifests":[{"digest":"sha256:../../etc"}],"layers":null}`), "")
	f.Add([]byte("not json"), "application/json")
	f.Fuzz(func(t *testing.T, body []byte, mediaType string) {
		if len(body) > 1<<16 {
			return
		}
		s := newStore(t, Options{MaxSize: 1 << 30})
		desc := writeBlob(t, s, mediaType, body)
		if err := s.SetRef(t.Context(), "registry.test/fuzz:1", desc, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Evict(t.Context(), 0, false); err != nil {
			t.Fatal(err)
		}
		if used, _ := s.Usage(); used != 0 {
			t.Fatalf("%d bytes left after evicting everything", used)
		}
	})
}

// FuzzParseChildren reads the children of any bytes as eviction does, and checks what it
// returns against the document: only JSON parses; every child and every digest, media type and
// size it carries was in the document (no child is invented: no more children that name anything
// than objects); digests come back verbatim, valid or not (eviction only looks them up among cached
// blobs, which have valid digests). The input also builds a real manifest and index from chunks
// of itself, whose children must come back exactly, in order: manifests, config, layers.
func FuzzParseChildren(f *testing.F) {
	f.Add([]byte(`{"config":{"digest":"sha256:00"},"layers":[{"size":-1}],"manifests":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		children, err := parseChildren(b)
		if err != nil {
			if children != nil {
				t.Fatal("children returned with an error")
			}
		} else {
			if !json.Valid(b) {
				t.Fatalf("parsed children of invalid JSON %q", b)
			}
			// Every string, number and object of the document, read token by token: a key
			// given twice counts both times, as encoding/json (here and in containerd) decodes
			// the second into what the first left.
			strs, nums, objects := map[string]bool{}, map[float64]bool{}, 0
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.UseNumber()
			for {
				tok, err := dec.Token()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("valid JSON %q: %v", b, err)
				}
				switch tok := tok.(type) {
				case string:
					strs[tok] = true
				case json.Number:
					if f, err := tok.Float64(); err == nil {
						nums[f] = true
					}
				case json.Delim:
					if tok == '{' {
						objects++
					}
				}
			}
			nonEmpty := 0 // a null in a list is an empty child, as harmless as one that names nothing
			for _, c := range children {
				if c.Digest != "" || c.MediaType != "" || c.Size != 0 || c.Platform != nil || len(c.Annotations) != 0 {
					nonEmpty++
				}
			}
			if nonEmpty > objects {
				t.Fatalf("%d children from a document of %d objects", nonEmpty, objects)
			}
			for _, c := range children {
				if c.Digest != "" && !strs[string(c.Digest)] {
					t.Fatalf("child digest %q is not in the document", c.Digest)
				}
				if c.MediaType != "" && !strs[c.MediaType] {
					t.Fatalf("child media type %q is not in the document", c.MediaType)
				}
				if c.Size != 0 && !nums[float64(c.Size)] {
					t.Fatalf("child size %d is not in the document", c.Size)
				}
			}
		}

		// Round trip: descriptors made of the input's chunks, some with valid digests, some not.
		var descs []ocispec.Descriptor
		for i, chunk := range bytes.SplitN(b, []byte{','}, 9) {
			d := ocispec.Descriptor{MediaType: strings.ToValidUTF8(string(chunk), "?"), Digest: digest.FromBytes(chunk), Size: int64(len(chunk))}
			if i%3 == 2 {
				d.Digest = digest.Digest(strings.ToValidUTF8(string(chunk), "?")) // verbatim, valid or not
			}
			descs = append(descs, d)
		}
		config, layers := descs[0], descs[1:]
		idx := ocispec.Index{Manifests: layers}
		idx.SchemaVersion = 2
		for _, tc := range []struct {
			doc  any
			want []ocispec.Descriptor
		}{
			{ocispec.Manifest{Config: config, Layers: layers}, descs},
			{idx, layers},
		} {
			body, err := json.Marshal(tc.doc)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseChildren(body)
			if err != nil {
				t.Fatalf("%s: %v", body, err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d children of %s, want %d", len(got), body, len(tc.want))
			}
			for i := range got {
				if got[i].Digest != tc.want[i].Digest || got[i].MediaType != tc.want[i].MediaType || got[i].Size != tc.want[i].Size {
					t.Fatalf("child %d of %s: %+v, want %+v", i, body, got[i], tc.want[i])
				}
			}
		}
	})
}
