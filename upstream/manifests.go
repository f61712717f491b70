package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// Docker's manifest media types.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// manifestAccept is the Accept of manifest requests, as containerd sends it.
var manifestAccept = []string{
	MediaTypeDockerManifest,
	MediaTypeDockerManifestList,
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
	"*/*",
}

// Ping checks that the endpoint serves the registry API: GET /v2/. 200 or 401 is up (nil); no
// auth is attempted.
func (c *Client) Ping(ctx context.Context) error {
	u := c.url("/v2/", nil)
	what := "upstream " + c.base.Host + ": GET /v2/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrInvalidArgument)
	}
	req.Header.Set("User-Agent", c.ua)
	resp, err := c.http.Do(req)
	if err != nil {
		return transportError(ctx, what, err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
		return nil
	}
	return newStatusError(c.base.Host, "GET /v2/", resp)
}

// HeadManifest returns the descriptor of repo's manifest or index reference (a tag or a digest)
// with a HEAD, and the registry's Date header of the answer (the zero time when it sent none,
// or one that does not parse). When the registry answers HEAD with 405, or without a
// Docker-Content-Digest, a Content-Length or a specific Content-Type, or with a digest other
// than a digest reference, it falls back to GetManifest (which hashes and verifies the body).
// For a digest reference the returned digest is the reference. Errors: see the package
// documentation.
func (c *Client) HeadManifest(ctx context.Context, repo, reference string) (ocispec.Descriptor, time.Time, error) {
	if err := validateRepo(repo); err != nil {
		return ocispec.Descriptor{}, time.Time{}, err
	}
	want, err := oci.ParseReference(reference)
	if err != nil {
		return ocispec.Descriptor{}, time.Time{}, err
	}
	path := "/v2/" + repo + "/manifests/" + reference
	what := "upstream " + c.base.Host + ": HEAD " + path
	resp, err := c.send(ctx, http.MethodHead, c.url(path, nil), repo, manifestAccept...)
	if hasStatus(err, http.StatusMethodNotAllowed) {
		return c.headByGet(ctx, repo, reference, "HEAD not allowed")
	}
	if err != nil {
		return ocispec.Descriptor{}, time.Time{}, err
	}
	drainClose(resp.Body)

	if resp.ContentLength > oci.MaxManifestSize {
		return ocispec.Descriptor{}, time.Time{}, fmt.Errorf("%s: manifest of %d bytes is too large (limit %d): %w", what, resp.ContentLength, oci.MaxManifestSize, errdefs.ErrFailedPrecondition)
	}
	dgst, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	switch {
	case err != nil:
		return c.headByGet(ctx, repo, reference, "no valid Docker-Content-Digest")
	case resp.ContentLength <= 0: // a manifest is never empty: 0 is a registry that omits it
		return c.headByGet(ctx, repo, reference, "no Content-Length")
	case want != "" && dgst != want:
		return c.headByGet(ctx, repo, reference, "Docker-Content-Digest differs from the reference")
	}
	mt := mediaType(resp.Header.Get("Content-Type"))
	if mt == "" {
		return c.headByGet(ctx, repo, reference, "no specific Content-Type")
	}
	return ocispec.Descriptor{MediaType: mt, Digest: dgst, Size: resp.ContentLength}, responseDate(resp), nil
}

// responseDate is the Date header of resp, or the zero time.
func responseDate(resp *http.Response) time.Time {
	t, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return time.Time{}
	}
	return t
}

func (c *Client) headByGet(ctx context.Context, repo, reference, why string) (ocispec.Descriptor, time.Time, error) {
	log.G(ctx).WithFields(log.Fields{"endpoint": c.base.Host, "repository": repo, "reference": reference, "reason": why}).Debug("manifest HEAD inconclusive, using GET")
	desc, _, date, err := c.getManifest(ctx, repo, reference)
	return desc, date, err
}

// GetManifest fetches repo's manifest or index reference (a tag or a digest). The body is at
// most oci.MaxManifestSize (larger: errdefs.ErrFailedPrecondition). The digest is the body's
// sha256, or for a digest reference the reference, verified against the body (a mismatch is
// errdefs.ErrFailedPrecondition). The media type is the Content-Type, or the body's mediaType
// field when the header is missing or generic. Errors: see the package documentation.
func (c *Client) GetManifest(ctx context.Context, repo, reference string) (ocispec.Descriptor, []byte, error) {
	desc, body, _, err := c.getManifest(ctx, repo, reference)
	return desc, body, err
}

// getManifest is GetManifest, with the registry's Date header of the answer (see HeadManifest).
func (c *Client) getManifest(ctx context.Context, repo, reference string) (_ ocispec.Descriptor, _ []byte, date time.Time, _ error) {
	if err := validateRepo(repo); err != nil {
		return ocispec.Descriptor{}, nil, date, err
	}
	want, err := oci.ParseReference(reference)
	if err != nil {
		return ocispec.Descriptor{}, nil, date, err
	}
	path := "/v2/" + repo + "/manifests/" + reference
	what := "upstream " + c.base.Host + ": GET " + path
	resp, err := c.send(ctx, http.MethodGet, c.url(path, nil), repo, manifestAccept...)
	if err != nil {
		return ocispec.Descriptor{}, nil, date, err
	}
	date = responseDate(resp)
	body, err := readAll(ctx, what, resp, oci.MaxManifestSize)
	if err != nil {
		return ocispec.Descriptor{}, nil, date, err
	}

	dgst := digest.SHA256.FromBytes(body)
	if want != "" {
		if got := want.Algorithm().FromBytes(body); got != want {
			return ocispec.Descriptor{}, nil, date, fmt.Errorf("%s: body has digest %s: %w", what, got, errdefs.ErrFailedPrecondition)
		}
		dgst = want
	}
	if h := resp.Header.Get("Docker-Content-Digest"); want == "" && h != "" && h != dgst.String() {
		// The body is what we serve and cache; a header that disagrees is only worth a note.
		log.G(ctx).WithFields(log.Fields{"endpoint": c.base.Host, "repository": repo, "reference": reference, "header": h, "digest": dgst}).Warn("upstream Docker-Content-Digest does not match the manifest body")
	}
	mt := mediaType(resp.Header.Get("Content-Type"))
	if mt == "" {
		if mt = bodyMediaType(body); mt == "" {
			return ocispec.Descriptor{}, nil, date, fmt.Errorf("%s: cannot tell the manifest's media type (no Content-Type, no mediaType field): %w", what, errdefs.ErrFailedPrecondition)
		}
	}
	return ocispec.Descriptor{MediaType: mt, Digest: dgst, Size: int64(len(body))}, body, date, nil
}

// mediaType returns a Content-Type's media type without parameters, or "" when it is missing
// or generic (says nothing about the manifest).
func mediaType(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	switch mt {
	case "application/octet-stream", "binary/octet-stream", "text/plain", "application/json", "text/html":
		return ""
	}
	return mt
}

// bodyMediaType reads a manifest's own mediaType field, else guesses from its shape: an OCI
// index has manifests, an OCI image manifest has config and layers.
func bodyMediaType(body []byte) string {
	var m struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
		Config    json.RawMessage   `json:"config"`
		Layers    []json.RawMessage `json:"layers"`
	}
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	if mt := mediaType(m.MediaType); mt != "" {
		return mt
	}
	switch {
	case m.Manifests != nil:
		return ocispec.MediaTypeImageIndex
	case m.Config != nil && m.Layers != nil:
		return ocispec.MediaTypeImageManifest
	}
	return ""
}
