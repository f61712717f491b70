// Package metricsdoc reads the metrics lifeboat exposes from docs/metrics.md, whose tables an
// integration test keeps equal to the live /metrics, and names the metrics a PromQL query
// reads, so that the dashboard and the alerts can be checked against what lifeboat exposes.
package metricsdoc

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"
)

// Path is docs/metrics.md, from a package directory of the deploy module.
const Path = "../../docs/metrics.md"

// row is a row of a metrics table: | `name` | type | labels | meaning |. The integration test
// (checkMetricsDocumented) reads the names with the same pattern.
var row = regexp.MustCompile("(?m)^\\| `(lifeboat_[a-z_]+)` \\| ([a-z]+) \\|")

// Documented returns the type ("counter", "gauge", "histogram") of each metric docs/metrics.md
// lists in its tables.
func Documented(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	types := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		types[m[1]] = m[2]
	}
	if len(types) == 0 {
		return nil, fmt.Errorf("%s: no metrics table rows", path)
	}
	return types, nil
}

// scrapeSeries are the series Prometheus itself records for every scrape target, which a query
// may read besides lifeboat's own: up is how it tells a lifeboat that is down.
var scrapeSeries = []string{"up"}

// Exposed returns the names of every series a Prometheus scraping lifeboat has: those of the
// metrics docs/metrics.md lists (a histogram's _bucket, _sum and _count) and up.
func Exposed(path string) ([]string, error) {
	documented, err := Documented(path)
	if err != nil {
		return nil, err
	}
	exposed := slices.Clone(scrapeSeries)
	for name, typ := range documented {
		exposed = append(exposed, Series(name, typ)...)
	}
	slices.Sort(exposed)
	return exposed, nil
}

// Series are the names of the time series a metric of a type exposes: a histogram's _bucket,
// _sum and _count, or the name itself.
func Series(name, typ string) []string {
	if typ == "histogram" {
		return []string{name + "_bucket", name + "_sum", name + "_count"}
	}
	return []string{name}
}

// grafanaVariables are the interval variables Grafana substitutes before a query reaches
// Prometheus; a duration stands in for each so that the query parses.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// Names returns the metric names expr selects, sorted, each once. Grafana's $__ interval
// variables are allowed; other variables may appear only inside label values.
func Names(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVariables.Replace(expr))
	if err != nil {
		return nil, fmt.Errorf("%q: %w", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			if name == "" {
				for _, m := range vs.LabelMatchers {
					if m.Name == "__name__" {
						name = m.Value
					}
				}
			}
			names = append(names, name)
		}
		return nil
	})
	slices.Sort(names)
	return slices.Compact(names), nil
}
