package registrytest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

var _ endpoints.Client = (*registrytest.DownClient)(nil)

// get fetches path from up, and its body; a body that breaks off returns the error.
func get(t *testing.T, ctx context.Context, up *registrytest.Upstream, path string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestUpstreamFaults(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "team/app", "v1", 4096)
	dgst, want := registrytest.Layer(t, img, 0)
	blob := "/v2/team/app/blobs/" + dgst.String()
	before := map[string]int64{}
	for _, key := range []string{"GET blobs", "GET manifests", "GET ping"} {
		before[key] = up.Count(key)
	}
	total := up.Total()
	if got := registrytest.Blobs(t, img); len(got) != 3 || got[1] != dgst {
		t.Fatalf("Blobs = %v, want the config and two layers, %s first", got, dgst)
	}

	resp, body, err := get(t, t.Context(), up, blob)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("healthy: %v %v, equal=%v", resp, err, bytes.Equal(body, want))
	}
	resp, body, err = get(t, t.Context(), up, "/v2/team/app/manifests/v1")
	if err != nil || !bytes.Equal(body, registrytest.RawManifest(t, img)) || resp.Header.Get("Docker-Content-Digest") != registrytest.Digest(t, img).String() {
		t.Fatalf("manifest: %v %v", resp, err)
	}

	up.SetFault(registrytest.Status503)
	if resp, _, err := get(t, t.Context(), up, blob); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("503: %v %v", resp, err)
	}
	up.SetFault(registrytest.Status429)
	if resp, _, err := get(t, t.Context(), up, blob); err != nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "30" {
		t.Errorf("429: %v %v", resp, err)
	}
	up.SetFault(registrytest.Corrupt)
	if _, body, err := get(t, t.Context(), up, blob); err != nil || len(body) != len(want) || bytes.Equal(body, want) {
		t.Errorf("corrupt: %d bytes of %d, %v, equal=%v; want the length right and the bytes not", len(body), len(want), err, bytes.Equal(body, want))
	}
	up.SetFault(registrytest.Truncate)
	if _, body, err := get(t, t.Context(), up, blob); err == nil || len(body) >= len(want) {
		t.Errorf("truncate: %d bytes of %d, %v; want a body broken off", len(body), len(want), err)
	}
	up.SetFault(registrytest.Hang)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := get(t, ctx, up, blob); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hang: %v, want the client's deadline", err)
	}

	up.SetFault(registrytest.Healthy)
	date := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	up.SetDate(date)
	if resp, _, err := get(t, t.Context(), up, "/v2/"); err != nil || resp.Header.Get("Date") != date.Format(http.TimeFormat) {
		t.Errorf("set date: %v %v", resp, err)
	}
	up.SetDate(time.Time{})
	if resp, _, err := get(t, t.Context(), up, "/v2/"); err != nil || resp.Header.Get("Date") != "" {
		t.Errorf("no date: %v %v", resp, err)
	}

	// Every request since the push is counted, by kind.
	for key, want := range map[string]int64{"GET blobs": 6, "GET manifests": 1, "GET ping": 2} {
		if n := up.Count(key) - before[key]; n != want {
			t.Errorf("Count(%q) grew by %d, want %d", key, n, want)
		}
	}
	if n := up.Total() - total; n != 9 {
		t.Errorf("Total() grew by %d, want 9", n)
	}
}

func TestUpstreamHoldsBodies(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 64<<10)
	dgst, want := registrytest.Layer(t, img, 1)
	gate := up.HoldBodies()
	resp, err := http.Get(up.URL + "/v2/app/blobs/" + dgst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	half := make([]byte, len(want)/2)
	if _, err := io.ReadFull(resp.Body, half); err != nil {
		t.Fatal(err)
	}
	var rest atomic.Pointer[[]byte]
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, _ := io.ReadAll(resp.Body)
		rest.Store(&b)
	}()
	select {
	case <-done:
		t.Fatal("the second half came before the gate opened")
	case <-time.After(50 * time.Millisecond):
	}
	close(gate)
	<-done
	if got := append(half, *rest.Load()...); !bytes.Equal(got, want) {
		t.Errorf("held body: %d bytes, want the layer's %d", len(got), len(want))
	}
}

func TestPushIndex(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	idx, imgs := up.PushIndex(t, "multi", "v1", "linux/amd64", "linux/arm64/v8")
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 2 || len(imgs) != 2 {
		t.Fatalf("index of %d manifests, %d images; want 2", len(m.Manifests), len(imgs))
	}
	for _, d := range m.Manifests {
		if img := imgs[d.Platform.String()]; img == nil || registrytest.Digest(t, img).String() != d.Digest.String() {
			t.Errorf("%s: %s, not the image returned for it", d.Platform, d.Digest)
		}
	}
}

func TestDownClient(t *testing.T) {
	t.Parallel()
	c := registrytest.NewDownClient("https://registry.test")
	if c.Endpoint() != "https://registry.test" {
		t.Errorf("Endpoint() = %q", c.Endpoint())
	}
	if err := c.Ping(t.Context()); !errdefs.IsUnavailable(err) {
		t.Errorf("Ping: %v, want unavailable", err)
	}
	if _, err := c.Tags(t.Context(), "x"); !errdefs.IsUnavailable(err) {
		t.Errorf("Tags: %v, want unavailable", err)
	}
	c.CloseIdleConnections()
	if c.Pings.Load() != 1 || c.IdleCloses.Load() != 1 {
		t.Errorf("pings %d, idle closes %d; want 1 each", c.Pings.Load(), c.IdleCloses.Load())
	}
}

func TestWait(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	registrytest.Wait(t, "the count to reach 3", func() bool { return n.Add(1) >= 3 })
	if n.Load() != 3 {
		t.Errorf("cond called %d times, want 3", n.Load())
	}
}
