package mirror

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// TestResolverPull serves a real resolver, over a real cache and a real upstream registry, and
// pulls through it with containerd: once with the upstream up, once after it is gone.
func TestResolverPull(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	up, res := newResolverUpstream(t)
	img := up.Push(t, "library/busybox", "1.36", 256<<10)

	var log answerLog
	srv := newServer(t, res, Options{Observe: log.observe})
	pull := func(t *testing.T) ocispec.Descriptor {
		t.Helper()
		desc, cs := pullWithContainerd(t, hostsOf(t, srv), "docker.io/library/busybox:1.36")
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			want, _ := l.Compressed()
			wantBytes, _ := io.ReadAll(want)
			got, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: digest.Digest(d.String())})
			if err != nil || !bytes.Equal(got, wantBytes) {
				t.Errorf("layer %s: %v", d, err)
			}
		}
		return desc
	}
	checkAnswers := func(t *testing.T) {
		t.Helper()
		for _, a := range log.answers() {
			if a.Status/100 != 2 {
				continue
			}
			switch a.Cache {
			case resolver.Hit, resolver.Miss, resolver.Stale, resolver.Revalidated:
			default:
				if a.Route == "tag" || a.Route == "manifest" || a.Route == "blob" {
					t.Errorf("%s %s answered %d without X-Lifeboat-Cache", a.Method, a.Route, a.Status)
				}
			}
		}
	}

	first := pull(t)
	checkAnswers(t)
	want, _ := img.Digest()
	if first.Digest.String() != want.String() {
		t.Fatalf("pulled %s, want %s", first.Digest, want)
	}

	up.Close()
	before := len(log.answers())
	if second := pull(t); second.Digest != first.Digest {
		t.Fatalf("pulled %s with the upstream down, want %s", second.Digest, first.Digest)
	}
	checkAnswers(t)
	for _, a := range log.answers()[before:] {
		// The tag could not be revalidated: stale. Everything by digest is a cache hit.
		if want := map[bool]resolver.CacheStatus{true: resolver.Stale, false: resolver.Hit}[a.Method == http.MethodHead]; a.Cache != want {
			t.Errorf("upstream down: %s %s answered %q, want %q", a.Method, a.Route, a.Cache, want)
		}
	}

	// What was never cached is a 404, so that containerd moves on.
	resp, body := do(t, srv, http.MethodGet, "/v2/library/missing/manifests/1", nil)
	checkError(t, resp, body, http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// TestResolverStatTagsReferrers covers the routes of a real resolver that a pull with
// containerd does not take: a blob HEAD (StatBlob) before and after the blob is cached, the
// tag list, and the referrers of a manifest, each answered from a real upstream registry.
func TestResolverStatTagsReferrers(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t, registry.WithReferrersSupport(true))
	img := registrytest.RandomImage(t, 4096, 1)
	write := func(tag string, img v1.Image) v1.Hash {
		t.Helper()
		registrytest.Write(t, up.URL, "library/app", tag, img)
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	imgDigest := write("1", img)
	write("2", img)
	// A referrer of the image: an artifact whose subject is it.
	desc, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	sbom := registrytest.RandomImage(t, 64, 1)
	sbom = mutate.Subject(mutate.ConfigMediaType(sbom, "application/vnd.example.sbom"), *desc).(v1.Image)
	sbomDigest := write("sbom", sbom)

	srv := newServer(t, newResolver(t, up.URL), Options{})

	layers, _ := img.Layers()
	layerDigest, _ := layers[0].Digest()
	layerSize, _ := layers[0].Size()
	blobPath := "/v2/library/app/blobs/" + layerDigest.String()
	for _, want := range []string{"miss", "hit"} {
		resp, _ := do(t, srv, http.MethodHead, blobPath, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != layerDigest.String() ||
			resp.Header.Get("Content-Length") != strconv.FormatInt(layerSize, 10) || resp.Header.Get("X-Lifeboat-Cache") != want {
			t.Errorf("HEAD of a layer (%s): %s, digest %q, length %q, X-Lifeboat-Cache %q; want 200, %s, %d, %s", want, resp.Status,
				resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Content-Length"), resp.Header.Get("X-Lifeboat-Cache"), layerDigest, layerSize, want)
		}
		if want == "miss" { // cache it
			if resp, _ := do(t, srv, http.MethodGet, blobPath, nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("GET of the layer: %s", resp.Status)
			}
		}
	}

	resp, body := do(t, srv, http.MethodGet, "/v2/library/app/tags/list", nil)
	var tags struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(body, &tags); resp.StatusCode != http.StatusOK || err != nil || tags.Name != "library/app" ||
		!slices.Equal(tags.Tags, []string{"1", "2", "sbom"}) {
		t.Errorf("tags list: %s %v %+v, want library/app with tags 1, 2 and sbom: %s", resp.Status, err, tags, body)
	}

	resp, body = do(t, srv, http.MethodGet, "/v2/library/app/referrers/"+imgDigest.String(), nil)
	var idx ocispec.Index
	if err := json.Unmarshal(body, &idx); resp.StatusCode != http.StatusOK || err != nil || len(idx.Manifests) != 1 ||
		idx.Manifests[0].Digest.String() != sbomDigest.String() {
		t.Errorf("referrers of the image: %s %v, want an index of the one referrer %s: %s", resp.Status, err, sbomDigest, body)
	}
	resp, body = do(t, srv, http.MethodGet, "/v2/library/app/referrers/"+sbomDigest.String(), nil)
	if err := json.Unmarshal(body, &idx); resp.StatusCode != http.StatusOK || err != nil || len(idx.Manifests) != 0 {
		t.Errorf("referrers of the referrer: %s %v, want an empty index: %s", resp.Status, err, body)
	}
}
