// Package ocitest holds test inputs for the distribution API vocabulary of package oci, shared
// by the fuzz targets of oci and of the servers that parse with it.
package ocitest

import "strings"

// Targets are request targets (path and query) that reach every rule of oci.ParsePath: both
// ways of naming a registry, each endpoint, paging, escapes and dot segments, and malformed
// input.
var Targets = []string{
	"/v2/",
	"/v2/library/alpine/manifests/3.20",
	"/v2/alpine/manifests/latest?ns=docker.io",
	"/v2/org/app/manifests/v1?ns=ghcr.io",
	"/v2/ghcr.io/org/app/manifests/v1",
	"/v2/ghcr.io/org/app/manifests/v1?ns=ghcr.io",
	"/v2/localhost:5000/team/app/blobs/sha256:" + strings.Repeat("a", 64),
	"/v2/[::1]:5000/app/manifests/v1",
	"/v2/library/alpine/manifests/sha512:" + strings.Repeat("0", 128),
	"/v2/library/alpine/blobs/sha256:" + strings.Repeat("A", 64),
	"/v2/library/alpine/tags/list?n=2&last=b",
	"/v2/library/alpine/tags/list?n=-1",
	"/v2/library/alpine/referrers/sha256:" + strings.Repeat("b", 64) + "?artifactType=application/spdx%2Bjson",
	"/v2/../etc/manifests/latest",
	"/v2/%2e%2e/etc/manifests/latest",
	"/v2/library%2Falpine/manifests/latest",
	"/v2/library//alpine/manifests/latest",
	"/v2/a.b/a.b/c/manifests/x?ns=a.b",
	"/v2/index.docker.io/alpine/manifests/x",
	"/v2/x/manifests/y?ns=%zz",
}
