// Package grafana builds lifeboat's Grafana dashboard, deploy/grafana/lifeboat.json, with the
// Grafana Foundation SDK: `make dashboard` writes the file from Dashboard, and the package's
// test checks that the file is what Dashboard builds, that it loads as a Grafana dashboard, and
// that every metric it queries is one lifeboat exposes (docs/metrics.md).
//
// The panels are what an operator wants during a registry outage: are the nodes' lifeboats up,
// are they answering from the cache, which upstream endpoints are down, is an outage being
// simulated, is the cache full, is anything arriving corrupt. Every panel follows the job and
// node (instance) variables; the overview row adds them up across the cluster.
package grafana

//lint:file-ignore SA1019 The SDK deprecates the classic dashboard model for dashboardv2, the schema of Grafana 12's dynamic dashboards, which older Grafana cannot import; the classic JSON imports everywhere.

import (
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// UID is the dashboard's uid, stable so that links to it survive a re-import.
const UID = "lifeboat"

// sel selects the chosen job and nodes in every query.
const sel = `job=~"$job", instance=~"$instance"`

// The mirror answers that count towards the hit ratio: served without fetching the content
// from the registry (a revalidated tag asked the registry only for the tag's digest).
const (
	contentRoutes = `route=~"tag|manifest|blob"`
	fromCache     = `result=~"hit|stale|revalidated|peer"`
)

var datasource = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// Dashboard builds the dashboard.
func Dashboard() (dashboard.Dashboard, error) {
	return dashboard.NewDashboardBuilder("lifeboat").
		Uid(UID).
		Description("lifeboat, the node-local image cache for containerd: answers, upstream health, outage simulation and the cache, per node and across the cluster. docs/operations.md says what to look at.").
		Tags([]string{"lifeboat", "containerd", "registry"}).
		Editable().
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Refresh("30s").
		Time("now-3h", "now").
		Timezone("browser").
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(queryVariable("job", "Job", "label_values(lifeboat_cache_budget_bytes, job)", false)).
		WithVariable(queryVariable("instance", "Node", `label_values(lifeboat_cache_budget_bytes{job=~"$job"}, instance)`, true)).
		WithRow(dashboard.NewRowBuilder("Overview: the whole cluster")).
		WithPanel(statPanel("lifeboats up", "Scrape targets of the job that answered, out of all of them. A node whose lifeboat is down pulls straight from the registries.", "",
			`sum(up{`+sel+`}) or vector(0)`, `count(up{`+sel+`})`)).
		WithPanel(statPanel("Hit ratio (5m)", "Manifest and blob answers served without fetching the content from the registry (hit, stale, revalidated, peer), across the chosen nodes.", "percentunit",
			`sum(rate(lifeboat_mirror_requests_total{`+sel+`, `+contentRoutes+`, `+fromCache+`}[5m])) / sum(rate(lifeboat_mirror_requests_total{`+sel+`, `+contentRoutes+`}[5m]))`)).
		WithPanel(statPanel("Endpoints down", "Upstream endpoints whose circuit breaker is open, counted per node.", "",
			`count(lifeboat_upstream_up{`+sel+`} == 0) or vector(0)`)).
		WithPanel(statPanel("Stale answers (5m)", "Tags answered from the cache because the registry failed or was slower than upstream_timeout.", "reqps",
			`sum(rate(lifeboat_mirror_requests_total{`+sel+`, result="stale"}[5m])) or vector(0)`)).
		WithPanel(statPanel("Outages simulated", "Nodes simulating an upstream outage (lifeboat outage start).", "",
			`sum(lifeboat_outage_simulated{`+sel+`}) or vector(0)`)).
		WithPanel(statPanel("Digest mismatches", "Upstream content refused because it did not match its digest, over the time range. Anything above 0 deserves a look.", "",
			`sum(increase(lifeboat_digest_mismatches_total{`+sel+`}[$__range])) or vector(0)`)).
		WithRow(dashboard.NewRowBuilder("Mirror answers")).
		WithPanel(timeSeries("Answers by result", "What the mirror answered, by X-Lifeboat-Cache result: hit, miss, stale, revalidated, peer; error for any status of 400 or more; none for the ping.", "reqps",
			query(`sum by (result) (rate(lifeboat_mirror_requests_total{`+sel+`}[$__rate_interval]))`, "{{result}}"))).
		WithPanel(timeSeries("Hit ratio per node", "Manifest and blob answers served without fetching the content from the registry, per node.", "percentunit",
			query(`sum by (instance) (rate(lifeboat_mirror_requests_total{`+sel+`, `+contentRoutes+`, `+fromCache+`}[$__rate_interval])) / sum by (instance) (rate(lifeboat_mirror_requests_total{`+sel+`, `+contentRoutes+`}[$__rate_interval]))`, "{{instance}}"))).
		WithPanel(timeSeries("Bytes served vs fetched upstream", "Body bytes the mirror sent to containerd, against blob bytes lifeboat fetched from the registries: the gap is what the cache saved.", "Bps",
			query(`sum(rate(lifeboat_mirror_sent_bytes_total{`+sel+`}[$__rate_interval]))`, "served"),
			query(`sum(rate(lifeboat_upstream_fetched_bytes_total{`+sel+`}[$__rate_interval]))`, "fetched upstream"))).
		WithPanel(timeSeries("Errors by route and code", "Answers of status 400 or more (and transfers broken off): containerd then tries the registry itself, or fails with --fallback none. 507: the cache had no room.", "reqps",
			query(`sum by (route, code) (rate(lifeboat_mirror_requests_total{`+sel+`, result="error"}[$__rate_interval]))`, "{{route}} {{code}}"))).
		WithPanel(timeSeries("Answer time p99 by route", "99th percentile of the time from a request's arrival to the end of its answer, body included.", "s",
			query(`histogram_quantile(0.99, sum by (le, route) (rate(lifeboat_mirror_request_duration_seconds_bucket{`+sel+`}[$__rate_interval])))`, "{{route}}"))).
		WithRow(dashboard.NewRowBuilder("Upstream registries")).
		WithPanel(timeSeries("Endpoint up (0: breaker open)", "1 while lifeboat considers the endpoint up; 0 while its circuit breaker is open (3 consecutive failures, or a request unanswered for upstream_timeout). A probe closes it again.", "",
			query(`lifeboat_upstream_up{`+sel+`}`, "{{instance}} {{endpoint}}")).Min(0).Max(1)).
		WithPanel(timeSeries("Consecutive failures", "Consecutive failed requests per endpoint; 0 after a success.", "",
			query(`lifeboat_upstream_consecutive_failures{`+sel+`}`, "{{instance}} {{endpoint}}"))).
		WithPanel(timeSeries("Upstream requests by result", "Requests lifeboat sent upstream, by registry and result (failure counts toward the breaker).", "reqps",
			query(`sum by (registry, result) (rate(lifeboat_upstream_requests_total{`+sel+`}[$__rate_interval]))`, "{{registry}} {{result}}"))).
		WithPanel(timeSeries("Upstream request time p99 by endpoint", "99th percentile of the duration of lifeboat's upstream requests.", "s",
			query(`histogram_quantile(0.99, sum by (le, endpoint) (rate(lifeboat_upstream_request_duration_seconds_bucket{`+sel+`}[$__rate_interval])))`, "{{endpoint}}"))).
		WithPanel(timeSeries("Outage simulation", "1 while a node simulates an outage, labelled with its mode; and the upstream requests the current (or last) simulated outage changed.", "",
			query(`lifeboat_outage_simulated{`+sel+`} == 1`, "{{instance}} {{mode}}"),
			query(`lifeboat_outage_affected_requests{`+sel+`}`, "{{instance}} requests affected"))).
		WithPanel(timeSeries("Digest mismatches", "Upstream content that did not match its digest: refused, never cached or served.", "",
			query(`sum by (instance) (increase(lifeboat_digest_mismatches_total{`+sel+`}[$__rate_interval]))`, "{{instance}}"))).
		WithRow(dashboard.NewRowBuilder("Cache")).
		WithPanel(timeSeries("Cache use of budget", "Cached bytes over the size budget, per node. Eviction starts above 95% and stops at 85%; staying above 95% means it cannot free room (pinned images, blobs being read).", "percentunit",
			query(`lifeboat_cache_bytes{`+sel+`} / lifeboat_cache_budget_bytes{`+sel+`}`, "{{instance}}")).Min(0).Max(1)).
		WithPanel(timeSeries("Cache bytes and budget", "Bytes of blob content cached, and the budget, across the chosen nodes.", "bytes",
			query(`sum(lifeboat_cache_bytes{`+sel+`})`, "cached"),
			query(`sum(lifeboat_cache_budget_bytes{`+sel+`})`, "budget"))).
		WithPanel(timeSeries("Evictions", "Blobs the evictor removed, per node.", "",
			query(`sum by (instance) (increase(lifeboat_cache_evicted_blobs_total{`+sel+`}[$__rate_interval]))`, "{{instance}}"))).
		WithRow(dashboard.NewRowBuilder("Downloads from upstreams (fills)")).
		WithPanel(timeSeries("Fills in flight", "Blob downloads running (at most max_fills), those no client reads any more (at most max_abandoned_fills), and requests waiting for a download slot.", "",
			query(`sum(lifeboat_fills_running{`+sel+`})`, "running"),
			query(`sum(lifeboat_fills_abandoned{`+sel+`})`, "abandoned"),
			query(`sum(lifeboat_fills_waiting{`+sel+`})`, "waiting"))).
		WithPanel(timeSeries("Fills refused and cancelled", "Requests answered 429 because every download slot stayed busy for fill_queue_timeout, and abandoned downloads cancelled past max_abandoned_fills, per node.", "",
			query(`sum by (instance) (increase(lifeboat_fills_refused_total{`+sel+`}[$__rate_interval]))`, "{{instance}} refused"),
			query(`sum by (instance) (increase(lifeboat_fills_cancelled_total{`+sel+`}[$__rate_interval]))`, "{{instance}} cancelled"))).
		WithRow(dashboard.NewRowBuilder("Cluster tier (with [cluster] join set)")).
		WithPanel(timeSeries("Members by state", "Members of the cluster each node sees, by state. A node that sees fewer alive than the others is cut off (LifeboatClusterSplit).", "",
			query(`lifeboat_cluster_members{`+sel+`, state="alive"}`, "{{instance}} alive"),
			query(`lifeboat_cluster_members{`+sel+`, state=~"suspect|dead"} > 0`, "{{instance}} {{state}}"))).
		WithPanel(timeSeries("Bytes from peers vs the registry", "Blob bytes this node took from its peers, sent to them, and fetched from the registries: the peers' share is what the cluster saved the registry.", "Bps",
			query(`sum(rate(lifeboat_peer_bytes_total{`+sel+`, direction="in"}[$__rate_interval]))`, "from peers"),
			query(`sum(rate(lifeboat_peer_bytes_total{`+sel+`, direction="out"}[$__rate_interval]))`, "to peers"),
			query(`sum(rate(lifeboat_upstream_fetched_bytes_total{`+sel+`}[$__rate_interval]))`, "from registries"))).
		WithPanel(timeSeries("Lookups and their p99", "Lookups of who holds a key, by result (failed: no home answered), and the 99th percentile of their duration.", "",
			query(`sum by (result) (rate(lifeboat_cluster_lookups_total{`+sel+`}[$__rate_interval]))`, "{{result}} /s"),
			query(`histogram_quantile(0.99, sum by (le) (rate(lifeboat_cluster_lookup_duration_seconds_bucket{`+sel+`}[$__rate_interval])))`, "p99 seconds"))).
		Build()
}

func queryVariable(name, label, q string, multi bool) *dashboard.QueryVariableBuilder {
	v := dashboard.NewQueryVariableBuilder(name).
		Label(label).
		Datasource(datasource).
		Query(dashboard.StringOrMap{String: cog.ToPtr(q)}).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortAlphabeticalAsc).
		IncludeAll(true).
		AllValue(".*")
	if multi {
		v = v.Multi(true)
	}
	return v
}

func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Datasource(datasource).Expr(expr).LegendFormat(legend)
}

func timeSeries(title, description, unit string, queries ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource).
		Height(8).
		Span(8).
		Unit(unit).
		FillOpacity(10).
		Legend(common.NewVizLegendOptionsBuilder().DisplayMode(common.LegendDisplayModeList).Placement(common.LegendPlacementBottom).ShowLegend(true))
	for _, q := range queries {
		p = p.WithTarget(q)
	}
	return p
}

// statPanel shows the first query's value; a second query is shown beside it (as "of N").
func statPanel(title, description, unit string, exprs ...string) *stat.PanelBuilder {
	p := stat.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource).
		Height(4).
		Span(4).
		Unit(unit).
		GraphMode(common.BigValueGraphModeArea).
		ColorMode(common.BigValueColorModeValue).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}))
	for _, e := range exprs {
		p = p.WithTarget(prometheus.NewDataqueryBuilder().Datasource(datasource).Expr(e).Instant())
	}
	return p
}
