package oci

import (
	_ "crypto/sha256" // registers sha256 for go-digest
	_ "crypto/sha512" // registers sha512 for go-digest
	"fmt"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// MaxRepositoryLength is the longest repository name (distribution/reference's limit).
const MaxRepositoryLength = reference.RepositoryNameTotalLengthMax

var (
	// pathComponent is one /-separated component of a repository name: distribution/reference's
	// path-component, which does not export it on its own.
	pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)
	// tagPattern is distribution/reference's tag, anchored.
	tagPattern = regexp.MustCompile(`^(?:` + reference.TagRegexp.String() + `)$`)
	// mediaTypePattern is an RFC 6838 media type without parameters, as artifactType is.
	mediaTypePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)
)

// ValidRepositoryComponent reports whether c is one component of a repository name ("alpine").
func ValidRepositoryComponent(c string) bool { return pathComponent.MatchString(c) }

// ValidRepository reports whether repo is a repository name without its registry
// ("library/alpine"): components separated by slashes, MaxRepositoryLength at most.
func ValidRepository(repo string) bool {
	if repo == "" || len(repo) > MaxRepositoryLength {
		return false
	}
	for c := range strings.SplitSeq(repo, "/") {
		if !ValidRepositoryComponent(c) {
			return false
		}
	}
	return true
}

// ValidTag reports whether tag is a tag: a word character, then up to 127 word characters,
// dots and dashes.
func ValidTag(tag string) bool { return tagPattern.MatchString(tag) }

// ValidMediaType reports whether s is a media type without parameters
// ("application/spdx+json"), as a referrers artifactType is.
func ValidMediaType(s string) bool { return mediaTypePattern.MatchString(s) }

// ParseDigest accepts the digests of the OCI image spec: sha256 or sha512, lower-case hex of
// the right length. Errors wrap errdefs.ErrInvalidArgument.
func ParseDigest(s string) (digest.Digest, error) {
	if msg := digestProblem(s); msg != "" {
		return "", fmt.Errorf("%s: %w", msg, errdefs.ErrInvalidArgument)
	}
	return digest.Digest(s), nil
}

// digestProblem says what is wrong with digest s, or "".
func digestProblem(s string) string {
	alg, _, _ := strings.Cut(s, ":")
	if alg != string(digest.SHA256) && alg != string(digest.SHA512) {
		return fmt.Sprintf("unsupported digest algorithm in %q", Clip(s))
	}
	if err := digest.Digest(s).Validate(); err != nil {
		return fmt.Sprintf("invalid digest %q", Clip(s))
	}
	return ""
}

// ParseReference reads the reference of a manifest: a digest when it has a colon (tags have
// none), else a tag; dgst is set for a digest. Errors wrap errdefs.ErrInvalidArgument.
func ParseReference(ref string) (dgst digest.Digest, err error) {
	if strings.Contains(ref, ":") {
		return ParseDigest(ref)
	}
	if !ValidTag(ref) {
		return "", fmt.Errorf("invalid tag %q: %w", Clip(ref), errdefs.ErrInvalidArgument)
	}
	return "", nil
}

// Clip shortens client or registry input quoted back in a message.
func Clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
