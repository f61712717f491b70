package snapshot

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
)

func TestParseRequest(t *testing.T) {
	t.Parallel()
	chain := digest.FromString("chain").String()
	parent := digest.FromString("parent").String()
	blob := digest.FromString("blob")
	diffID := digest.FromString("diff")
	full := unpackLabels(chain, blob, diffID, "docker.io/library/app:1")
	with := func(k, v string) map[string]string {
		l := maps.Clone(full)
		if v == "" {
			delete(l, k)
		} else {
			l[k] = v
		}
		return l
	}

	for _, tc := range []struct {
		name    string
		parent  string
		labels  map[string]string
		want    request
		wantErr string // substring; "-" for errNoTarget
	}{
		{name: "container rootfs, no labels", wantErr: "-"},
		{name: "other labels only", labels: map[string]string{"containerd.io/gc.root": "x"}, wantErr: "-"},
		{
			name:   "layer unpack with the annotations",
			parent: parent,
			labels: full,
			want:   request{target: chain, parent: parent, layer: blob, diffID: diffID.String(), imageRef: "docker.io/library/app:1"},
		},
		{
			name:   "no image ref",
			labels: with(labelImageRef, ""),
			want:   request{target: chain, layer: blob, diffID: diffID.String()},
		},
		{
			name:    "annotations off",
			labels:  map[string]string{snapshots.LabelSnapshotRef: chain, snapshots.LabelSnapshotDiffID: diffID.String()},
			wantErr: "remote snapshot annotations",
		},
		{name: "bad layer digest", labels: with(labelLayerDigest, "sha256:xyz"), wantErr: labelLayerDigest},
		{name: "parallel unpack", labels: with(labelParentChainID, parent), wantErr: "parallel unpack"},
		{
			name:   "sequential unpack names its parent",
			parent: parent,
			labels: with(labelParentChainID, parent),
			want:   request{target: chain, parent: parent, layer: blob, diffID: diffID.String(), imageRef: "docker.io/library/app:1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseRequest(tc.parent, tc.labels)
			switch {
			case tc.wantErr == "-":
				if !errors.Is(err, errNoTarget) {
					t.Errorf("err = %v, want errNoTarget", err)
				}
			case tc.wantErr != "":
				if err == nil || errors.Is(err, errNoTarget) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err = %v, want one about %q", err, tc.wantErr)
				}
			case err != nil:
				t.Errorf("err = %v", err)
			case got != tc.want:
				t.Errorf("request = %+v, want %+v", got, tc.want)
			}
		})
	}
}
