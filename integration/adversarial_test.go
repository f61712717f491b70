package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestAdversarialFills (part of `make soak`) attacks the blob fills of a real lifeboat through
// its mirror: clients that start downloads and give up (abandoned fills), chunked bodies twice
// the cache's budget, and bodies whose bytes do not match their digest. Afterwards lifeboat's
// goroutines, open files, metric series and resident memory, read from its /metrics, must come
// back to what they were before, within stated margins.
//
// The unconfigured-hosts part of the adversarial run (issue 12, item 1) belongs in
// adversarialPhases too, once the mirror refuses registries it does not mirror.
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

	adversarialPhases := []struct {
		name    string
		clients int
		kind    string // what the upstream does with the blob (see adversarialUpstream)
		timeout time.Duration
	}{
		{"abandoned fills", 100, "hold", 500 * time.Millisecond},
		{"oversized chunked bodies", 4, "chunked", time.Minute},
		{"bad bytes", 20, "bad", time.Minute},
	}
	for _, ph := range adversarialPhases {
		var wg sync.WaitGroup
		for i := range ph.clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(t.Context(), ph.timeout)
				defer cancel()
				get(ctx, digest.FromString(fmt.Sprintf("%s %d", ph.kind, i)))
			}()
		}
		wg.Wait()
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
	t.Logf("after the attack: %s (margins: %d goroutines, %d files, %d series, %d MiB)", now, gMargin, fdMargin, seriesMargin, rssMargin>>20)
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
	resp, err := http.Get("http://" + lb.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p processFigures
	sc := bufio.NewScanner(resp.Body)
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
