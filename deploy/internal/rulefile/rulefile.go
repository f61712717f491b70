// Package rulefile reads a Prometheus rule file as far as lifeboat's alerts use it; the same
// shape is the spec of the Prometheus Operator's PrometheusRule. promtool checks the file in
// full (`make lint`); this is for the tests that compare it with the chart and the docs.
package rulefile

import (
	"fmt"
	"os"

	"sigs.k8s.io/yaml"
)

// File is a rule file: its groups.
type File struct {
	Groups []Group `json:"groups"`
}

// Group is a named group of rules.
type Group struct {
	Name  string `json:"name"`
	Rules []Rule `json:"rules"`
}

// Rule is an alerting rule (Alert) or a recording rule (Record).
type Rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Load reads the rule file at path, refusing fields this package does not know.
func Load(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, err
	}
	var f File
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return File{}, fmt.Errorf("%s: %w", path, err)
	}
	if len(f.Groups) == 0 {
		return File{}, fmt.Errorf("%s: no rule groups", path)
	}
	return f, nil
}
