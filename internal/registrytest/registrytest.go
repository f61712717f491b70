// Package registrytest runs the collaborators lifeboat's tests share: a real registry
// (go-containerregistry's) behind httptest that counts what it is asked and fails on demand,
// images pushed to it, an upstream endpoint that is always down, and a poller that waits for a
// condition instead of sleeping. Only tests import it.
package registrytest

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Fault is what an Upstream does instead of answering normally.
type Fault string

const (
	Healthy   Fault = ""
	Status503 Fault = "503"      // every request answered 503 Service Unavailable
	Status429 Fault = "429"      // every request answered 429 Too Many Requests, Retry-After 30
	Hang      Fault = "hang"     // accept and never answer until the client gives up
	Corrupt   Fault = "corrupt"  // blob bodies with one byte flipped, same length
	Truncate  Fault = "truncate" // blob bodies cut in half, then the connection dropped
)

// Upstream is a real registry (go-containerregistry's) behind httptest, wrapped to count
// requests by kind and to fail on demand.
type Upstream struct {
	*httptest.Server
	fault    atomic.Value  // Fault
	gate     chan struct{} // when not nil, blob bodies stop half way until it is closed
	gateMu   sync.Mutex
	counts   sync.Map // "HEAD manifests" → *atomic.Int64
	released chan struct{}
	date     atomic.Value // time.Time: the Date header of every answer (zero: none); unset: now
}

// NewUpstream starts an Upstream, healthy, with opts added to the registry's; it stops when
// the test ends.
func NewUpstream(t testing.TB, opts ...registry.Option) *Upstream {
	t.Helper()
	u := &Upstream{released: make(chan struct{})}
	u.fault.Store(Healthy)
	reg := registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, opts...)...)
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "ping"
		for _, k := range []string{"manifests", "blobs", "tags", "referrers"} {
			if strings.Contains(r.URL.Path, "/"+k+"/") {
				kind = k
			}
		}
		u.counter(r.Method + " " + kind).Add(1)
		if r.Header.Get("Range") != "" {
			u.counter(r.Method + " " + kind + " ranged").Add(1)
		}
		if d, ok := u.date.Load().(time.Time); ok {
			if d.IsZero() {
				w.Header()["Date"] = nil // net/http then sends none
			} else {
				w.Header().Set("Date", d.UTC().Format(http.TimeFormat))
			}
		}
		switch u.fault.Load().(Fault) {
		case Status503:
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		case Status429:
			w.Header().Set("Retry-After", "30")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		case Hang:
			select {
			case <-r.Context().Done():
			case <-u.released:
			}
			return
		}
		if kind != "blobs" || r.Method != http.MethodGet {
			reg.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		switch u.fault.Load().(Fault) {
		case Corrupt:
			body = bytes.Clone(body)
			body[len(body)/2] ^= 0xff
		case Truncate:
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		u.gateMu.Lock()
		gate := u.gate
		u.gateMu.Unlock()
		if gate != nil {
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
			body = body[len(body)/2:]
		}
		w.Write(body)
	}))
	t.Cleanup(func() {
		close(u.released)
		u.Close()
	})
	return u
}

func (u *Upstream) counter(key string) *atomic.Int64 {
	c, _ := u.counts.LoadOrStore(key, new(atomic.Int64))
	return c.(*atomic.Int64)
}

// Count is how many requests of a kind the upstream received, the kind named by method and
// route: "GET blobs", "HEAD manifests", "GET tags", "GET referrers", "GET ping" (anything
// else, /v2/ included); with " ranged" after it, those of them that had a Range header.
func (u *Upstream) Count(key string) int64 { return u.counter(key).Load() }

// Total counts every request the upstream received, of any kind.
func (u *Upstream) Total() int64 {
	var n int64
	u.counts.Range(func(k, v any) bool {
		if !strings.HasSuffix(k.(string), " ranged") { // counted under their kind too
			n += v.(*atomic.Int64).Load()
		}
		return true
	})
	return n
}

// SetFault makes the upstream fail as f says from its next request on; Healthy ends it.
func (u *Upstream) SetFault(f Fault) { u.fault.Store(f) }

// SetDate makes the upstream send d as the Date header of its answers; the zero time sends none.
func (u *Upstream) SetDate(d time.Time) { u.date.Store(d) }

// HoldBodies makes the upstream send the first half of each blob body and hold the rest until
// the returned channel is closed.
func (u *Upstream) HoldBodies() chan struct{} {
	gate := make(chan struct{})
	u.gateMu.Lock()
	u.gate = gate
	u.gateMu.Unlock()
	return gate
}

// Host is the upstream's host:port, as image references name it.
func (u *Upstream) Host() string { return strings.TrimPrefix(u.URL, "http://") }
