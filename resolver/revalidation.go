package resolver

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/lifeboat-dev/lifeboat/endpoints"
)

// What a tag revalidation does when the registry denies access to the repository
// (Options.OnDenied).
const (
	// OnDeniedRefuse answers as if the tag were not cached: access to the repository was
	// revoked, or it was deleted or made private, and the cache must not keep serving it.
	OnDeniedRefuse = "refuse"
	// OnDeniedServeStale serves the cached tag stale, as in an outage.
	OnDeniedServeStale = "serve-stale"
)

// Causes of a failed revalidation (FailedRevalidation.Cause).
const (
	// CauseUnreachable: the registry or its token service did not answer usably: down, too
	// slow, 5xx or 429, or every endpoint is marked down. An outage: the cached tag is served.
	CauseUnreachable = "unreachable"
	// CauseDenied: the registry or its token service answered that access is denied (401 or
	// 403, after authenticating). What happens follows Options.OnDenied.
	CauseDenied = "denied"
	// CauseNotFound: the registry answered that the tag or the repository does not exist. The
	// cached tag is not served.
	CauseNotFound = "not-found"
	// CauseOther: any other error answer. The cached tag is served, as in an outage.
	CauseOther = "error"
)

// FailedRevalidation is the last failed revalidation of a cached tag, as `lifeboat status`
// shows it. A later successful revalidation of the tag removes it.
type FailedRevalidation struct {
	// Ref is the tag, "docker.io/library/alpine:3.20".
	Ref string `json:"ref"`
	// At is when it happened (the last time, when it happened again since).
	At time.Time `json:"at"`
	// Cause is CauseUnreachable, CauseDenied, CauseNotFound or CauseOther.
	Cause string `json:"cause"`
	// ServedStale says whether the cached tag was served (stale) or refused.
	ServedStale bool `json:"servedStale"`
	// Error is the upstream's error.
	Error string `json:"error"`
}

// maxFailedRevalidations bounds what is kept: tag names come from clients.
const maxFailedRevalidations = 256

// FailedRevalidations lists the cached tags whose last revalidation failed, most recent first,
// and what was done about it: served stale (an outage) or refused (the registry denies the
// repository, or says it is gone). At most the last 256 tags are kept.
func (r *Resolver) FailedRevalidations() []FailedRevalidation {
	return r.revalidations.list()
}

// revalidations keeps the last failed revalidation of each tag.
type revalidations struct {
	mu     sync.Mutex
	byName map[string]FailedRevalidation
}

// causeOf classifies an error of a tag revalidation.
func causeOf(err error) string {
	switch {
	case endpoints.IsFailure(err):
		return CauseUnreachable
	case isDenied(err):
		return CauseDenied
	case errdefs.IsNotFound(err):
		return CauseNotFound
	}
	return CauseOther
}

// isDenied reports whether err is the registry, or its token service, answering that access is
// denied: 401 (after the credentials, if any, were tried) or 403. A token service that cannot
// be reached is an endpoint failure instead (see upstream's authError).
func isDenied(err error) bool {
	return !endpoints.IsFailure(err) && (errdefs.IsPermissionDenied(err) || errdefs.IsUnauthorized(err))
}

// failed records a failed revalidation of the tag name, and logs it: at Warn when the registry
// denied it or said it is gone, at Info when the upstream became unreachable for it (at Debug
// while it stays so, as every request of an outage would otherwise log again).
func (v *revalidations) failed(ctx context.Context, name, cause string, servedStale bool, err error) {
	v.mu.Lock()
	prev, seen := v.byName[name]
	if v.byName == nil {
		v.byName = map[string]FailedRevalidation{}
	}
	if !seen && len(v.byName) >= maxFailedRevalidations {
		oldest := ""
		for n, f := range v.byName {
			if oldest == "" || f.At.Before(v.byName[oldest].At) {
				oldest = n
			}
		}
		delete(v.byName, oldest)
	}
	v.byName[name] = FailedRevalidation{Ref: name, At: time.Now(), Cause: cause, ServedStale: servedStale, Error: err.Error()}
	v.mu.Unlock()

	entry := log.G(ctx).WithError(err).WithField("ref", name).WithField("cause", cause)
	msg := "tag not revalidated: the cached copy is refused"
	if servedStale {
		msg = "tag not revalidated: serving the cached copy stale"
	}
	switch {
	case cause == CauseDenied || cause == CauseNotFound:
		entry.Warn(msg)
	case !seen || prev.Cause != cause:
		entry.Info(msg)
	default:
		entry.Debug(msg)
	}
}

// succeeded forgets the failures of the tag name: it was revalidated.
func (v *revalidations) succeeded(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.byName, name)
}

func (v *revalidations) list() []FailedRevalidation {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]FailedRevalidation, 0, len(v.byName))
	for _, f := range v.byName {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b FailedRevalidation) int {
		if c := b.At.Compare(a.At); c != 0 {
			return c
		}
		return strings.Compare(a.Ref, b.Ref)
	})
	return out
}
