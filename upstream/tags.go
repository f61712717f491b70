package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// Bounds of a tag listing.
const (
	MaxTagPages = 100
	MaxTags     = 100_000
	maxTagsPage = 8 << 20
)

// Tags lists repo's tags: GET /v2/<repo>/tags/list, following Link rel="next" pages to the end
// (at most MaxTagPages pages and MaxTags tags; more is errdefs.ErrFailedPrecondition rather than
// a silently short list). A next link to another host is refused. Tags are in the registry's
// order. Errors: see the package documentation.
func (c *Client) Tags(ctx context.Context, repo string) ([]string, error) {
	if err := validateRepo(repo); err != nil {
		return nil, err
	}
	u := c.url("/v2/"+repo+"/tags/list", nil)
	tags := []string{}
	for page := 0; u != nil; page++ {
		what := "upstream " + c.base.Host + ": GET " + u.Path
		if page == MaxTagPages {
			return nil, fmt.Errorf("%s: more than %d pages of tags: %w", what, MaxTagPages, errdefs.ErrFailedPrecondition)
		}
		resp, err := c.send(ctx, http.MethodGet, u, repo, "application/json")
		if err != nil {
			return nil, err
		}
		body, err := readAll(ctx, what, resp, maxTagsPage)
		if err != nil {
			return nil, err
		}
		var list struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			return nil, fmt.Errorf("%s: tag list is not valid JSON: %w", what, errdefs.ErrFailedPrecondition)
		}
		if len(tags)+len(list.Tags) > MaxTags {
			return nil, fmt.Errorf("%s: more than %d tags: %w", what, MaxTags, errdefs.ErrFailedPrecondition)
		}
		tags = append(tags, list.Tags...)
		if u, err = c.nextLink(resp); err != nil {
			return nil, fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrFailedPrecondition)
		}
	}
	return tags, nil
}

// nextLink returns the URL of resp's Link rel="next", resolved against the request, or nil.
func (c *Client) nextLink(resp *http.Response) (*url.URL, error) {
	for _, v := range resp.Header.Values("Link") {
		for _, l := range splitLinks(v) {
			if !l.next {
				continue
			}
			u, err := resp.Request.URL.Parse(l.target)
			if err != nil {
				return nil, fmt.Errorf("next link %q is not a URL", printable(l.target, 200))
			}
			if u.Scheme != c.base.Scheme || u.Host != c.base.Host {
				return nil, fmt.Errorf("next link points to another host (%s)", printable(u.Host, 100))
			}
			u.Fragment = ""
			return u, nil
		}
	}
	return nil, nil
}

type link struct {
	target string
	next   bool
}

// splitLinks parses an RFC 8288 Link value: `<target>; rel="next", <target2>; rel=prev`.
func splitLinks(v string) []link {
	var links []link
	for {
		start := strings.IndexByte(v, '<')
		if start < 0 {
			return links
		}
		end := strings.IndexByte(v[start:], '>')
		if end < 0 {
			return links
		}
		l := link{target: v[start+1 : start+end]}
		v = v[start+end+1:]
		params := v
		if i := strings.IndexByte(v, '<'); i >= 0 {
			params = v[:i]
		}
		for p := range strings.SplitSeq(params, ";") {
			k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(k), "rel") {
				continue
			}
			val = strings.Trim(strings.TrimSpace(strings.TrimRight(strings.TrimSpace(val), ",")), `"`)
			for r := range strings.FieldsSeq(val) {
				if strings.EqualFold(r, "next") {
					l.next = true
				}
			}
		}
		links = append(links, l)
	}
}

// Referrers returns the referrers index of repo's dgst, as the registry sends it, and its media
// type: GET /v2/<repo>/referrers/<dgst>[?artifactType=]. A registry may ignore artifactType (it
// then omits the OCI-Filters-Applied header), so the caller filters the index itself; filtering
// an already filtered index changes nothing. Only the first page is returned. A registry
// without the referrers API answers 404: errdefs.ErrNotFound. Errors: see the package
// documentation.
func (c *Client) Referrers(ctx context.Context, repo string, dgst digest.Digest, artifactType string) ([]byte, string, error) {
	if err := validateRepo(repo); err != nil {
		return nil, "", err
	}
	if _, err := oci.ParseDigest(dgst.String()); err != nil {
		return nil, "", err
	}
	var query url.Values
	if artifactType != "" {
		if !oci.ValidMediaType(artifactType) {
			return nil, "", fmt.Errorf("artifact type %q: %w", printable(artifactType, 300), errdefs.ErrInvalidArgument)
		}
		query = url.Values{"artifactType": {artifactType}}
	}
	path := "/v2/" + repo + "/referrers/" + dgst.String()
	what := "upstream " + c.base.Host + ": GET " + path
	resp, err := c.send(ctx, http.MethodGet, c.url(path, query), repo, ocispec.MediaTypeImageIndex)
	if err != nil {
		return nil, "", err
	}
	body, err := readAll(ctx, what, resp, oci.MaxManifestSize)
	if err != nil {
		return nil, "", err
	}
	mt := mediaType(resp.Header.Get("Content-Type"))
	if mt == "" {
		mt = ocispec.MediaTypeImageIndex
	}
	return body, mt, nil
}
