package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/plugins/content/local"
)

// pull pulls ref through the mirror with containerd's resolver and fetcher, into a new
// containerd content store in dir.
func (d *tour) pull(ctx context.Context, ref, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	r := docker.NewResolver(docker.ResolverOptions{Hosts: d.hosts})
	resolved, desc, err := r.Resolve(ctx, ref)
	if err != nil {
		return err
	}
	fetcher, err := r.Fetcher(ctx, resolved)
	if err != nil {
		return err
	}
	cs, err := local.NewStore(dir)
	if err != nil {
		return err
	}
	// FetchHandler verifies every blob against its digest as it writes it.
	return images.Dispatch(ctx, images.Handlers(remotes.FetchHandler(cs, fetcher), images.ChildrenHandler(cs)), nil, desc)
}

// hosts is containerd's host configuration for every registry: the mirror alone.
func (d *tour) hosts(string) ([]docker.RegistryHost, error) {
	return []docker.RegistryHost{{
		Client: d.client, Host: d.mirror, Scheme: "http", Path: "/v2",
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
	}}, nil
}

// whyNot asks the mirror for ref's manifest with a GET and returns the message of its error
// answer.
func (d *tour) whyNot(ctx context.Context, ref string) string {
	repoTag := strings.TrimPrefix(ref, Registry+"/")
	repo, tag, _ := strings.Cut(repoTag, ":")
	u := "http://" + d.mirror + "/v2/" + repo + "/manifests/" + tag + "?ns=" + url.QueryEscape(Registry)
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return ""
	}
	req.Header.Set("Accept", strings.Join([]string{ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2ManifestList}, ", "))
	resp, err := d.plain.Do(req)
	if err != nil {
		return "(no answer: " + err.Error() + ")"
	}
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &body) != nil || len(body.Errors) == 0 {
		return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return fmt.Sprintf("%d %s: %s", resp.StatusCode, body.Errors[0].Code, body.Errors[0].Message)
}

// countingHandler counts the requests h serves and the body bytes it writes.
type countingHandler struct {
	h               http.Handler
	requests, bytes atomic.Int64
}

func (c *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.requests.Add(1)
	c.h.ServeHTTP(&countingWriter{ResponseWriter: w, n: &c.bytes}, r)
}

func (c *countingHandler) traffic() Traffic {
	return Traffic{Requests: c.requests.Load(), Bytes: c.bytes.Load()}
}

func (t Traffic) minus(u Traffic) Traffic {
	return Traffic{Requests: t.Requests - u.Requests, Bytes: t.Bytes - u.Bytes}
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// recorder is the pulls' HTTP transport: it records the mirror's answers, as a client
// sees them, and counts the body bytes received.
type recorder struct {
	base  http.RoundTripper
	bytes atomic.Int64

	mu      sync.Mutex
	answers []recorded
}

type recorded struct {
	kind   string
	status int
	cache  string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.answers = append(r.answers, recorded{kind: requestKind(req.URL), status: resp.StatusCode, cache: resp.Header.Get(oci.HeaderCache)})
	r.mu.Unlock()
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &r.bytes}
	return resp, nil
}

// take returns the answers and bytes recorded since the last take, and forgets them.
func (r *recorder) take() ([]recorded, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.answers
	r.answers = nil
	return a, r.bytes.Swap(0)
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// requestKind classifies a registry API request by its route (oci.Path.Route): "tag",
// "manifest" (by digest), "blob", or "other".
func requestKind(u *url.URL) string {
	p, _ := oci.ParsePath(u.EscapedPath(), u.RawQuery, oci.DockerHub)
	switch route := p.Route(); route {
	case "tag", "manifest", "blob":
		return route
	}
	return "other"
}
