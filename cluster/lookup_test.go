package cluster

import (
	"slices"
	"testing"
	"time"
)

// A tag's lookup merges the homes' answers: every node once, with its newest record.
func TestMergeHolders(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a1 := Holder{Node: "a", Digest: "sha256:1", Date: t0}
	a2 := Holder{Node: "a", Digest: "sha256:2", Date: t0.Add(time.Second)}
	b1 := Holder{Node: "b", Digest: "sha256:1", Date: t0}
	for _, tc := range []struct {
		name    string
		answers [][]Holder
		want    []Holder
	}{
		{"one home", [][]Holder{{a1, b1}}, []Holder{a1, b1}},
		{"a home that knows only some", [][]Holder{{b1}, {a1, b1}}, []Holder{b1, a1}},
		{"a newer record of a node wins", [][]Holder{{a1}, {a2, b1}}, []Holder{a2, b1}},
		{"an older one does not replace it", [][]Holder{{a2}, {a1}}, []Holder{a2}},
		{"no answer names a holder", [][]Holder{nil, {}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var merged []Holder
			for _, hs := range tc.answers {
				merged = mergeHolders(merged, hs)
			}
			if !slices.Equal(merged, tc.want) {
				t.Errorf("merged %v, want %v", merged, tc.want)
			}
		})
	}
	if !isTagKey(TagKey("docker.io", "library/alpine", "3.20")) || isTagKey(BlobKey("sha256:0000000000000000000000000000000000000000000000000000000000000000")) {
		t.Error("isTagKey mixes up tag and blob keys")
	}
}
