package mirror_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/rawhttp"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/metrics"
	"github.com/lifeboat-dev/lifeboat/mirror"
	"github.com/lifeboat-dev/lifeboat/resolver"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

// TestUnmirroredRegistriesAreNotContacted sends the mirror many requests naming registries it
// is not configured for, in the path and in ?ns=, on every route: each is answered 404
// NAME_UNKNOWN saying the registry is not mirrored, and nothing is dialled (the named host is a
// listener that counts connections), started (goroutines), recorded (endpoint status) or
// exposed (metric series) for it. An answer about a configured registry that is down names
// neither the endpoint nor the dial error. The daemon's pieces are real: resolver, upstream
// clients, cache, metrics. Not parallel: it counts the process's goroutines.
func TestUnmirroredRegistriesAreNotContacted(t *testing.T) {
	target, accepts := rawhttp.Closer(t)
	closed := closedPorts(t, 5)

	up := registrytest.NewUpstream(t)
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	reg := prometheus.NewRegistry()
	upMetrics := metrics.NewUpstream(reg)
	res, err := resolver.New(t.Context(), store, resolver.Options{
		// docker.io is served by a live registry; down.test by a closed port.
		Endpoints: map[string][]string{"docker.io": {up.URL}, "down.test": {"http://" + closed[0]}},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
		ObserveUpstream: upMetrics.Observe,
		Health:          endpoints.Health{FailureThreshold: 1, ProbeInterval: time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	reg.MustRegister(metrics.NewUpstreamCollector(res))
	h, err := mirror.New(res, mirror.Options{})
	if err != nil {
		t.Fatal(err)
	}

	get := func(target string) (int, string) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequestWithContext(t.Context(), http.MethodGet, target, nil))
		return w.Code, w.Body.String()
	}
	// The configured registries answer, once, so that their series and goroutines are there
	// before the baseline.
	for _, target := range []string{"/v2/library/x/manifests/latest", "/v2/down.test/x/manifests/latest"} {
		if code, body := get(target); code != http.StatusNotFound {
			t.Fatalf("GET %s: %d %s", target, code, body)
		}
	}
	seriesBefore := upstreamSeries(t, reg)
	endpointsBefore := endpointNames(res)
	baseline := runtime.NumGoroutine()

	dgst := digest.FromString("x").String()
	var hosts []string
	for i := range 40 {
		hosts = append(hosts, target, "localhost:"+port(target), closed[i%len(closed)], fmt.Sprintf("host-%d.test:5000", i))
	}
	var wrong int // answers that are not the not-mirrored error; the first few are reported
	for _, host := range hosts {
		for _, target := range []string{
			"/v2/" + host + "/x/manifests/latest",
			"/v2/x/manifests/latest?ns=" + host,
			"/v2/" + host + "/x/manifests/" + dgst,
			"/v2/x/blobs/" + dgst + "?ns=" + host,
			"/v2/" + host + "/x/tags/list",
			"/v2/" + host + "/x/referrers/" + dgst,
		} {
			code, body := get(target)
			var e struct {
				Errors []struct{ Code, Message string }
			}
			want := "registry " + host + " is not mirrored by this lifeboat"
			if json.Unmarshal([]byte(body), &e) != nil || len(e.Errors) != 1 || code != http.StatusNotFound ||
				e.Errors[0].Code != "NAME_UNKNOWN" || e.Errors[0].Message != want {
				if wrong++; wrong <= 3 {
					t.Errorf("GET %s: %d %.300s; want 404 NAME_UNKNOWN %q", target, code, body, want)
				}
			}
		}
	}
	if wrong > 0 {
		t.Errorf("%d answers of %d were not the not-mirrored error", wrong, 6*len(hosts))
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("%d connections to a registry that is not mirrored", n)
	}
	if after := endpointNames(res); !slices.Equal(after, endpointsBefore) {
		t.Errorf("status entries changed:\nbefore %+v\nafter  %+v", endpointsBefore, after)
	}
	if after := upstreamSeries(t, reg); !slices.Equal(after, seriesBefore) {
		t.Errorf("upstream metric series changed:\nbefore %v\nafter  %v", seriesBefore, after)
	}
	registrytest.WaitGoroutines(t, "after the requests", baseline)

	// A configured registry that is down: the answer says not found, and nothing of why.
	for _, target := range []string{"/v2/down.test/x/manifests/latest", "/v2/x/blobs/" + dgst + "?ns=down.test", "/v2/down.test/x/tags/list"} {
		code, body := get(target)
		if code != http.StatusNotFound {
			t.Fatalf("GET %s: %d %s", target, code, body)
		}
		for _, leak := range []string{closed[0], "127.0.0.1", "http://", "refused", "dial", "down since", "EOF"} {
			if strings.Contains(body, leak) {
				t.Errorf("GET %s: the answer names %q: %s", target, leak, body)
			}
		}
	}
}

// endpointNames lists the endpoints in use (their status entries) by registry and URL.
func endpointNames(res *resolver.Resolver) []string {
	var out []string
	for _, st := range res.Endpoints() {
		out = append(out, st.Registry+" "+st.Endpoint)
	}
	return out
}

// closedPorts returns n loopback host:ports that nothing listens on.
func closedPorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l.Addr().String())
		l.Close()
	}
	return out
}

func port(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}

// upstreamSeries lists the lifeboat_upstream_* series reg exposes, by name and labels.
func upstreamSeries(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "lifeboat_upstream_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			var b strings.Builder
			b.WriteString(mf.GetName())
			for _, l := range m.GetLabel() {
				fmt.Fprintf(&b, " %s=%s", l.GetName(), l.GetValue())
			}
			out = append(out, b.String())
		}
	}
	slices.Sort(out)
	return out
}
