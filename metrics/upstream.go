package metrics

import (
	"context"
	"errors"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dev/lifeboat/endpoints"
)

// Upstream counts lifeboat's requests to upstream registries. Pass its Observe as
// resolver.Options.ObserveUpstream and its Forget as resolver.Options.ForgetUpstream.
type Upstream struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	fetched  *prometheus.CounterVec
}

// NewUpstream registers the upstream request metrics with reg.
func NewUpstream(reg prometheus.Registerer) *Upstream {
	u := &Upstream{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lifeboat_upstream_requests_total",
			Help: "Requests to upstream endpoints by registry, endpoint, operation and result (ok, notfound, denied, failure, canceled, error).",
		}, []string{"registry", "endpoint", "op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lifeboat_upstream_request_duration_seconds",
			Help:    "Duration of requests to upstream endpoints (for get-blob, until the headers; blob-body is the body).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"registry", "endpoint", "op"}),
		fetched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lifeboat_upstream_fetched_bytes_total",
			Help: "Blob bytes received from upstream endpoints.",
		}, []string{"registry", "endpoint"}),
	}
	reg.MustRegister(u.requests, u.duration, u.fetched)
	return u
}

// Observe records one upstream request.
func (u *Upstream) Observe(r endpoints.Request) {
	u.requests.WithLabelValues(r.Registry, r.Endpoint, r.Op, upstreamResult(r.Err)).Inc()
	u.duration.WithLabelValues(r.Registry, r.Endpoint, r.Op).Observe(r.Duration.Seconds())
	if r.Bytes > 0 {
		u.fetched.WithLabelValues(r.Registry, r.Endpoint).Add(float64(r.Bytes))
	}
}

// Forget drops the series of an endpoint the resolver no longer uses (an unlisted registry it
// forgot), so that the series stay as bounded as the endpoints.
func (u *Upstream) Forget(registry, endpoint string) {
	l := prometheus.Labels{"registry": registry, "endpoint": endpoint}
	u.requests.DeletePartialMatch(l)
	u.duration.DeletePartialMatch(l)
	u.fetched.DeletePartialMatch(l)
}

func upstreamResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errdefs.IsNotFound(err):
		return "notfound"
	case errdefs.IsUnauthorized(err), errdefs.IsPermissionDenied(err):
		return "denied"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errdefs.IsUnavailable(err), errors.Is(err, context.DeadlineExceeded):
		return "failure"
	}
	return "error"
}
