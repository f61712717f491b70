package peer

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// flakyFront is a peer listener in front of a real node: while hang is set it answers nothing
// (a stopped node, a blackholed port), while cut is set it drops every connection at once (a
// listener that resets), else it passes the requests on. It counts the requests that reached
// it, probes (GET /v2/) apart.
type flakyFront struct {
	*httptest.Server
	hang, cut        atomic.Bool
	requests, probes atomic.Int64
}

func newFlakyFront(t *testing.T, n *testNode) *flakyFront {
	t.Helper()
	target, err := url.Parse(n.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = testTLS // the node's test listener is TLS, as peer listeners are
	f := &flakyFront{}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			f.probes.Add(1)
		} else {
			f.requests.Add(1)
		}
		switch {
		case f.hang.Load():
			<-r.Context().Done()
		case f.cut.Load():
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		default:
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *flakyFront) member(name string) cluster.Member {
	return cluster.Member{Name: name, PeerAddr: strings.TrimPrefix(f.URL, "https://"), State: cluster.Alive}
}

// TestBreakerSkipsAFailedPeer: a holder that does not answer within the header timeout is down
// at once; one whose connections drop is down after FailureThreshold failures in a row. A peer
// down is asked nothing (neither as a holder nor as the home of a coalesced fill) and costs
// nothing: the blob is not found at the peers at once. A probe brings it back once it answers,
// and it serves the blob again.
func TestBreakerSkipsAFailedPeer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// fail makes the front fail; failures is how many requests it takes to go down.
		fail     func(*flakyFront)
		failures int
	}{
		{name: "no answer in time", fail: func(f *flakyFront) { f.hang.Store(true) }, failures: 1},
		{name: "dropped connections", fail: func(f *flakyFront) { f.cut.Store(true) }, failures: DefaultFailureThreshold},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, img, b := newHolder(t, 64<<10)
			front := newFlakyFront(t, b)
			c := newTestCluster("a", front.member("b"))
			key := cluster.BlobKey(img.layer)
			c.setHolders(key, "b")
			c.setHomes(key, front.member("b"))
			src := NewSource(c, SourceOptions{
				Coalesce: true,
				Budget:   Budget{HeaderTimeout: 300 * time.Millisecond},
				Breaker:  BreakerOptions{ProbeInterval: 20 * time.Millisecond, ProbeMaxInterval: 20 * time.Millisecond},
			})
			t.Cleanup(src.Close)
			// The deadline only ends the test cleanly should a request hang it.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()

			tt.fail(front)
			for i := range tt.failures {
				if _, err := src.OpenBlob(ctx, testRegistry, testRepo, img.layer, nil); err == nil || errdefs.IsNotFound(err) {
					t.Fatalf("attempt %d at a failing peer: %v, want its failure", i+1, err)
				}
			}
			st := src.Stats()
			if st.PeersDown != 1 || st.BreakerTrips != 1 {
				t.Fatalf("after %d failures: %d peers down, %d trips; want 1 and 1", tt.failures, st.PeersDown, st.BreakerTrips)
			}
			asked := front.requests.Load()
			for range 5 {
				start := time.Now()
				_, err := src.OpenBlob(ctx, testRegistry, testRepo, img.layer, nil)
				if !errdefs.IsNotFound(err) {
					t.Errorf("the only holder down: %v, want not found (go to the registry)", err)
				}
				if d := time.Since(start); d > 200*time.Millisecond {
					t.Errorf("a blob whose only holder is down took %v", d)
				}
			}
			if n := front.requests.Load() - asked; n != 0 {
				t.Errorf("the peer held down was asked %d times", n)
			}
			if st := src.Stats(); st.BreakerSkips < 5 {
				t.Errorf("%d requests counted as spared, want at least 5", st.BreakerSkips)
			}

			// Healed, it answers a probe and is asked again.
			front.hang.Store(false)
			front.cut.Store(false)
			registrytest.Wait(t, "a probe to bring the peer back", func() bool { return src.Stats().PeersDown == 0 })
			blob, err := src.OpenBlob(ctx, testRegistry, testRepo, img.layer, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := readBlob(t, blob); blob.Peer != "b" || !bytes.Equal(got, img.data) {
				t.Errorf("blob from %q after the peer came back, %d bytes; want b's %d", blob.Peer, len(got), len(img.data))
			}
			if src.Stats().Probes == 0 || front.probes.Load() == 0 {
				t.Error("no probe counted")
			}
		})
	}
}

// TestBreakerForgetsAPeerThatLeft: the probe of a peer that is no longer an alive member ends,
// and its record goes.
func TestBreakerForgetsAPeerThatLeft(t *testing.T) {
	t.Parallel()
	_, img, b := newHolder(t, 64<<10)
	front := newFlakyFront(t, b)
	front.hang.Store(true)
	c := newTestCluster("a", front.member("b"))
	c.setHolders(cluster.BlobKey(img.layer), "b")
	src := NewSource(c, SourceOptions{
		Budget:  Budget{HeaderTimeout: 200 * time.Millisecond},
		Breaker: BreakerOptions{ProbeInterval: 20 * time.Millisecond},
	})
	t.Cleanup(src.Close)
	if _, err := src.OpenBlob(t.Context(), testRegistry, testRepo, img.layer, nil); err == nil {
		t.Fatal("a hung holder answered")
	}
	if src.Stats().PeersDown != 1 {
		t.Fatal("the hung holder is not down")
	}
	c.mu.Lock()
	delete(c.members, "b")
	c.mu.Unlock()
	registrytest.Wait(t, "the probe to forget the peer that left", func() bool {
		src.breaker.mu.Lock()
		defer src.breaker.mu.Unlock()
		return len(src.breaker.peers) == 0
	})
}

// TestBreakerBounded: the records of peers that are up are bounded.
func TestBreakerBounded(t *testing.T) {
	t.Parallel()
	src := NewSource(newTestCluster("a"), SourceOptions{})
	t.Cleanup(src.Close)
	for i := range maxTrackedPeers + 10 {
		m := cluster.Member{Name: fmt.Sprint("p", i), PeerAddr: fmt.Sprint("127.0.0.1:", 10000+i)}
		src.breaker.Observe(m, time.Now(), errdefs.ErrUnavailable)
		src.breaker.Observe(m, time.Now(), nil)
	}
	src.breaker.mu.Lock()
	n := len(src.breaker.peers)
	src.breaker.mu.Unlock()
	if n > maxTrackedPeers {
		t.Errorf("%d peers recorded, want at most %d", n, maxTrackedPeers)
	}
}
