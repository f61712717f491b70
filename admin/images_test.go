package admin

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

func TestImagesPinRemove(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "v1", 16<<10)
	up.Push(t, "app", "v2", 16<<10)
	c := newDrillService(t, up)
	ctx := t.Context()
	v1, v2 := drillRegistry+"/app:v1", drillRegistry+"/app:v2"

	rep, err := c.Images(ctx, ImagesRequest{})
	if err != nil || rep.Images == nil || len(rep.Images) != 0 {
		t.Fatalf("images of an empty cache: %+v %v", rep, err)
	}

	// A pull reports each image's progress, then its result, in the order of the refs.
	var mu sync.Mutex
	states := map[string][]string{}
	pulled, err := c.Pull(ctx, PullRequest{Refs: []string{v2, "Not A Ref", v1, drillRegistry + "/app:absent"}}, func(p PullProgress) {
		mu.Lock()
		defer mu.Unlock()
		if s := states[p.Ref]; len(s) == 0 || s[len(s)-1] != p.State {
			states[p.Ref] = append(s, p.State)
		}
		if (p.Result != nil) != (p.State == PullDone || p.State == PullFailed) {
			t.Errorf("progress %+v: a result comes with the last report only", p)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if pulled.Pulled != 2 || pulled.Failed != 2 || len(pulled.Results) != 4 {
		t.Fatalf("pull: %+v", pulled)
	}
	for i, want := range []string{v2, "Not A Ref", v1, drillRegistry + "/app:absent"} {
		res := pulled.Results[i]
		if res.Ref != want || (res.Error == "") != (i%2 == 0) {
			t.Errorf("result %d: %+v, want %s", i, res, want)
		}
	}
	if res := pulled.Results[0]; res.Bytes <= 0 || res.FetchedBytes <= 0 || res.CachedBytes != 0 || !strings.HasPrefix(res.Digest, "sha256:") {
		t.Errorf("first pull of %s: %+v", v2, res)
	}
	if e := pulled.Results[3].Error; strings.HasPrefix(e, pulled.Results[3].Ref) || !strings.Contains(e, "no such tag") {
		t.Errorf("error of an absent tag: %q, want the reason without the ref again", e)
	}
	for _, ref := range []string{v1, v2} {
		if !slices.Equal(states[ref], []string{PullResolving, PullPulling, PullDone}) {
			t.Errorf("progress states of %s: %q", ref, states[ref])
		}
	}
	if !slices.Equal(states["Not A Ref"], []string{PullFailed}) {
		t.Errorf("progress states of a malformed ref: %q", states["Not A Ref"])
	}

	// Pulled again: nothing is fetched.
	again, err := c.Pull(ctx, PullRequest{Refs: []string{v1}}, nil)
	if err != nil || again.Pulled != 1 || again.Results[0].FetchedBytes != 0 || again.Results[0].CachedBytes <= 0 {
		t.Fatalf("second pull: %+v %v", again, err)
	}

	rep, err = c.Images(ctx, ImagesRequest{Platform: "linux/arm64"})
	if err != nil || len(rep.Images) != 2 || rep.Images[0].Ref != v1 || rep.Images[1].Ref != v2 || rep.Platform != "linux/arm64" {
		t.Fatalf("images: %+v %v", rep, err)
	}
	for _, img := range rep.Images {
		if !img.Complete || img.Size <= 0 || img.Pinned || img.LastUsed.IsZero() || img.Missing == nil || img.Platforms == nil {
			t.Errorf("image %+v", img)
		}
	}

	// pin / unpin: idempotent, and say whether anything changed.
	for _, step := range []struct {
		call            func() (RefResult, error)
		pinned, changed bool
	}{
		{func() (RefResult, error) { return c.Pin(ctx, RefRequest{Ref: v1}) }, true, true},
		{func() (RefResult, error) { return c.Pin(ctx, RefRequest{Ref: v1}) }, true, false},
		{func() (RefResult, error) { return c.Unpin(ctx, RefRequest{Ref: v1}) }, false, true},
		{func() (RefResult, error) { return c.Unpin(ctx, RefRequest{Ref: v1}) }, false, false},
		{func() (RefResult, error) { return c.Pin(ctx, RefRequest{Ref: v1}) }, true, true},
	} {
		res, err := step.call()
		if err != nil || res.Ref != v1 || res.Pinned != step.pinned || res.Changed != step.changed || res.Digest == "" {
			t.Fatalf("pin/unpin: %+v %v, want pinned %v changed %v", res, err, step.pinned, step.changed)
		}
	}
	if rep, _ = c.Images(ctx, ImagesRequest{}); !rep.Images[0].Pinned {
		t.Errorf("images after pin: %+v", rep.Images[0])
	}
	if _, err := c.Pin(ctx, RefRequest{Ref: drillRegistry + "/app:absent"}); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "is not cached") {
		t.Errorf("pin of an uncached ref: %v, want not found", err)
	}
	if _, err := c.Unpin(ctx, RefRequest{Ref: "Bad Ref"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unpin of a malformed ref: %v, want invalid argument", err)
	}

	// rm forgets the ref; its blobs stay.
	used, _ := c.Status(ctx)
	if res, err := c.Remove(ctx, RefRequest{Ref: v2}); err != nil || res.Ref != v2 || !res.Changed {
		t.Fatalf("rm: %+v %v", res, err)
	}
	if _, err := c.Remove(ctx, RefRequest{Ref: v2}); !errdefs.IsNotFound(err) {
		t.Errorf("rm of a removed ref: %v, want not found", err)
	}
	if rep, _ = c.Images(ctx, ImagesRequest{}); len(rep.Images) != 1 || rep.Images[0].Ref != v1 {
		t.Errorf("images after rm: %+v", rep.Images)
	}
	if st, _ := c.Status(ctx); st.Cache.UsedBytes != used.Cache.UsedBytes {
		t.Errorf("rm removed blobs: %d bytes cached before, %d after", used.Cache.UsedBytes, st.Cache.UsedBytes)
	}

	// gc under the budget has nothing to do; verify finds every blob sound.
	low := 0.85 // the documented low watermark (docs/configuration.md), not the constant
	gc, err := c.GC(ctx, GCRequest{DryRun: true})
	if err != nil || !gc.DryRun || gc.Refs == nil || len(gc.Refs) != 0 || gc.Blobs == nil || gc.BudgetBytes != 1<<30 || gc.TargetBytes != int64(low*(1<<30)) {
		t.Errorf("gc: %+v %v", gc, err)
	}
	vr, err := c.Verify(ctx, VerifyRequest{})
	if err != nil || vr.Checked == 0 || vr.Bytes == 0 || vr.Corrupt == nil || len(vr.Corrupt) != 0 || vr.Missing == nil || vr.Repaired {
		t.Errorf("verify: %+v %v", vr, err)
	}

	// Requests that make no sense are refused before anything is pulled.
	if _, err := c.Pull(ctx, PullRequest{Refs: []string{v1}, Platform: "linux/arm64", AllPlatforms: true}, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("pull of one and all platforms: %v, want invalid argument", err)
	}
	if _, err := c.Pull(ctx, PullRequest{Refs: []string{v1}, Platform: "no/such/platform/x"}, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("pull for a bad platform: %v, want invalid argument", err)
	}
	if _, err := c.Images(ctx, ImagesRequest{Platform: "no/such/platform/x"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("images for a bad platform: %v, want invalid argument", err)
	}

	// With the upstream down, a pull fails and says so; what is cached stays listed complete.
	up.SetFault(registrytest.Status503)
	pulled, err = c.Pull(ctx, PullRequest{Refs: []string{drillRegistry + "/app:v3"}}, nil)
	if err != nil || pulled.Failed != 1 || pulled.Results[0].Error == "" {
		t.Errorf("pull with the upstream down: %+v %v", pulled, err)
	}
	if rep, _ = c.Images(ctx, ImagesRequest{}); !rep.Images[0].Complete {
		t.Errorf("images with the upstream down: %+v", rep.Images[0])
	}
}

// The JSON of these answers is an interface scripts depend on.
func TestCacheAnswersJSON(t *testing.T) {
	t.Parallel()
	d := digest.FromString("x")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{"images", ImagesReport{Platform: "linux/amd64", Images: []Image{{
			Ref: "docker.io/library/a:1", Digest: d, Platforms: []string{"linux/amd64"}, Size: 10, LastUsed: at, Pinned: true, Missing: []string{},
		}}}, `{"platform":"linux/amd64","images":[{"ref":"docker.io/library/a:1","digest":"` + d.String() + `","platforms":["linux/amd64"],"size":10,"lastUsed":"2026-01-02T03:04:05Z","pinned":true,"complete":false,"missing":[]}]}`},
		{"pin", RefResult{Ref: "docker.io/library/a:1", Digest: d, Pinned: true, Changed: true},
			`{"ref":"docker.io/library/a:1","digest":"` + d.String() + `","pinned":true,"changed":true}`},
		{"gc", GCReport{DryRun: true, EvictionPlan: cache.EvictionPlan{Refs: []string{"r"}, Blobs: []digest.Digest{d}, Bytes: 5}, UsedBytes: 9, BudgetBytes: 10, TargetBytes: 8},
			`{"dryRun":true,"refs":["r"],"blobs":["` + d.String() + `"],"bytes":5,"usedBytes":9,"budgetBytes":10,"targetBytes":8}`},
		{"pull", PullReport{Platform: "all", Results: []PullResult{{Ref: "r", Digest: d.String(), Bytes: 3, CachedBytes: 1, FetchedBytes: 2, Seconds: 0.5}}, Pulled: 1},
			`{"platform":"all","results":[{"ref":"r","digest":"` + d.String() + `","bytes":3,"cachedBytes":1,"fetchedBytes":2,"seconds":0.5}],"pulled":1,"failed":0}`},
		{"verify", cache.VerifyReport{Checked: 2, Bytes: 7, Corrupt: []digest.Digest{d}, Missing: []digest.Digest{}, Repaired: true},
			`{"checked":2,"bytes":7,"corrupt":["` + d.String() + `"],"missing":[],"repaired":true}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("%s JSON\n got %s\nwant %s", tc.name, b, tc.want)
		}
	}
}
