package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Health is what the upstream collector reads; *resolver.Resolver provides it.
type Health interface {
	Endpoints() []resolver.EndpointStatus
	DigestMismatches() int64
}

type upstreamCollector struct {
	health     Health
	up         *prometheus.Desc
	failures   *prometheus.Desc
	mismatches *prometheus.Desc
}

// NewUpstreamCollector exposes each upstream endpoint's health and the digest mismatches.
func NewUpstreamCollector(h Health) prometheus.Collector {
	return &upstreamCollector{
		health: h,
		up: prometheus.NewDesc("lifeboat_upstream_up", "Whether the upstream endpoint is considered up (1) or its breaker is open (0).",
			[]string{"registry", "endpoint"}, nil),
		failures: prometheus.NewDesc("lifeboat_upstream_consecutive_failures", "Consecutive failures of the upstream endpoint.",
			[]string{"registry", "endpoint"}, nil),
		mismatches: prometheus.NewDesc("lifeboat_digest_mismatches_total", "Upstream content that failed digest verification and was not cached.", nil, nil),
	}
}

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.failures
	ch <- c.mismatches
}

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.health.Endpoints() {
		up := 0.0
		if e.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, e.Registry, e.Endpoint)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.GaugeValue, float64(e.Failures), e.Registry, e.Endpoint)
	}
	ch <- prometheus.MustNewConstMetric(c.mismatches, prometheus.CounterValue, float64(c.health.DigestMismatches()))
}

type outageCollector struct {
	sim      interface{ Status() outage.Status }
	active   *prometheus.Desc
	affected *prometheus.Desc
}

// NewOutageCollector exposes the outage simulation state.
func NewOutageCollector(sim interface{ Status() outage.Status }) prometheus.Collector {
	return &outageCollector{
		sim: sim,
		active: prometheus.NewDesc("lifeboat_outage_simulated", "1 while an upstream outage is being simulated, labelled with its mode.",
			[]string{"mode"}, nil),
		affected: prometheus.NewDesc("lifeboat_outage_affected_requests", "Upstream requests the current or last simulated outage changed.", nil, nil),
	}
}

func (c *outageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.active
	ch <- c.affected
}

func (c *outageCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.sim.Status()
	if st.Active {
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, 1, st.Spec.Mode)
	} else {
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, 0, "")
	}
	ch <- prometheus.MustNewConstMetric(c.affected, prometheus.GaugeValue, float64(st.Affected))
}
