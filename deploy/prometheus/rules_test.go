// Package prometheus_test checks lifeboat's alerts against what lifeboat exposes: every metric
// a rule reads is in docs/metrics.md (which an integration test keeps equal to the live
// /metrics). promtool, in `make lint`, checks the rules themselves and runs their unit tests
// (lifeboat-rules_test.yaml).
package prometheus_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/lifeboat-dev/lifeboat/deploy/internal/metricsdoc"
	"github.com/lifeboat-dev/lifeboat/deploy/internal/rulefile"
)

const rulesFile = "lifeboat-rules.yaml"

func TestRulesReadExposedMetrics(t *testing.T) {
	f, err := rulefile.Load(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	exposed, err := metricsdoc.Exposed(metricsdoc.Path)
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			names, err := metricsdoc.Names(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", r.Alert, err)
				continue
			}
			for _, n := range names {
				if !slices.Contains(exposed, n) {
					t.Errorf("%s reads %s, which lifeboat does not expose (docs/metrics.md)", r.Alert, n)
				}
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want a severity label, a summary and a description", r.Alert)
			}
		}
	}
	// The alerts docs/operations.md explains, each with a unit test in lifeboat-rules_test.yaml.
	tests, err := os.ReadFile("lifeboat-rules_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ops, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if !slices.Contains(alertNames(tests), a) {
			t.Errorf("%s has no unit test in lifeboat-rules_test.yaml", a)
		}
		if !strings.Contains(string(ops), "### "+a) {
			t.Errorf("docs/operations.md does not explain %s (a \"### %s\" heading)", a, a)
		}
	}
}

// alertNames are the alertname values of a promtool rule-test file.
func alertNames(tests []byte) []string {
	var f struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(tests, &f); err != nil {
		return nil
	}
	var names []string
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			names = append(names, a.Alertname)
		}
	}
	return names
}
