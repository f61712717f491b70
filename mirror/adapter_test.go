package mirror

import (
	"encoding/json"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestFromResolverStatTagsReferrers covers the routes of the resolver adapter that a pull with
// containerd does not take: a blob HEAD (StatBlob) before and after the blob is cached, the
// tag list, and the referrers of a manifest, each answered from a real upstream registry
// through a real resolver.
func TestFromResolverStatTagsReferrers(t *testing.T) {
	t.Parallel()
	up := httptest.NewServer(registry.New(registry.Logger(stdlog.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)))
	t.Cleanup(up.Close)
	host := mustURL(t, up.URL).Host
	img, err := random.Image(4096, 1)
	if err != nil {
		t.Fatal(err)
	}
	write := func(tag string, img v1.Image) v1.Hash {
		t.Helper()
		ref, err := name.ParseReference(host + "/library/app:" + tag)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
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
	sbom, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	sbom = mutate.Subject(mutate.ConfigMediaType(sbom, "application/vnd.example.sbom"), *desc).(v1.Image)
	sbomDigest := write("sbom", sbom)

	srv := newServer(t, FromResolver(newResolver(t, up.URL)), Options{})

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

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
