package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
	"github.com/lifeboat-dev/lifeboat/internal/rawhttp"
)

// TestAdversarialFills (part of `make soak`) attacks a real lifeboat through its mirror:
// hundreds of requests naming registries it does not mirror (loopback listeners that count the
// connections made to them: there must be none), clients that start blob downloads and give up
// (abandoned fills), chunked bodies twice the cache's budget, and bodies whose bytes do not match
// their digest. Afterwards lifeboat's goroutines, open files, metric series and resident memory,
// read from its /metrics, must come back to what they were before, within stated margins; the
// last line of the log gives each, before and after.
func TestAdversarialFills(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	up := newAdversarialUpstream(t)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {up.URL}},
		Metrics:   true,
		MaxSize:   "64MiB",
	})
	client := &http.Client{Timeout: 2 * time.Minute}
	get := func(ctx context.Context, d digest.Digest) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+lb.Mirror+"/v2/library/adv/blobs/"+d.String(), nil)
		resp, err := client.Do(req)
		if err != nil {
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// Warm up: the registry's endpoint and the mirror's series exist before the baseline.
	get(t.Context(), digest.FromString("warm-up"))
	base := readProcess(t, lb)
	t.Logf("baseline: %s", base)

	// fill is a client that asks for blob i of a kind (what the upstream does with it, see
	// newAdversarialUpstream) and gives up after timeout.
	fill := func(kind string, timeout time.Duration) func(int) {
		return func(i int) {
			ctx, cancel := context.WithTimeout(t.Context(), timeout)
			defer cancel()
			get(ctx, digest.FromString(fmt.Sprintf("%s %d", kind, i)))
		}
	}
	unmirrored := newUnmirroredRequests(t, lb, 100)
	adversarialPhases := []struct {
		name    string
		clients int
		client  func(i int) // what client i does
		check   func()      // what must hold after the phase, if anything
	}{
		{"registries not mirrored", unmirroredClients, unmirrored.client, unmirrored.check},
		{"abandoned fills", 100, fill("hold", 500*time.Millisecond), nil},
		{"oversized chunked bodies", 4, fill("chunked", time.Minute), nil},
		{"bad bytes", 20, fill("bad", time.Minute), nil},
	}
	for _, ph := range adversarialPhases {
		var wg sync.WaitGroup
		for i := range ph.clients {
			wg.Go(func() { ph.client(i) })
		}
		wg.Wait()
		if ph.check != nil {
			ph.check()
		}
		t.Logf("%s: %d clients done; now %s", ph.name, ph.clients, readProcess(t, lb))
	}
	if n := lb.Metric(t, "lifeboat_fills_cancelled_total", nil); n == 0 {
		t.Errorf("no abandoned fill was cancelled")
	}

	// Margins: a few goroutines and files for connections and timers in flight; series for the
	// new answer codes and upstream results (a bounded label set, not one per blob); 64 MiB of
	// resident memory for the heap the attack grew and the Go runtime keeps.
	const gMargin, fdMargin, seriesMargin, rssMargin = 10, 10, 60, 64 << 20
	var now processFigures
	harness.WaitFor(t, "goroutines, open files, series and memory to return to the baseline", 2*time.Minute, nil, func() error {
		now = readProcess(t, lb)
		if now.goroutines > base.goroutines+gMargin || now.fds > base.fds+fdMargin ||
			now.series > base.series+seriesMargin || now.rss > base.rss+rssMargin {
			return fmt.Errorf("now %s; baseline %s", now, base)
		}
		return nil
	})
	t.Logf("after the attack, baseline → after (margin): goroutines %d → %d (%d), open files %d → %d (%d), metric series %d → %d (%d), resident memory %.0f → %.0f MiB (%d MiB)",
		base.goroutines, now.goroutines, gMargin, base.fds, now.fds, fdMargin,
		base.series, now.series, seriesMargin, base.rss/(1<<20), now.rss/(1<<20), rssMargin>>20)
}

// unmirroredClients is how many clients share the requests naming registries not mirrored.
const unmirroredClients = 50

// unmirroredRequests are requests, on every route, naming registries lifeboat does not mirror,
// in the path and in ?ns=. Each registry is a loopback listener that counts the connections
// made to it, named by its address or as localhost.
type unmirroredRequests struct {
	t       *testing.T
	lb      *harness.Lifeboat
	hosts   []string
	accepts []*atomic.Int64
	targets []string // request paths, each naming one of hosts
	host    []string // the registry targets[i] names
	wrong   atomic.Int64
}

// newUnmirroredRequests starts n listeners and makes six requests naming each.
func newUnmirroredRequests(t *testing.T, lb *harness.Lifeboat, n int) *unmirroredRequests {
	u := &unmirroredRequests{t: t, lb: lb}
	dgst := digest.FromString("not mirrored").String()
	for i := range n {
		addr, accepts := rawhttp.Closer(t)
		host := addr
		if i%2 == 1 {
			_, port, _ := strings.Cut(addr, ":")
			host = "localhost:" + port
		}
		u.hosts = append(u.hosts, host)
		u.accepts = append(u.accepts, accepts)
		for _, target := range []string{
			"/v2/" + host + "/x/manifests/latest",
			"/v2/x/manifests/latest?ns=" + host,
			"/v2/" + host + "/x/blobs/" + dgst,
			"/v2/x/blobs/" + dgst + "?ns=" + host,
			"/v2/" + host + "/x/tags/list",
			"/v2/x/tags/list?ns=" + host,
		} {
			u.targets = append(u.targets, target)
			u.host = append(u.host, host)
		}
	}
	return u
}

// client sends every unmirroredClients-th request from the i-th, and checks each answer: 404
// NAME_UNKNOWN saying the registry is not mirrored, and no word of a connection.
func (u *unmirroredRequests) client(i int) {
	for j := i; j < len(u.targets); j += unmirroredClients {
		if err := u.ask(u.targets[j], u.host[j]); err != nil {
			if u.wrong.Add(1) <= 3 {
				u.t.Error(err)
			}
		}
	}
}

func (u *unmirroredRequests) ask(target, host string) error {
	resp, err := http.Get(u.lb.URL() + target)
	if err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	var e struct {
		Errors []struct{ Code, Message string }
	}
	want := "registry " + host + " is not mirrored by this lifeboat"
	if json.Unmarshal(body, &e) != nil || resp.StatusCode != http.StatusNotFound || len(e.Errors) != 1 ||
		e.Errors[0].Code != "NAME_UNKNOWN" || e.Errors[0].Message != want {
		return fmt.Errorf("GET %s: %d %.300s; want 404 NAME_UNKNOWN %q", target, resp.StatusCode, body, want)
	}
	for _, leak := range []string{"dial", "refused", "reset", "EOF", "HTTP response", "http://", "https://"} {
		if strings.Contains(string(body), leak) {
			return fmt.Errorf("GET %s: the answer says %q: %s", target, leak, body)
		}
	}
	return nil
}

// check fails the test if any answer was wrong, any listener was dialled, or a metric series
// names one of the registries.
func (u *unmirroredRequests) check() {
	t := u.t
	if n := u.wrong.Load(); n > 0 {
		t.Errorf("%d answers of %d were not the not-mirrored error", n, len(u.targets))
	}
	var dials int64
	for _, a := range u.accepts {
		dials += a.Load()
	}
	if dials != 0 {
		t.Errorf("%d connections to registries that are not mirrored", dials)
	}
	metrics := metricsText(t, u.lb)
	for _, host := range u.hosts {
		if strings.Contains(metrics, host) {
			t.Errorf("a metric series names %s, a registry that is not mirrored", host)
			break
		}
	}
}

type processFigures struct {
	goroutines, fds, series int
	rss                     float64
}

func (p processFigures) String() string {
	return fmt.Sprintf("%d goroutines, %d open files, %d series, %.0f MiB resident", p.goroutines, p.fds, p.series, p.rss/(1<<20))
}

// readProcess reads lifeboat's goroutines, open files, resident memory and number of series from
// its /metrics.
func readProcess(t *testing.T, lb *harness.Lifeboat) processFigures {
	t.Helper()
	var p processFigures
	sc := bufio.NewScanner(strings.NewReader(metricsText(t, lb)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p.series++
		name, value, _ := strings.Cut(line, " ")
		v, _ := strconv.ParseFloat(value, 64)
		switch name {
		case "go_goroutines":
			p.goroutines = int(v)
		case "process_open_fds":
			p.fds = int(v)
		case "process_resident_memory_bytes":
			p.rss = v
		}
	}
	return p
}

// metricsText is lifeboat's /metrics.
func metricsText(t *testing.T, lb *harness.Lifeboat) string {
	t.Helper()
	resp, err := http.Get("http://" + lb.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// newAdversarialUpstream answers a blob GET by the kind of digest asked for (a table of the
// digests TestAdversarialFills makes): "hold" sends
// 64 KiB of an announced 8 MiB and holds the answer until the client goes; "chunked" sends
// 128 MiB without a Content-Length; "bad" sends 8 MiB that match no digest.
func newAdversarialUpstream(t *testing.T) *httptest.Server {
	kinds := map[string]string{}
	for _, k := range []string{"hold", "chunked", "bad"} {
		for i := range 200 {
			kinds[digest.FromString(fmt.Sprintf("%s %d", k, i)).String()] = k
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, d, ok := strings.Cut(r.URL.Path, "/blobs/")
		if !ok {
			return
		}
		buf := make([]byte, 64<<10)
		rng := rand.NewChaCha8([32]byte{1})
		switch kinds[d] {
		case "hold":
			w.Header().Set("Content-Length", strconv.Itoa(8<<20))
			rng.Read(buf)
			w.Write(buf)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case "chunked":
			for range (128 << 20) / len(buf) {
				rng.Read(buf)
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
		case "bad":
			w.Header().Set("Content-Length", strconv.Itoa(8<<20))
			for range (8 << 20) / len(buf) {
				rng.Read(buf)
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
		default:
			http.Error(w, "not here", http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}
