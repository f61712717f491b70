package resolver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
	"github.com/lifeboat-dev/lifeboat/resolver/fill"
	"github.com/lifeboat-dev/lifeboat/upstream"
)

const testRegistry = "registry.test"

// newTestResolver returns a Resolver whose registry.test upstream is the given servers, in order.
func newTestResolver(t *testing.T, policy string, ups ...*registrytest.Upstream) (*Resolver, *cache.Store) {
	t.Helper()
	return newTestResolverAt(t, t.TempDir(), policy, testHealth, ups...)
}

// testHealth is the circuit breaker of the test resolvers: quick to open and to probe.
var testHealth = endpoints.Health{FailureThreshold: 2, ProbeInterval: 20 * time.Millisecond, ProbeMaxInterval: 50 * time.Millisecond}

// newTestResolverWithHealth is newTestResolver with the circuit breaker tuned by health.
func newTestResolverWithHealth(t *testing.T, policy string, health endpoints.Health, ups ...*registrytest.Upstream) (*Resolver, *cache.Store) {
	t.Helper()
	return newTestResolverAt(t, t.TempDir(), policy, health, ups...)
}

// newTestResolverAt is newTestResolver over the cache at root, with the circuit breaker health.
func newTestResolverAt(t *testing.T, root, policy string, health endpoints.Health, ups ...*registrytest.Upstream) (*Resolver, *cache.Store) {
	t.Helper()
	store, err := cache.Open(t.Context(), root, cache.Options{MaxSize: 1 << 34})
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, u := range ups {
		urls = append(urls, u.URL)
	}
	r, err := New(t.Context(), store, Options{
		Policy:          policy,
		TagMaxAge:       time.Hour,
		UpstreamTimeout: 3 * time.Second, // generous: tests run in parallel under -race on 2 cores
		IdleTimeout:     5 * time.Second,
		FillTimeout:     time.Minute,
		// Fills stream what arrived to their readers, the last byte held back until verified:
		// what these tests are about. The mirror's TestUnverifiedBlobNeverCompletes covers the default,
		// which holds blobs of their size whole.
		VerifyBeforeSend: -1,
		Endpoints:        map[string][]string{testRegistry: urls},
		NewClient: func(registry, endpoint string) (endpoints.Client, error) {
			return upstream.New(registry, endpoint, upstream.Options{})
		},
		Health: health,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		store.Close()
	})
	return r, store
}

func TestTagStatuses(t *testing.T) {
	t.Parallel()
	for _, f := range []registrytest.Fault{registrytest.Status503, registrytest.Status429, registrytest.Hang} {
		t.Run("stale on "+string(f), func(t *testing.T) {
			t.Parallel()
			up := registrytest.NewUpstream(t)
			img := up.Push(t, "app", "v1", 1024)
			want := registrytest.Digest(t, img)
			r, _ := newTestResolver(t, PolicyUpstreamFirst, up)
			ctx := t.Context()

			m, err := r.Manifest(ctx, testRegistry, "app", "v1")
			if err != nil || m.Status != Miss || m.Descriptor.Digest != want {
				t.Fatalf("first resolution: %+v %v, want a miss of %s", m.Descriptor, err, want)
			}
			gets := up.Count("GET manifests")
			m, err = r.Manifest(ctx, testRegistry, "app", "v1")
			if err != nil || m.Status != Revalidated || m.Descriptor.Digest != want {
				t.Fatalf("second resolution: %+v %s %v, want revalidated", m.Descriptor, m.Status, err)
			}
			if up.Count("GET manifests") != gets {
				t.Error("revalidating an unchanged tag downloaded the manifest again")
			}

			up.SetFault(f)
			m, err = r.Manifest(ctx, testRegistry, "app", "v1")
			if err != nil || m.Status != Stale || m.Descriptor.Digest != want {
				t.Fatalf("with the upstream failing (%s): %+v %s %v, want stale", f, m.Descriptor, m.Status, err)
			}
			if !bytes.Equal(m.Body, registrytest.RawManifest(t, img)) {
				t.Error("stale manifest body differs from the upstream's")
			}
			// Never cached: not found, promptly, so containerd moves on.
			_, err = r.Manifest(ctx, testRegistry, "app", "never-pushed")
			if !errdefs.IsNotFound(err) {
				t.Fatalf("uncached tag with the upstream failing: %v, want not found", err)
			}
		})
	}
}

func TestTagMovesUpstream(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "latest", 512)
	r, store := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()
	if _, err := r.Manifest(ctx, testRegistry, "app", "latest"); err != nil {
		t.Fatal(err)
	}
	newer := up.Push(t, "app", "latest", 512)
	m, err := r.Manifest(ctx, testRegistry, "app", "latest")
	if err != nil || m.Status != Revalidated || m.Descriptor.Digest != registrytest.Digest(t, newer) {
		t.Fatalf("after the tag moved upstream: %+v %s %v", m.Descriptor, m.Status, err)
	}
	ref, err := store.GetRef(ctx, testRegistry+"/app:latest")
	if err != nil || ref.Target.Digest != registrytest.Digest(t, newer) {
		t.Fatalf("cached ref %+v %v does not follow the tag", ref.Target, err)
	}
}

func TestCacheFirstPolicy(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "v1", 512)
	r, _ := newTestResolver(t, PolicyCacheFirst, up)
	ctx := t.Context()
	if _, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil {
		t.Fatal(err)
	}
	heads := up.Count("HEAD manifests")
	m, err := r.Manifest(ctx, testRegistry, "app", "v1")
	if err != nil || m.Status != Hit {
		t.Fatalf("within tag_max_age: %s %v, want hit", m.Status, err)
	}
	if up.Count("HEAD manifests") != heads {
		t.Error("cache-first asked upstream about a tag it trusts")
	}
}

// TestBreakerOpensAndCloses: quick errors mark an endpoint down after FailureThreshold (2 in
// these tests) failures; one request left unanswered past the upstream timeout, with nothing
// else answered meanwhile, marks it down at once, so that the next clients are answered from
// the cache instead of each waiting out the timeout too. A probe brings it back.
func TestBreakerOpensAndCloses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		fault    registrytest.Fault
		failures int
	}{
		{registrytest.Status503, 2},
		{registrytest.Hang, 1},
	} {
		t.Run(string(tc.fault), func(t *testing.T) {
			t.Parallel()
			up := registrytest.NewUpstream(t)
			up.Push(t, "app", "v1", 512)
			r, _ := newTestResolver(t, PolicyUpstreamFirst, up)
			ctx := t.Context()
			if _, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil {
				t.Fatal(err)
			}
			up.SetFault(tc.fault)
			for i := range tc.failures {
				if m, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Stale {
					t.Fatalf("%s %v", m.Status, err)
				}
				if eps := r.Endpoints(); i < tc.failures-1 && !eps[0].Up {
					t.Fatalf("after %d of %d failures the endpoint is %+v, want still up", i+1, tc.failures, eps[0])
				}
			}
			if eps := r.Endpoints(); len(eps) != 1 || eps[0].Up {
				t.Fatalf("after %d failures the endpoint is %+v, want down", tc.failures, eps)
			}
			heads := up.Count("HEAD manifests")
			for range 5 {
				if m, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Stale {
					t.Fatalf("with the breaker open: %s %v, want stale", m.Status, err)
				}
			}
			if got := up.Count("HEAD manifests"); got != heads {
				t.Errorf("%d tag requests reached a down endpoint", got-heads)
			}
			up.SetFault(registrytest.Healthy)
			registrytest.Wait(t, "the probe to mark the endpoint up", func() bool { return r.Endpoints()[0].Up })
			if up.Count("GET ping") == 0 {
				t.Error("the endpoint came back without a probe")
			}
			if m, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Revalidated {
				t.Fatalf("after recovery: %s %v, want revalidated", m.Status, err)
			}
		})
	}
}

// TestBreakerDefaultThreshold pins the documented default (docs/configuration.md: "after 3
// consecutive failures"): two quick failures leave the endpoint up, the third marks it down.
func TestBreakerDefaultThreshold(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, "app", "v1", 512)
	r, _ := newTestResolverWithHealth(t, PolicyUpstreamFirst, endpoints.Health{}, up)
	ctx := t.Context()
	if _, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil {
		t.Fatal(err)
	}
	up.SetFault(registrytest.Status503)
	for i := 1; i <= 3; i++ {
		if m, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil || m.Status != Stale {
			t.Fatalf("failure %d: %s %v, want stale", i, m.Status, err)
		}
		if eps := r.Endpoints(); eps[0].Up != (i < 3) {
			t.Fatalf("after %d consecutive failures the endpoint is %+v, want Up=%v", i, eps[0], i < 3)
		}
	}
}

func TestEndpointFailover(t *testing.T) {
	t.Parallel()
	broken, good := registrytest.NewUpstream(t), registrytest.NewUpstream(t)
	broken.SetFault(registrytest.Status503)
	img := good.Push(t, "app", "v1", 512)
	r, store := newTestResolver(t, PolicyUpstreamFirst, broken, good)
	ctx := t.Context()
	m, err := r.Manifest(ctx, testRegistry, "app", "v1")
	if err != nil || m.Descriptor.Digest != registrytest.Digest(t, img) {
		t.Fatalf("%+v %v", m.Descriptor, err)
	}
	ref, _ := store.GetRef(ctx, testRegistry+"/app:v1")
	if ref.Endpoint != good.URL {
		t.Errorf("answer recorded from %q, want the second endpoint %q", ref.Endpoint, good.URL)
	}
	if broken.Count("HEAD manifests") == 0 {
		t.Error("the first endpoint was never tried")
	}
}

func readBlob(ctx context.Context, r *Resolver, repo string, dgst digest.Digest) ([]byte, CacheStatus, error) {
	b, err := r.Blob(ctx, testRegistry, repo, dgst)
	if err != nil {
		return nil, "", err
	}
	defer b.Close()
	rc, err := b.Reader(0, b.Descriptor.Size)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	return data, b.Status, err
}

func TestBlobMissThenHit(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 1<<20)
	dgst, want := registrytest.Layer(t, img, 0)
	r, store := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()
	got, status, err := readBlob(ctx, r, "app", dgst)
	if err != nil || status != Miss || !bytes.Equal(got, want) {
		t.Fatalf("cold read: %s %v, equal=%v", status, err, bytes.Equal(got, want))
	}
	// Readers finish once the bytes are verified; the commit (fsync) may still be running.
	registrytest.Wait(t, "the fill to be committed", func() bool { _, err := store.Info(ctx, dgst); return err == nil })
	up.SetFault(registrytest.Hang) // a hit must not touch the upstream at all
	got, status, err = readBlob(ctx, r, "app", dgst)
	if err != nil || status != Hit || !bytes.Equal(got, want) {
		t.Fatalf("warm read: %s %v", status, err)
	}
	if n := up.Count("GET blobs"); n != 1 {
		t.Errorf("%d upstream blob downloads, want 1", n)
	}
	// Served only under the repository it was fetched for.
	if _, _, err := readBlob(ctx, r, "other", dgst); !errdefs.IsNotFound(err) {
		t.Errorf("the blob under another repository with the upstream down: %v, want not found", err)
	}
}

func TestOneUpstreamFetchForConcurrentClients(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 4<<20)
	dgst, want := registrytest.Layer(t, img, 0)
	gate := up.HoldBodies()
	r, store := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()

	const clients = 32
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	firstHalf := make(chan struct{}, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			arrived := false
			defer func() {
				if !arrived { // failed before the first half: do not leave the test waiting
					firstHalf <- struct{}{}
				}
			}()
			b, err := r.Blob(ctx, testRegistry, "app", dgst)
			if err != nil {
				errs <- err
				return
			}
			defer b.Close()
			rc, _ := b.Reader(0, b.Descriptor.Size)
			half := make([]byte, len(want)/2)
			if _, err := io.ReadFull(rc, half); err != nil {
				errs <- err
				return
			}
			// The first half arrived while the upstream still holds back the second: clients
			// stream as bytes arrive, not after the fill completes.
			arrived = true
			firstHalf <- struct{}{}
			// Half the clients read the rest, half have it written to them (as the mirror does,
			// with sendfile to a connection); some of the latter start after the commit.
			var rest []byte
			if i%2 == 0 {
				rest, err = io.ReadAll(rc)
			} else {
				var buf bytes.Buffer
				_, err = rc.(io.WriterTo).WriteTo(&buf)
				rest = buf.Bytes()
			}
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(append(half, rest...), want) {
				errs <- errors.New("a client got the wrong bytes")
			}
		}()
	}
	for range clients {
		<-firstHalf
	}
	if _, err := store.Info(ctx, dgst); !errdefs.IsNotFound(err) {
		t.Fatal("the blob was committed before the upstream finished sending it")
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := up.Count("GET blobs"); n != 1 {
		t.Errorf("%d upstream downloads for %d concurrent clients, want exactly 1", n, clients)
	}
}

func TestBadUpstreamBytesAreNeverCached(t *testing.T) {
	t.Parallel()
	for _, f := range []registrytest.Fault{registrytest.Corrupt, registrytest.Truncate} {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			up := registrytest.NewUpstream(t)
			img := up.Push(t, "app", "v1", 256<<10)
			dgst, _ := registrytest.Layer(t, img, 0)
			r, store := newTestResolver(t, PolicyUpstreamFirst, up)
			up.SetFault(f)
			_, _, err := readBlob(t.Context(), r, "app", dgst)
			if err == nil {
				t.Fatal("a client read a bad upstream blob to a clean end")
			}
			if _, err := store.Info(t.Context(), dgst); !errdefs.IsNotFound(err) {
				t.Fatalf("bad upstream bytes were cached: %v", err)
			}
			if f == registrytest.Corrupt && r.DigestMismatches() != 1 {
				t.Errorf("digest mismatches counted: %d, want 1", r.DigestMismatches())
			}
			// Once the upstream is fixed, the blob is fetched and served correctly.
			up.SetFault(registrytest.Healthy)
			registrytest.Wait(t, "the endpoint to be usable", func() bool { return r.Endpoints()[0].Up })
			if _, _, err := readBlob(t.Context(), r, "app", dgst); err != nil {
				t.Fatalf("after the upstream recovered: %v", err)
			}
		})
	}
}

// TestSmallBlobsAreVerifiedBeforeSending: a blob of up to fill.SmallBlob bytes that fails
// verification gives its client an error before any byte, so that no client holds bytes of it
// that lifeboat would not cache; a larger one is streamed as it arrives.
func TestSmallBlobsAreVerifiedBeforeSending(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	small := up.Push(t, "small", "v1", fill.SmallBlob/2) // random layers: tar and gzip add a little
	large := up.Push(t, "large", "v1", 2*fill.SmallBlob)
	r, _ := newTestResolver(t, PolicyUpstreamFirst, up)
	up.SetFault(registrytest.Corrupt)

	dgst, _ := registrytest.Layer(t, small, 0)
	if b, err := r.Blob(t.Context(), testRegistry, "small", dgst); err == nil {
		b.Close()
		t.Fatal("a small corrupt blob was handed to its client before verification")
	} else if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("a small corrupt blob: %v, want a failed precondition (digest mismatch)", err)
	}

	dgst, _ = registrytest.Layer(t, large, 0)
	b, err := r.Blob(t.Context(), testRegistry, "large", dgst)
	if err != nil {
		t.Fatalf("a large blob was not streamed: %v", err)
	}
	defer b.Close()
	rc, _ := b.Reader(0, b.Descriptor.Size)
	if _, err := io.Copy(io.Discard, rc); err == nil {
		t.Error("a large corrupt blob was read to a clean end")
	}
}

// TestSmallBlobWaitEndsWithTheClient: a client waiting for a small blob to be verified stops
// waiting when it gives up, and the fill goes on to cache the blob for the next client.
func TestSmallBlobWaitEndsWithTheClient(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", fill.SmallBlob/2)
	dgst, want := registrytest.Layer(t, img, 0)
	r, store := newTestResolver(t, PolicyUpstreamFirst, up)
	gate := up.HoldBodies() // the upstream sends half and waits

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := r.Blob(ctx, testRegistry, "app", dgst)
		done <- err
	}()
	registrytest.Wait(t, "the fill to start", func() bool { return up.Count("GET blobs") == 1 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("a client that gave up: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a client that gave up still waits for the fill")
	}
	close(gate)
	registrytest.Wait(t, "the fill to cache the blob", func() bool {
		_, err := store.Info(t.Context(), dgst)
		return err == nil
	})
	if got, status, err := readBlob(t.Context(), r, "app", dgst); err != nil || status != Hit || !bytes.Equal(got, want) {
		t.Fatalf("the next client: %s %v", status, err)
	}
}

func TestFillSurvivesClientDisconnect(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 1<<20)
	dgst, want := registrytest.Layer(t, img, 0)
	gate := up.HoldBodies()
	r, store := newTestResolver(t, PolicyUpstreamFirst, up)

	ctx, cancel := context.WithCancel(t.Context())
	b, err := r.Blob(ctx, testRegistry, "app", dgst)
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := b.Reader(0, b.Descriptor.Size)
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	// The client goes away mid-transfer.
	rc.Close()
	b.Close()
	cancel()
	close(gate)
	registrytest.Wait(t, "the fill to complete without its client", func() bool {
		_, err := store.Info(t.Context(), dgst)
		return err == nil
	})
	got, status, err := readBlob(t.Context(), r, "app", dgst)
	if err != nil || status != Hit || !bytes.Equal(got, want) {
		t.Fatalf("retry after the disconnect: %s %v", status, err)
	}
}

func TestDigestReferencesServedOffline(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 512)
	want := registrytest.Digest(t, img)
	r, _ := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()
	if _, err := r.Manifest(ctx, testRegistry, "app", "v1"); err != nil {
		t.Fatal(err)
	}
	up.SetFault(registrytest.Hang)
	m, err := r.Manifest(ctx, testRegistry, "app", want.String())
	if err != nil || m.Status != Hit || m.Descriptor.Digest != want {
		t.Fatalf("digest reference offline: %+v %s %v, want hit", m.Descriptor, m.Status, err)
	}
	if _, err := r.Manifest(ctx, testRegistry, "elsewhere", want.String()); !errdefs.IsNotFound(err) {
		t.Errorf("the manifest under another repository: %v, want not found", err)
	}
}

func TestTagsList(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	for _, tag := range []string{"b", "a", "c"} {
		up.Push(t, "app", tag, 256)
	}
	r, _ := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()
	tags, status, err := r.Tags(ctx, testRegistry, "app")
	if err != nil || status != Revalidated || strings.Join(tags, ",") != "a,b,c" {
		t.Fatalf("upstream tags: %v %s %v", tags, status, err)
	}
	if _, err := r.Manifest(ctx, testRegistry, "app", "b"); err != nil {
		t.Fatal(err)
	}
	up.SetFault(registrytest.Status503)
	tags, status, err = r.Tags(ctx, testRegistry, "app")
	if err != nil || status != Stale || strings.Join(tags, ",") != "b" {
		t.Fatalf("cached tags with the upstream down: %v %s %v, want [b] stale", tags, status, err)
	}
}

func TestInvalidArguments(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	r, _ := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()
	for _, tc := range []struct{ name, registry, repo, ref string }{
		{"dot-dot repo", testRegistry, "../etc", "v1"},
		{"upper-case repo", testRegistry, "App", "v1"},
		{"bad tag", testRegistry, "app", "-v1"},
		{"bad digest", testRegistry, "app", "sha256:xyz"},
		{"bad registry", "bad host!", "app", "v1"},
	} {
		if _, err := r.Manifest(ctx, tc.registry, tc.repo, tc.ref); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want invalid argument", tc.name, err)
		}
	}
	if up.Count("HEAD manifests")+up.Count("GET manifests") != 0 {
		t.Error("invalid requests reached the upstream")
	}
}

func TestCachedBlobOffersItsFile(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := up.Push(t, "app", "v1", 64<<10)
	dgst, want := registrytest.Layer(t, img, 0)
	r, store := newTestResolver(t, PolicyUpstreamFirst, up)
	ctx := t.Context()
	if _, _, err := readBlob(ctx, r, "app", dgst); err != nil {
		t.Fatal(err)
	}
	registrytest.Wait(t, "the fill to be committed", func() bool { _, err := store.Info(ctx, dgst); return err == nil })
	b, err := r.Blob(ctx, testRegistry, "app", dgst)
	if err != nil || b.Status != Hit {
		t.Fatalf("%v %v", b, err)
	}
	defer b.Close()
	rc, err := b.Reader(100, 50)
	if err != nil {
		t.Fatal(err)
	}
	fr, ok := rc.(cache.FileBacked)
	if !ok {
		t.Fatal("a cached blob's reader offers no file for sendfile")
	}
	f := fr.File()
	if f == nil {
		t.Fatal("File: nil")
	}
	got := make([]byte, 50)
	if _, err := f.ReadAt(got, 100); err != nil || !bytes.Equal(got, want[100:150]) {
		t.Fatalf("the file does not hold the blob: %v", err)
	}
}

func TestInterruptedDownloadsAreRemovedAtStart(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store, err := cache.Open(ctx, t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	// What a crash mid-fill leaves, next to an ingest containerd owns.
	for _, ref := range []string{fill.RefPrefix + "registry.test/app@sha256:abc", manifestRefPrefix + "x", "default/1/layer-sha256:def"} {
		w, err := store.Writer(ctx, content.WithRef(ref))
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("partial"))
		w.Close()
	}
	r, err := New(t.Context(), store, Options{NewClient: func(string, string) (endpoints.Client, error) { return nil, errdefs.ErrNotImplemented }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sts, err := store.ListStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 || sts[0].Ref != "default/1/layer-sha256:def" {
		t.Fatalf("ingests after start: %+v, want only containerd's", sts)
	}
}
