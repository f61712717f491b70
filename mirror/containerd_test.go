package mirror

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/internal/registrytest"
)

// hostsOf is a containerd hosts configuration listing servers in order, as hosts.toml does.
func hostsOf(t *testing.T, servers ...*httptest.Server) docker.RegistryHosts {
	t.Helper()
	var hosts []docker.RegistryHost
	for _, s := range servers {
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, docker.RegistryHost{
			Client: s.Client(), Host: u.Host, Scheme: "http", Path: "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		})
	}
	return func(string) ([]docker.RegistryHost, error) { return hosts, nil }
}

// answerLog records the mirror's answers.
type answerLog struct {
	mu  sync.Mutex
	all []Answer
}

func (l *answerLog) observe(a Answer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, a)
}

func (l *answerLog) answers() []Answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Answer(nil), l.all...)
}

// TestContainerdPull pulls through the mirror with containerd's own resolver and fetcher, the
// code behind ctr, nerdctl and the CRI plugin, into a containerd content store.
func TestContainerdPull(t *testing.T) {
	t.Parallel()
	b := newMemBackend()
	alpine := b.addImage("docker.io", "library/alpine", "3.20", 3<<20)
	app := b.addImage("ghcr.io", "org/app", "v1", 100<<10)
	var log answerLog
	srv := newServer(t, b, Options{Observe: log.observe})
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: hostsOf(t, srv)})

	for _, tc := range []struct {
		name string
		ref  string
		img  testImage
	}{
		{"docker hub by tag", "docker.io/library/alpine:3.20", alpine},
		{"docker hub by digest", "docker.io/library/alpine@" + alpine.index.Digest.String(), alpine},
		{"other registry by tag", "ghcr.io/org/app:v1", app},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			name, desc, err := resolver.Resolve(ctx, tc.ref)
			if err != nil {
				t.Fatal(err)
			}
			if desc.Digest != tc.img.index.Digest || desc.Size != tc.img.index.Size || desc.MediaType != tc.img.index.MediaType {
				t.Fatalf("resolved %+v, want %+v", desc, tc.img.index)
			}
			fetcher, err := resolver.Fetcher(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := local.NewStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			// FetchHandler verifies every blob against its digest as it writes it.
			pull := images.Handlers(remotes.FetchHandler(cs, fetcher), images.ChildrenHandler(cs))
			if err := images.Dispatch(ctx, pull, nil, desc); err != nil {
				t.Fatal(err)
			}
			for _, d := range []digest.Digest{tc.img.index.Digest, tc.img.manifest.Digest, tc.img.config.Digest, tc.img.layer.Digest} {
				if _, err := cs.Info(ctx, d); err != nil {
					t.Errorf("%s not pulled: %v", d, err)
				}
			}
			got, err := content.ReadBlob(ctx, cs, tc.img.layer)
			if err != nil || !bytes.Equal(got, tc.img.blobs[tc.img.layer.Digest]) {
				t.Errorf("layer differs (%v)", err)
			}
		})
	}

	t.Run("resume with a range", func(t *testing.T) {
		t.Parallel()
		ctx := t.Context()
		fetcher, err := resolver.Fetcher(ctx, "docker.io/library/alpine:3.20")
		if err != nil {
			t.Fatal(err)
		}
		rc, err := fetcher.Fetch(ctx, alpine.layer)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		const off = 1 << 20
		if _, err := rc.(io.Seeker).Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(rc)
		if err != nil || !bytes.Equal(rest, alpine.blobs[alpine.layer.Digest][off:]) {
			t.Fatalf("resumed read: %d bytes, %v", len(rest), err)
		}
		ranged := false
		for _, a := range log.answers() {
			ranged = ranged || (a.Route == "blob" && a.Status == http.StatusPartialContent && a.Bytes == alpine.layer.Size-off)
		}
		if !ranged {
			t.Error("the mirror answered no range request")
		}
	})

	t.Run("missing image is not found", func(t *testing.T) {
		t.Parallel()
		if _, _, err := resolver.Resolve(t.Context(), "docker.io/library/missing:1"); !errdefs.IsNotFound(err) {
			t.Errorf("err %v, want not found", err)
		}
	})
}

// TestContainerdMovesOn checks the error statuses against containerd's host fallback: with the
// upstream registry kept after lifeboat (the hosts.toml lifeboat writes), whatever lifeboat
// cannot serve is pulled from the upstream.
func TestContainerdMovesOn(t *testing.T) {
	t.Parallel()
	upstream := registrytest.NewUpstream(t)
	img := upstream.Push(t, "library/busybox", "1.36", 1024)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		err  error
		// tries is how many times containerd asks lifeboat, as the only host, for the tag.
		tries int
	}{
		{"not found", fmt.Errorf("not cached, upstream down: %w", errdefs.ErrNotFound), 1},
		{"invalid", fmt.Errorf("refused: %w", errdefs.ErrInvalidArgument), 1},
		{"failed verification", fmt.Errorf("digest mismatch: %w", errdefs.ErrFailedPrecondition), 1},
		{"unavailable", fmt.Errorf("closing: %w", errdefs.ErrUnavailable), 2},
		{"internal", fmt.Errorf("disk on fire"), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			var log answerLog
			mirror := newServer(t, errBackend{err: tc.err}, Options{Observe: log.observe})

			resolver := docker.NewResolver(docker.ResolverOptions{Hosts: hostsOf(t, mirror, upstream.Server)})
			name, desc, err := resolver.Resolve(ctx, "docker.io/library/busybox:1.36")
			if err != nil {
				t.Fatalf("containerd did not move on to the upstream: %v", err)
			}
			if desc.Digest.String() != want.String() {
				t.Fatalf("resolved %s, want %s", desc.Digest, want)
			}
			fetcher, err := resolver.Fetcher(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := fetcher.Fetch(ctx, desc)
			if err != nil {
				t.Fatalf("fetch did not move on to the upstream: %v", err)
			}
			rc.Close()
			if len(log.answers()) == 0 {
				t.Error("containerd never asked the mirror")
			}

			// lifeboat as the only host (`configure containerd --fallback none`): only 5xx
			// answers that may pass are retried; a verification failure is not.
			alone := docker.NewResolver(docker.ResolverOptions{Hosts: hostsOf(t, mirror)})
			before := len(log.answers())
			if _, _, err := alone.Resolve(ctx, "docker.io/library/busybox:1.36"); err == nil {
				t.Fatal("resolved through a failing mirror alone")
			}
			if got := len(log.answers()) - before; got != tc.tries {
				t.Errorf("containerd asked %d times, want %d", got, tc.tries)
			}
		})
	}
}
