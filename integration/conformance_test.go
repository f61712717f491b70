package integration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

const (
	// conformanceRepo is where the conformance program reads. It has no registry host in front
	// and no ns parameter, so the mirror sends it to its docker.io upstream, which the test
	// points at its own registry; two components, so docker.io does not add "library/".
	conformanceRepo = "conformance/app"
	// conformanceTimeout bounds one run of the conformance program (a run takes well under a
	// second).
	conformanceTimeout = 30 * time.Second
	// conformanceArtifactType is the artifact type of the referrer the test pushes.
	conformanceArtifactType = "application/vnd.lifeboat.test.signature.v1+json"
)

// conformanceAPIs are the APIs the read-only runs exercise; each must report Pass, not Skip or
// Disabled, so that the test cannot pass by testing nothing. Pushes, deletes, and the blob
// upload workflows with "Blob get range" (tried only on blobs the program pushed itself) are
// not among them: a pull-through mirror does not offer them.
var conformanceAPIs = []string{
	"Ping",
	"Tag listing",
	"Manifest get by tag",
	"Manifest get by digest",
	"Manifest head by tag",
	"Manifest head by digest",
	"Blob get",
	"Blob head",
	"Referrers",
}

// TestOCIConformance runs the OCI distribution-spec conformance program in its read-only mode
// against lifeboat's mirror, which fronts a real registry: once with the registry up, then again
// after the registry process is stopped, when every answer has to come from lifeboat's cache.
func TestOCIConformance(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	harness.Tool(t, harness.ToolConformance) // fail before starting anything if it is missing

	reg := harness.StartRegistry(t)
	data := seedConformance(t, reg, conformanceRepo)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {reg.URL()}},
	})

	// The program's top-level workflows (the names of its results tree under "OCI Conformance
	// Test/") that have something to do without push; "sha256 blobs" and "sha512 blobs" test
	// uploads only. Each runs on its own, selected with OCI_FILTER_TEST, to work around two
	// bugs of the pinned program that make a read-only run fail after all its checks passed:
	//   - with push disabled it panics writing results.yaml (ReportResultsYAML looks up test
	//     data that the skipped "sha256 blobs" workflow never created) and exits 2 without
	//     writing junit.xml; a workflow the filter excludes is never started;
	//   - when the OCI_RO_DATA_* lists are set but "read-only" is filtered out, writing
	//     results.yaml fails on its untouched "Unknown" status, and the program exits 0
	//     without junit.xml; so only the "read-only" run gets the lists.
	// The filter takes a single name prefix, hence one run per workflow.
	workflows := []struct {
		name string
		env  []string
	}{
		{name: "ping"},
		// Tag list and referrers of a random subject, answered before any other request.
		{name: "empty"},
		// HEAD and GET of every tag, manifest and blob the lists name, the tag list with
		// `last` paging, and referrers of each listed subject.
		{name: "read-only", env: data.env()},
		// GET of a manifest by a random digest and by a random tag: 404.
		{name: "missing-manifest"},
		// GET /v2/<repo>/manifests/sha256:baddigeststring: 400 or 404.
		{name: "invalid-digest-format"},
	}
	base := conformanceSettings(lb.Mirror, conformanceRepo)
	phase := func(t *testing.T) {
		passed := make(map[string]bool)
		for _, wf := range workflows {
			t.Run(wf.name, func(t *testing.T) {
				env := slices.Concat(base, wf.env, []string{"OCI_FILTER_TEST=OCI Conformance Test/" + wf.name})
				run := harness.RunConformance(t, conformanceTimeout, env...)
				for api, status := range run.APIs {
					if status == "Pass" {
						passed[api] = true
					}
				}
				if !run.Passed() {
					t.Errorf("conformance: %s", run.Summary())
					run.Attach(t, t.Name())
					return
				}
				t.Logf("conformance: %s", run.Summary())
			})
		}
		for _, api := range conformanceAPIs {
			if !passed[api] {
				t.Errorf("conformance: API %q did not pass in any workflow", api)
			}
		}
	}

	// No warming is needed between the phases: the first GETs every tag, manifest and blob the
	// lists name, which puts all of them in the cache, and the second asks for nothing else
	// that has to be cached. Its tag list is answered from the tags the first phase pulled (all
	// of OCI_RO_DATA_TAGS); its referrers lists are empty indexes (lifeboat does not cache
	// referrers, and the read-only mode only checks that the answer is an OCI index); its
	// missing-manifest and bad-digest checks want the 404 or 400 lifeboat gives for what is
	// neither cached nor reachable. The registry has no referrers API (it answers 404, and the
	// push of the artifact fell back to a "sha256-<hex>" tag), so lifeboat's referrers answers
	// are empty indexes in the first phase too.
	if !t.Run("upstream up", phase) {
		return
	}
	if err := reg.Process().Stop(10 * time.Second); err != nil {
		t.Fatalf("stopping the registry: %v", err)
	}
	t.Run("upstream down", phase)
}

// conformanceSettings returns the conformance program's environment for a read-only run
// against the plain-HTTP registry at host, without the data lists. The variable names are the
// pinned program's own (its config.go), not the deprecated OCI_ROOT_URL, OCI_NAMESPACE and
// OCI_TEST_* ones, which it still reads but warns about.
func conformanceSettings(host, repo string) []string {
	return []string{
		// The spec version the pinned program calls stable; it sets the API defaults.
		"OCI_VERSION=1.1",
		"OCI_REGISTRY=" + host,
		"OCI_TLS=disabled",
		"OCI_REPO1=" + repo,
		// Failing checks are logged with their request and response at warn.
		"OCI_LOG=warn",
		// Read-only: lifeboat is a pull-through mirror and answers pushes and deletes with
		// 405. With push off the program pushes no data of its own and reads what the
		// OCI_RO_DATA_* lists name instead. Deletes would only be reported as unsupported;
		// the program's README recommends switching them off with push.
		"OCI_API_PUSH=false",
		"OCI_API_TAGS_DELETE=false",
		"OCI_API_MANIFESTS_DELETE=false",
		"OCI_API_BLOBS_DELETE=false",
		// The read side, all on: the defaults, spelled out because they are what is tested.
		"OCI_API_PING=true",
		"OCI_API_PULL=true",
		"OCI_API_TAGS_LIST=true",
		"OCI_API_REFERRER=true",
		// lifeboat sends Docker-Content-Digest on every blob answer: make the program insist.
		// Not for manifests: in read-only mode the program never looks at the headers of a
		// manifest response, so requiring the header fails every manifest check whatever the
		// registry sends.
		"OCI_API_BLOBS_DIGEST_HEADER=true",
	}
}

// conformanceData is what the read-only mode reads.
type conformanceData struct {
	tags, manifests, blobs, referrers []string
}

// env returns the OCI_RO_DATA_* lists.
func (d conformanceData) env() []string {
	return []string{
		"OCI_RO_DATA_TAGS=" + strings.Join(d.tags, " "),
		"OCI_RO_DATA_MANIFESTS=" + strings.Join(d.manifests, " "),
		"OCI_RO_DATA_BLOBS=" + strings.Join(d.blobs, " "),
		"OCI_RO_DATA_REFERRERS=" + strings.Join(d.referrers, " "),
	}
}

// seedConformance pushes to the registry's repo what the read-only lists name, and returns the
// lists: an image under two tags, a multi-platform index under a third (three tags, so that the
// program also pages the tag list with `last`), an artifact referring to the image, a blob no
// manifest references, and the empty blob.
func seedConformance(t *testing.T, reg *harness.Registry, repo string) conformanceData {
	t.Helper()
	var data conformanceData

	img := reg.PushRandom(t, repo, "v1", 2, 4096)
	reg.PushImage(t, repo, "latest", img)
	idx := reg.PushMultiPlatform(t, repo, "multi", 1, 2048)
	data.tags = []string{"v1", "latest", "multi"}

	imgDigest := harness.Digest(t, img)
	data.manifests = []string{imgDigest, idx.Digest}
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		data.manifests = append(data.manifests, idx.Manifests[p])
	}

	// An artifact whose subject is the image, pushed by digest only.
	subject, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	artifact := mutate.ConfigMediaType(harness.RandomImage(t, harness.HostPlatform(), 1, 256), conformanceArtifactType)
	artifact = mutate.Subject(artifact, *subject).(v1.Image)
	data.manifests = append(data.manifests, reg.PushImage(t, repo, harness.Digest(t, artifact), artifact))
	data.referrers = []string{imgDigest}

	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	data.blobs = append([]string{cfg.String()}, harness.LayerDigests(t, img)...)
	data.blobs = append(data.blobs, harness.LayerDigests(t, idx.Images["linux/arm64"])...)

	ref, err := name.NewRepository(reg.Host()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{[]byte("a blob no manifest references\n"), {}} {
		l := static.NewLayer(b, types.OCILayer)
		if err := remote.WriteLayer(ref, l, remote.WithContext(t.Context())); err != nil {
			t.Fatalf("pushing a %d-byte blob: %v", len(b), err)
		}
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		data.blobs = append(data.blobs, d.String())
	}
	return data
}
