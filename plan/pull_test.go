package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

func TestPlanPullAndPull(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 64<<10)
	idx, imgs := up.PushIndex(t, "multi", "v1", "linux/amd64", "linux/arm64")
	p, _ := newTestPlanner(t, up)
	ctx := t.Context()

	plan, err := p.PlanPull(ctx, testRegistry+"/app:v1", amd64, false)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Ref != testRegistry+"/app:v1" || plan.Digest != registrytest.Digest(t, img) || len(plan.Manifests) != 1 || len(plan.Blobs) != 3 {
		t.Fatalf("plan = %+v, want one manifest, a config and two layers", plan)
	}
	total, blobs := p.PullProgress(ctx, plan)
	if blobs != 0 || total != plan.manifestBytes || plan.Size <= total {
		t.Fatalf("before the pull: progress %d (blobs %d) of %d", total, blobs, plan.Size)
	}
	gets := up.Count("GET blobs")
	if err := p.Pull(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if total, _ := p.PullProgress(ctx, plan); total != plan.Size {
		t.Errorf("after the pull: progress %d of %d", total, plan.Size)
	}
	if n := up.Count("GET blobs") - gets; n != 3 {
		t.Errorf("the pull fetched %d blobs, want 3", n)
	}
	// Again: nothing is fetched.
	gets = up.Count("GET blobs")
	if err := p.Pull(ctx, plan); err != nil || up.Count("GET blobs") != gets {
		t.Errorf("a second pull: %v, %d blobs fetched", err, up.Count("GET blobs")-gets)
	}

	// Every platform of an index.
	plan, err = p.PlanPull(ctx, testRegistry+"/multi:v1", amd64, true)
	if err != nil {
		t.Fatal(err)
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if plan.Digest != digest.Digest(idxDigest.String()) || len(plan.Manifests) != 2 || len(plan.Blobs) != 6 {
		t.Fatalf("plan of every platform = %+v", plan)
	}
	if err := p.Pull(ctx, plan); err != nil {
		t.Fatal(err)
	}
	for _, platform := range []platforms.MatchComparer{amd64, arm64} {
		if rd, err := p.Check(ctx, testRegistry+"/multi:v1", platform); err != nil || !rd.Ready {
			t.Errorf("after a pull of every platform: %+v %v", rd, err)
		}
	}
	// One platform of it.
	plan, err = p.PlanPull(ctx, testRegistry+"/multi:v1", arm64, false)
	if err != nil || len(plan.Manifests) != 1 || plan.Manifests[0].Digest != registrytest.Digest(t, imgs["linux/arm64"]) {
		t.Errorf("plan for arm64 = %+v, %v", plan, err)
	}
	if _, err := p.PlanPull(ctx, testRegistry+"/multi:v1", platforms.Only(platforms.MustParse("windows/amd64")), false); !errdefs.IsNotFound(err) {
		t.Errorf("plan for a platform the index lacks: %v, want not found", err)
	}
	if _, err := p.PlanPull(ctx, testRegistry+"/absent:v1", amd64, false); !errdefs.IsNotFound(err) {
		t.Errorf("plan for an absent tag: %v, want not found", err)
	}
}

// TestMisbehavingManifests serves manifest graphs that never end: an index whose child, when
// asked for, is the index itself again (a manifest that references itself), and indexes
// nested deeper than any real image. Planning a pull of either must end at once with an
// error that says why, and nothing that did not verify may be cached.
func TestMisbehavingManifests(t *testing.T) {
	t.Parallel()
	index := func(child ocispec.Descriptor) []byte {
		b, err := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{child}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	manifests := map[string][]byte{} // by tag or digest, as the upstream answers them

	// "self": the index names a child that the upstream answers with the index's own bytes.
	claimed := digest.FromString("the child the index names")
	self := index(ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: claimed, Size: 1 << 10})
	manifests["self"] = self
	manifests[digest.FromBytes(self).String()] = self
	manifests[claimed.String()] = self

	// "deep": indexes nested twice as deep as lifeboat follows, each by its true digest.
	child := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("a manifest never reached"), Size: 2}
	for range 2 * maxIndexDepth {
		b := index(child)
		child = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(b), Size: int64(len(b))}
		manifests[child.Digest.String()] = b
	}
	manifests["deep"] = manifests[child.Digest.String()]

	requests := 0
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
		ref, ok := strings.CutPrefix(r.URL.Path, "/v2/app/manifests/")
		body, found := manifests[ref]
		if !ok || !found {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if strings.HasPrefix(ref, "sha256:") {
			w.Header().Set("Docker-Content-Digest", ref) // what a lying registry claims
		} else {
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
		}
		if r.Method == http.MethodGet {
			w.Write(body)
		}
	}))
	t.Cleanup(srv.Close)
	// An idle timeout of 1 s, so that misbehaving upstreams fail within seconds; an upstream
	// timeout of 10 s, so that an in-process upstream slowed by a loaded machine is not taken
	// for one that does not answer: no case here depends on it.
	p, store := newPlanner(t, srv.URL, func(o *resolver.Options) {
		o.UpstreamTimeout = 10 * time.Second
		o.IdleTimeout = time.Second
	})

	for _, tc := range []struct{ tag, want string }{
		{"self", "body has digest " + digest.FromBytes(self).String()},
		{"deep", fmt.Sprintf("nested more than %d deep", maxIndexDepth)},
	} {
		for _, all := range []bool{false, true} {
			mu.Lock()
			requests = 0
			mu.Unlock()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			_, err := p.PlanPull(ctx, testRegistry+"/app:"+tc.tag, platforms.All, all)
			cancel()
			mu.Lock()
			n := requests
			mu.Unlock()
			t.Logf("pull plan of %s (all platforms: %v) after %d upstream requests: %v", tc.tag, all, n, err)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("pull plan of %s: %v, want an error naming %q", tc.tag, err, tc.want)
			}
			if n > 4*maxIndexDepth {
				t.Errorf("pull plan of %s sent %d upstream requests: the walk is not bounded", tc.tag, n)
			}
		}
	}
	if _, err := store.Info(t.Context(), claimed); !errdefs.IsNotFound(err) {
		t.Errorf("the index served for its child was cached as the child: %v", err)
	}
}
