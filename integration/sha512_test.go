package integration

import (
	"crypto/sha512"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

// TestPullBySHA512Digest: containerd pulls, through lifeboat, an image whose manifest the
// registry addresses by its sha512 digest; then again from lifeboat's cache alone, with the
// registry gone. The registry (distribution) stores manifests by sha256 only, so a proxy in
// front of it serves the manifest under its sha512 digest as well, as a registry that
// addresses by sha512 would.
func TestPullBySHA512Digest(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()

	reg := harness.StartRegistry(t)
	img := reg.PushBusybox(t, "library/busybox", "1.36")
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha512.Sum512(raw)
	sha512Digest := digest.NewDigestFromBytes(digest.SHA512, sum[:]).String()
	sha256Digest := harness.Digest(t, img)

	target, _ := url.Parse(reg.URL())
	fwd := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.URL.Path = strings.Replace(r.Out.URL.Path, "/manifests/"+sha512Digest, "/manifests/"+sha256Digest, 1)
		r.Out.URL.RawPath = ""
	}}
	fwd.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path == "/v2/library/busybox/manifests/"+sha256Digest && resp.StatusCode == http.StatusOK {
			resp.Header.Set("Docker-Content-Digest", sha512Digest)
		}
		return nil
	}
	upstream := httptest.NewServer(fwd)
	t.Cleanup(upstream.Close)

	lb := harness.StartLifeboat(t, harness.LifeboatOptions{
		Upstreams: map[string][]string{"docker.io": {upstream.URL}},
	})
	ctd := harness.StartContainerd(t)
	hosts := lb.MirrorHostsDir(t, "docker.io")
	ref := "docker.io/library/busybox@" + sha512Digest

	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)
	if got := ctd.ImageDigest(t, ref); got != sha512Digest {
		t.Fatalf("pulled %s as %s, want %s", ref, got, sha512Digest)
	}

	// From the cache: the registry is gone, containerd forgot the image.
	upstream.Close()
	ctd.MustCtr(t, "images", "rm", ref)
	ctd.MustCtr(t, "content", "rm", sha512Digest)
	ctd.MustCtr(t, "images", "pull", "--hosts-dir", hosts, ref)
	if got := ctd.ImageDigest(t, ref); got != sha512Digest {
		t.Fatalf("pulled %s from the cache as %s, want %s", ref, got, sha512Digest)
	}
	if got := cacheHeader(t, lb, "/v2/library/busybox/manifests/"+sha512Digest+"?ns=docker.io"); got != "hit" {
		t.Errorf("X-Lifeboat-Cache of the manifest by its sha512 digest = %q, want hit", got)
	}
}
