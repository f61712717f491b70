package plan

import (
	"bytes"
	"io"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// TestLayers is the snapshotter's view of the resolver: ReaderAt finds only what is cached,
// FetchLayer fills a layer from the image's upstream once, verified, after which ReaderAt
// reads its bytes, and a layer the upstream cannot provide stays not found.
func TestLayers(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 4096)
	p, _ := newTestPlanner(t, up)
	ctx := t.Context()
	l := p.Layers()

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	want, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(want), Size: int64(len(want))}

	if _, err := l.ReaderAt(ctx, desc); !errdefs.IsNotFound(err) {
		t.Fatalf("ReaderAt of a layer never fetched: %v, want not found", err)
	}
	for range 2 {
		if err := l.FetchLayer(ctx, testRegistry+"/app:v1", desc); err != nil {
			t.Fatalf("FetchLayer: %v", err)
		}
	}
	if n := up.Count("GET blobs"); n != 1 {
		t.Errorf("two FetchLayer calls sent %d blob GETs upstream, want 1", n)
	}
	ra, err := l.ReaderAt(ctx, desc)
	if err != nil {
		t.Fatalf("ReaderAt after FetchLayer: %v", err)
	}
	defer ra.Close()
	if got, err := io.ReadAll(content.NewReader(ra)); err != nil || !bytes.Equal(got, want) {
		t.Errorf("ReaderAt after FetchLayer read %d bytes (%v), want the layer's %d", len(got), err, len(want))
	}

	absent := ocispec.Descriptor{MediaType: desc.MediaType, Digest: digest.FromString("absent"), Size: 6}
	if err := l.FetchLayer(ctx, testRegistry+"/app:v1", absent); !errdefs.IsNotFound(err) {
		t.Errorf("FetchLayer of a layer the upstream lacks: %v, want not found", err)
	}
	if _, err := l.ReaderAt(ctx, absent); !errdefs.IsNotFound(err) {
		t.Errorf("ReaderAt after a failed FetchLayer: %v, want not found", err)
	}
	if err := l.FetchLayer(ctx, "Not A Ref", desc); !errdefs.IsInvalidArgument(err) {
		t.Errorf("FetchLayer for a malformed image ref: %v, want invalid argument", err)
	}
}
