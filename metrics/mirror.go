package metrics

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dev/lifeboat/mirror"
)

// Mirror counts the registry mirror's answers. Pass its Observe as mirror.Options.Observe.
type Mirror struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	duration *prometheus.HistogramVec

	mu      sync.Mutex
	results map[string]int64 // answers by result, for Answers
}

// NewMirror registers the mirror's metrics with reg.
func NewMirror(reg prometheus.Registerer) *Mirror {
	m := &Mirror{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lifeboat_mirror_requests_total",
			Help: "Registry mirror answers by route (tag, manifest, blob, tags, ...), method, X-Lifeboat-Cache result (hit, miss, stale, revalidated, or error) and HTTP status.",
		}, []string{"route", "method", "result", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lifeboat_mirror_sent_bytes_total",
			Help: "Body bytes the registry mirror sent, by route and X-Lifeboat-Cache result.",
		}, []string{"route", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lifeboat_mirror_request_duration_seconds",
			Help:    "Time from a mirror request's arrival to the end of its answer, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route"}),
		results: map[string]int64{},
	}
	reg.MustRegister(m.requests, m.bytes, m.duration)
	return m
}

// Observe records one answer.
func (m *Mirror) Observe(a mirror.Answer) {
	result := string(a.Cache)
	if a.Status >= 400 || a.Aborted || result == "" {
		result = "error"
		if a.Status < 400 && !a.Aborted {
			result = "none" // ping, tags and other answers without a cache status
		}
	}
	m.requests.WithLabelValues(a.Route, a.Method, result, strconv.Itoa(a.Status)).Inc()
	m.mu.Lock()
	m.results[result]++
	m.mu.Unlock()
	m.bytes.WithLabelValues(a.Route, result).Add(float64(a.Bytes))
	m.duration.WithLabelValues(a.Route).Observe(a.Duration.Seconds())
}

// Answers returns how many answers the mirror gave since start, by result: hit, miss, stale,
// revalidated, error, and none (answers without a cache status, such as pings).
func (m *Mirror) Answers() map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int64, len(m.results))
	for k, v := range m.results {
		out[k] = v
	}
	return out
}
