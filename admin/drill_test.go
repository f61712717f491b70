package admin

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/internal/serving"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/plan"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

const drillRegistry = "registry.test"

// newDrillService serves a Service whose registry.test is up, and returns a client of it.
func newDrillService(t *testing.T, up *registrytest.Upstream, setup ...func(*Service)) *Client {
	t.Helper()
	return newDrillServiceWithPeers(t, up, nil, setup...)
}

// newDrillServiceWithPeers is newDrillService with peers as the resolver's cluster tier.
func newDrillServiceWithPeers(t *testing.T, up *registrytest.Upstream, peers resolver.Peers, setup ...func(*Service)) *Client {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	res, err := resolver.New(t.Context(), store, resolver.Options{
		UpstreamTimeout: 3 * time.Second,
		Endpoints:       map[string][]string{drillRegistry: {up.URL}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
		Health: endpoints.Health{FailureThreshold: 100},
		Peers:  peers,
	})
	if err != nil {
		t.Fatal(err)
	}
	svc := &Service{Version: "test", StartedAt: time.Now(), Store: store, Resolver: res, Outage: outage.New()}
	for _, fn := range setup {
		fn(svc)
	}
	dir, err := os.MkdirTemp("", "lbdrill")
	if err != nil {
		t.Fatal(err)
	}
	l, err := serving.ListenUnix(filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { serving.HTTP(ctx, l, Handler(svc), time.Minute); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		res.Close()
		store.Close()
		os.RemoveAll(dir)
	})
	return NewClient(filepath.Join(dir, "a.sock"))
}

func TestDrill(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "v1", 16<<10)
	up.Push(t, "app", "v2", 16<<10)
	c := newDrillService(t, up)
	ctx := t.Context()
	refs := []string{drillRegistry + "/app:v1", "Not A Ref", drillRegistry + "/app:v2"}

	before := up.Total()
	rep, err := c.Drill(ctx, DrillRequest{Refs: refs, Platform: "linux/arm64"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Total != 3 || rep.Ready != 0 || len(rep.Results) != 3 || rep.Platform != "linux/arm64" {
		t.Fatalf("drill of nothing cached: %+v", rep)
	}
	if r := rep.Results[0]; r.Ready || !slices.Equal(r.Missing, []string{"tag " + refs[0]}) || !r.Partial {
		t.Errorf("uncached image: %+v", r)
	}
	if r := rep.Results[1]; r.Ready || r.Error == "" || r.Ref != "Not A Ref" {
		t.Errorf("malformed reference: %+v, want an error in its result", r)
	}

	// Without fix, nothing goes upstream.
	if _, err := c.Drill(ctx, DrillRequest{Refs: refs}); err != nil {
		t.Fatal(err)
	}
	if n := up.Total() - before; n != 0 {
		t.Fatalf("a drill without --fix sent %d requests upstream", n)
	}

	// Fix one image; the report is the state after the fix.
	rep, err = c.Drill(ctx, DrillRequest{Refs: refs[:1], Fix: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Total != 1 || rep.Ready != 1 || !rep.Results[0].Ready || rep.Results[0].FixError != "" {
		t.Fatalf("drill --fix: %+v", rep)
	}

	// With the upstream down, the fixed image is still ready and the other cannot be fixed.
	up.SetFault(registrytest.Status503)
	rep, err = c.Drill(ctx, DrillRequest{Refs: refs, Fix: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Ready != 1 || !rep.Results[0].Ready || rep.Results[2].Ready || rep.Results[2].FixError == "" {
		t.Fatalf("drill --fix with the upstream down: %+v", rep)
	}

	if _, err := c.Drill(ctx, DrillRequest{Refs: refs, Platform: "no/such/platform/x"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad platform: %v, want invalid argument", err)
	}
}

// The JSON of a drill report is an interface scripts depend on.
func TestDrillReportJSON(t *testing.T) {
	t.Parallel()
	rep := DrillReport{Platform: "linux/amd64", Ready: 0, Total: 1, Results: []DrillResult{{
		Readiness: plan.Readiness{Ref: "docker.io/library/a:1", Missing: []string{"tag docker.io/library/a:1"}, Partial: true, ServedBy: plan.ServedByNothing},
		FixError:  "down",
	}}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"platform":"linux/amd64","results":[{"ref":"docker.io/library/a:1","ready":false,"missing":["tag docker.io/library/a:1"],"missingBytes":0,"partial":true,"servedBy":"nothing","fixError":"down"}],"ready":0,"total":1}`
	if string(b) != want {
		t.Errorf("drill report JSON\n got %s\nwant %s", b, want)
	}
}
