package registrytest

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// errDown is what a DownClient answers everything with: an unavailable endpoint.
var errDown = fmt.Errorf("connection refused: %w", errdefs.ErrUnavailable)

// DownClient is an upstream endpoint (an endpoints.Client) that is always down: every request
// and every probe fails as unavailable (errdefs.ErrUnavailable). It counts its probes and the
// closing of its idle connections.
type DownClient struct {
	endpoint string
	// Pings counts the probes; IdleCloses the calls to CloseIdleConnections.
	Pings, IdleCloses atomic.Int64
}

// NewDownClient is a DownClient for endpoint ("https://registry.test").
func NewDownClient(endpoint string) *DownClient { return &DownClient{endpoint: endpoint} }

func (c *DownClient) Endpoint() string { return c.endpoint }

func (c *DownClient) Ping(context.Context) error {
	c.Pings.Add(1)
	return errDown
}

func (c *DownClient) HeadManifest(context.Context, string, string) (ocispec.Descriptor, time.Time, error) {
	return ocispec.Descriptor{}, time.Time{}, errDown
}

func (c *DownClient) GetManifest(context.Context, string, string) (ocispec.Descriptor, []byte, error) {
	return ocispec.Descriptor{}, nil, errDown
}

func (c *DownClient) GetBlob(context.Context, string, digest.Digest) (io.ReadCloser, int64, error) {
	return nil, 0, errDown
}

func (c *DownClient) HeadBlob(context.Context, string, digest.Digest) (int64, error) {
	return 0, errDown
}

func (c *DownClient) Tags(context.Context, string) ([]string, error) { return nil, errDown }

func (c *DownClient) Referrers(context.Context, string, digest.Digest, string) ([]byte, string, error) {
	return nil, "", errDown
}

func (c *DownClient) CloseIdleConnections() { c.IdleCloses.Add(1) }
