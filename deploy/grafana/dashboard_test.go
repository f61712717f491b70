package grafana_test

//lint:file-ignore SA1019 The SDK deprecates the classic dashboard model for dashboardv2, the schema of Grafana 12's dynamic dashboards, which older Grafana cannot import; the classic JSON imports everywhere.

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"slices"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"

	"github.com/lifeboat-dev/lifeboat/deploy/grafana"
	"github.com/lifeboat-dev/lifeboat/deploy/internal/metricsdoc"
)

var update = flag.Bool("update", false, "rewrite lifeboat.json from grafana.Dashboard")

const file = "lifeboat.json"

// TestDashboardFile: lifeboat.json is what grafana.Dashboard builds (`make dashboard` writes it).
func TestDashboardFile(t *testing.T) {
	d, err := grafana.Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if *update {
		if err := os.WriteFile(file, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("deploy/grafana/%s is not what grafana.Dashboard builds: run `make dashboard`", file)
	}
}

// load decodes lifeboat.json strictly into the Grafana Foundation SDK's dashboard model, with
// the panel and query plugins registered so that panels' options and Prometheus queries are
// decoded into their own types. It returns the dashboard and its panels, rows' panels included.
func load(t *testing.T) (dashboard.Dashboard, []dashboard.Panel) {
	t.Helper()
	plugins.RegisterDefaultPlugins()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard.Dashboard
	if err := strict(d.UnmarshalJSONStrict(b)); err != nil {
		t.Fatalf("%s does not load as a Grafana dashboard: %v", file, err)
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	// The strict decoding checks every field, the panels' and queries' too, but (SDK v0.0.22)
	// leaves out of the result what decoded without error, as it takes an empty list of errors
	// for an error. The checked file is read again, plainly, for its panels and queries.
	d = dashboard.Dashboard{}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var panels []dashboard.Panel
	for _, p := range d.Panels {
		switch {
		case p.Panel != nil:
			panels = append(panels, *p.Panel)
		case p.RowPanel != nil:
			panels = append(panels, p.RowPanel.Panels...)
		}
	}
	if len(panels) == 0 {
		t.Fatalf("%s has no panels", file)
	}
	return d, panels
}

// strict is the error of an SDK UnmarshalJSONStrict, which returns its list of errors as an
// error even when the list is empty.
func strict(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}

// queries returns the PromQL of every panel's targets and of the query variables.
func queries(t *testing.T, d dashboard.Dashboard, panels []dashboard.Panel) []string {
	t.Helper()
	var exprs []string
	for _, p := range panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", title(p))
		}
		for _, target := range p.Targets {
			q, ok := target.(*prometheus.Dataquery)
			if !ok {
				t.Errorf("panel %q: target %T, want a Prometheus query", title(p), target)
				continue
			}
			exprs = append(exprs, q.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" && v.Query != nil && v.Query.String != nil {
			exprs = append(exprs, labelValuesMetric(t, *v.Query.String))
		}
	}
	return exprs
}

// labelValuesMetric returns the series selector of a label_values(selector, label) variable
// query, which is PromQL.
func labelValuesMetric(t *testing.T, q string) string {
	t.Helper()
	const prefix = "label_values("
	i := bytes.LastIndexByte([]byte(q), ',')
	if len(q) < len(prefix) || q[:len(prefix)] != prefix || i < 0 {
		t.Fatalf("variable query %q, want label_values(selector, label)", q)
	}
	return q[len(prefix):i]
}

// TestDashboardMetrics: the dashboard loads as a Grafana dashboard, and every query parses as
// PromQL and reads only metrics lifeboat exposes, as docs/metrics.md lists them (an
// integration test keeps that list equal to the live /metrics).
func TestDashboardMetrics(t *testing.T) {
	d, panels := load(t)
	if d.Uid == nil || *d.Uid != grafana.UID {
		t.Errorf("uid %v, want %q", d.Uid, grafana.UID)
	}
	exposed, err := metricsdoc.Exposed(metricsdoc.Path)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	exprs := queries(t, d, panels)
	if len(exprs) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	for _, expr := range exprs {
		names, err := metricsdoc.Names(expr)
		if err != nil {
			t.Error(err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("query %q reads no metric", expr)
		}
		for _, n := range names {
			used[n] = true
			if !slices.Contains(exposed, n) {
				t.Errorf("query %q reads %s, which lifeboat does not expose (docs/metrics.md)", expr, n)
			}
		}
	}
	// The panels the issue asks for read these; losing one loses a panel.
	for _, n := range []string{"lifeboat_mirror_requests_total", "lifeboat_mirror_sent_bytes_total", "lifeboat_upstream_fetched_bytes_total",
		"lifeboat_upstream_up", "lifeboat_outage_simulated", "lifeboat_cache_bytes", "lifeboat_cache_budget_bytes",
		"lifeboat_cache_evicted_blobs_total", "lifeboat_digest_mismatches_total"} {
		if !used[n] {
			t.Errorf("no panel reads %s", n)
		}
	}
}

func title(p dashboard.Panel) string {
	if p.Title == nil {
		return "(untitled)"
	}
	return *p.Title
}
