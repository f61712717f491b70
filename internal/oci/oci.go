// Package oci is lifeboat's vocabulary of the OCI distribution API, written once: repository
// names, tags and digests; registry hosts (their grammar, the docker.io aliases, the endpoint
// containerd uses when nothing configures one); the /v2/ paths of the pull API and how a
// mirror request names its registry and what route it takes; the error codes of the
// distribution spec, their body and the writer of an error answer; and the header names
// lifeboat sends and reads.
//
// The grammars are distribution/reference's (the one containerd and docker use), held to the
// OCI image spec where it is stricter: digests are sha256 or sha512 only.
package oci

// Header names.
const (
	// HeaderCache says where a mirror answer came from: hit, miss, stale, revalidated or peer.
	HeaderCache = "X-Lifeboat-Cache"
	// HeaderSimulatedOutage marks an answer lifeboat's outage simulator made up; its value is
	// the outage mode ("http-503").
	HeaderSimulatedOutage = "X-Lifeboat-Simulated-Outage"
	// HeaderContentDigest is the digest of a manifest or blob answer.
	HeaderContentDigest = "Docker-Content-Digest"
	// HeaderAPIVersion is sent on every answer of a registry, with the value APIVersion.
	HeaderAPIVersion = "Docker-Distribution-API-Version"
)

// APIVersion is the value of HeaderAPIVersion.
const APIVersion = "registry/2.0"

// MaxManifestSize is the largest manifest (or referrers index, or tags list) lifeboat accepts
// from a registry or a peer, and reads from its cache: 4 MiB, as containerd.
const MaxManifestSize = 4 << 20
