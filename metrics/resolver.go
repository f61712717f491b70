package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
)

// Health is what the upstream collector reads; *resolver.Resolver provides it.
type Health interface {
	Endpoints() []endpoints.Status
	DigestMismatches() int64
}

// Fills is what the upstream collector reads of the blob fills when its Health has it too;
// *resolver.Resolver does.
type Fills interface {
	Fills() fill.Stats
}

type upstreamCollector struct {
	health     Health
	up         *prometheus.Desc
	failures   *prometheus.Desc
	mismatches *prometheus.Desc
	fills      *fillCollector // nil when health is not Fills
}

// NewUpstreamCollector exposes each upstream endpoint's health and the digest mismatches, and
// the blob fills' figures when h is a Fills too.
func NewUpstreamCollector(h Health) prometheus.Collector {
	var fills *fillCollector
	if f, ok := h.(Fills); ok {
		fills = newFillCollector(f)
	}
	return &upstreamCollector{
		health: h,
		fills:  fills,
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
	if c.fills != nil {
		c.fills.Describe(ch)
	}
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
	if c.fills != nil {
		c.fills.Collect(ch)
	}
}

// fillCollector exposes the blob fills: running, abandoned, waiting, refused, cancelled.
type fillCollector struct {
	fills                                        Fills
	running, abandoned, waiting, refused, cancel *prometheus.Desc
}

func newFillCollector(f Fills) *fillCollector {
	return &fillCollector{
		fills:     f,
		running:   prometheus.NewDesc("lifeboat_fills_running", "Blob downloads from upstreams in progress.", nil, nil),
		abandoned: prometheus.NewDesc("lifeboat_fills_abandoned", "Blob downloads in progress that no client reads any more.", nil, nil),
		waiting:   prometheus.NewDesc("lifeboat_fills_waiting", "Requests waiting for a blob download slot.", nil, nil),
		refused:   prometheus.NewDesc("lifeboat_fills_refused_total", "Requests refused (429) because every blob download slot stayed busy.", nil, nil),
		cancel:    prometheus.NewDesc("lifeboat_fills_cancelled_total", "Abandoned blob downloads cancelled past the limit of abandoned downloads.", nil, nil),
	}
}

func (c *fillCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.running
	ch <- c.abandoned
	ch <- c.waiting
	ch <- c.refused
	ch <- c.cancel
}

func (c *fillCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.fills.Fills()
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(st.Running))
	ch <- prometheus.MustNewConstMetric(c.abandoned, prometheus.GaugeValue, float64(st.Abandoned))
	ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(st.Waiting))
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(st.Refused))
	ch <- prometheus.MustNewConstMetric(c.cancel, prometheus.CounterValue, float64(st.Cancelled))
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
