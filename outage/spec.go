// Package outage simulates upstream registry outages inside lifeboat's upstream HTTP transport.
//
// A Simulator holds at most one outage at a time. The resolver wraps the transport of every
// upstream client with Simulator.Wrap, so a simulated failure takes the same path as a real one:
// through the upstream client's error classification to the resolver's health tracking, circuit
// breaker and stale serving. Token requests to a registry's auth service and redirects to blob
// storage go through the same transport, and so are affected too. The mirror's own clients are
// never wrapped.
//
// Modes (Spec.Mode):
//
//   - dns: no network activity; the request fails with a *net.DNSError ("no such host").
//   - refused: no network activity; a *net.OpError dial error wrapping syscall.ECONNREFUSED.
//   - blackhole: no network activity and no answer until the request's context ends; the error
//     then wraps the context's error (context.DeadlineExceeded for a deadline).
//   - reset: the real request is made, and its response body is cut halfway (after 32 KiB when
//     its length is unknown, at once when it is shorter than that) with an error wrapping
//     syscall.ECONNRESET; a response without a body (HEAD) fails with that error instead.
//   - http-<status> (400 to 599): no network activity; a synthesized answer with that status and
//     an OCI error body, with "Retry-After: 60" for 429 and 503.
//   - slow: latency added before each request and/or the body read rate capped.
//   - flaky: a seeded random fraction of requests fail with another mode.
//
// Every error and every synthesized answer says "lifeboat simulated outage: <mode>", so that an
// operator reading lifeboat's log, or the OCI error containerd shows, knows it is not real.
// Simulated errors are *Error values; synthesized answers carry the HeaderSimulated header.
//
// When an outage ends (stop, expiry, or replacement by another), requests it holds back (a
// blackhole wait, slow's added latency or rate cap) are released and go on under whatever outage
// is in force then, if any.
package outage

import (
	"errors"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// The modes.
const (
	ModeDNS       = "dns"
	ModeRefused   = "refused"
	ModeBlackhole = "blackhole"
	ModeReset     = "reset"
	ModeSlow      = "slow"
	ModeFlaky     = "flaky"
	// ModeHTTPPrefix starts the http-<status> modes: "http-503".
	ModeHTTPPrefix = "http-"
)

// Targets: the traffic an outage cuts (Spec.Target).
const (
	// TargetUpstream is the traffic to the registries (the transports of Wrap); the default.
	TargetUpstream = "upstream"
	// TargetPeers is the traffic to the other nodes of the cluster (the transport of
	// WrapPeers): index requests and transfers.
	TargetPeers = "peers"
	// TargetAll is both.
	TargetAll = "all"
)

// Defaults applied by Start (and shown in Status.Spec).
const (
	// DefaultLatency is slow's added latency when neither Latency nor Rate is set.
	DefaultLatency = 2 * time.Second
	// DefaultFailRatio is flaky's fraction of failing requests when FailRatio is 0.
	DefaultFailRatio = 0.3
	// DefaultSeed is flaky's seed when Seed is 0.
	DefaultSeed = 1
)

// randomFailModes are the modes a failing flaky request gets when Spec.FailMode is empty, one
// picked per request by the seeded generator.
var randomFailModes = []string{ModeDNS, ModeRefused, ModeReset, "http-503"}

// Spec describes an outage.
type Spec struct {
	// Mode is dns, refused, blackhole, reset, http-<status> (http-500, http-503, http-429, any
	// status from 400 to 599), slow or flaky.
	Mode string `json:"mode"`
	// Registries limits the outage to these registries ("docker.io", "ghcr.io"), as named to
	// Wrap. Empty: every registry.
	Registries []string `json:"registries,omitempty"`
	// Repos limits the outage to repositories matching one of these path.Match globs
	// ("library/*"). Empty: every repository. With Repos set, requests that name no repository
	// (the /v2/ ping, token requests) are not affected, so a scoped outage does not break the
	// auth of other repositories.
	Repos []string `json:"repos,omitempty"`
	// For is how long the outage lasts. 0: until stopped.
	For time.Duration `json:"for,omitempty"`
	// Latency is added before each round trip (slow). Default DefaultLatency if neither Latency
	// nor Rate is set.
	Latency time.Duration `json:"latency,omitempty"`
	// Rate caps the body read rate in bytes per second (slow). 0: no cap.
	Rate int64 `json:"rate,omitempty"`
	// FailRatio is the fraction of requests that fail (flaky), from 0 to 1. 0: DefaultFailRatio.
	FailRatio float64 `json:"failRatio,omitempty"`
	// FailMode is the mode a failing request gets (flaky): any mode but flaky. Empty: one of
	// dns, refused, reset and http-503, picked per request by the seeded generator.
	FailMode string `json:"failMode,omitempty"`
	// Seed seeds the generator that picks the failing requests (flaky). 0: DefaultSeed.
	Seed int64 `json:"seed,omitempty"`
	// Target is the traffic the outage cuts: TargetUpstream (empty means it), TargetPeers or
	// TargetAll.
	Target string `json:"target,omitempty"`
}

// Validate checks s. Errors: errdefs.ErrInvalidArgument, with one sentence naming the bad field.
// Fields that do not apply to the mode (a latency for dns) are refused rather than ignored.
func (s Spec) Validate() error {
	if s.Mode == "" {
		return invalid("the outage mode is missing: use one of %s", modeList)
	}
	if s.Mode == ModeFlaky {
		if s.FailMode != "" {
			if s.FailMode == ModeFlaky {
				return invalid("fail mode %q: a failing request of a flaky outage needs another mode, one of %s", s.FailMode, strings.Join(modeNames[:len(modeNames)-1], ", "))
			}
			if _, err := parseMode(s.FailMode, "fail mode"); err != nil {
				return err
			}
		}
	} else if _, err := parseMode(s.Mode, "mode"); err != nil {
		return err
	}
	for _, r := range s.Registries {
		if err := validateRegistry(r); err != nil {
			return err
		}
	}
	for _, g := range s.Repos {
		if g == "" {
			return invalid("a repository glob is empty: use a pattern such as \"library/*\"")
		}
		if _, err := path.Match(g, ""); err != nil {
			return invalid("repository glob %q is not a valid pattern (%v)", g, err)
		}
	}
	if s.For < 0 {
		return invalid("the outage duration (for) %s is negative", s.For)
	}
	if err := ValidateTarget(s.Target); err != nil {
		return err
	}

	slow := s.Mode == ModeSlow || (s.Mode == ModeFlaky && s.FailMode == ModeSlow)
	switch {
	case s.Latency < 0:
		return invalid("latency %s is negative", s.Latency)
	case s.Rate < 0:
		return invalid("rate %d bytes/s is negative", s.Rate)
	case !slow && s.Latency != 0:
		return invalid("latency applies only to the slow mode (or a flaky outage failing as slow), not to %s", s.Mode)
	case !slow && s.Rate != 0:
		return invalid("rate applies only to the slow mode (or a flaky outage failing as slow), not to %s", s.Mode)
	}

	flaky := s.Mode == ModeFlaky
	switch {
	case math.IsNaN(s.FailRatio) || s.FailRatio < 0 || s.FailRatio > 1:
		return invalid("fail ratio %v is not between 0 and 1", s.FailRatio)
	case !flaky && s.FailRatio != 0:
		return invalid("fail ratio applies only to the flaky mode, not to %s", s.Mode)
	case !flaky && s.FailMode != "":
		return invalid("fail mode applies only to the flaky mode, not to %s", s.Mode)
	case !flaky && s.Seed != 0:
		return invalid("seed applies only to the flaky mode, not to %s", s.Mode)
	}
	return nil
}

// ValidateTarget checks an outage target: empty, TargetUpstream, TargetPeers or TargetAll.
// Errors: errdefs.ErrInvalidArgument.
func ValidateTarget(target string) error {
	switch target {
	case "", TargetUpstream, TargetPeers, TargetAll:
		return nil
	}
	return invalid("target %q is not %q, %q or %q", target, TargetUpstream, TargetPeers, TargetAll)
}

// cuts reports whether an outage with target cuts the upstream traffic, and the peer traffic.
func cuts(target string) (upstream, peers bool) {
	switch target {
	case TargetPeers:
		return false, true
	case TargetAll:
		return true, true
	}
	return true, false
}

// withDefaults returns s with the defaults filled in. s is valid.
func (s Spec) withDefaults() Spec {
	if s.Target == "" {
		s.Target = TargetUpstream
	}
	s.Registries = normalizeRegistries(s.Registries)
	s.Repos = append([]string(nil), s.Repos...)
	slow := s.Mode == ModeSlow || (s.Mode == ModeFlaky && s.FailMode == ModeSlow)
	if slow && s.Latency == 0 && s.Rate == 0 {
		s.Latency = DefaultLatency
	}
	if s.Mode == ModeFlaky {
		if s.FailRatio == 0 {
			s.FailRatio = DefaultFailRatio
		}
		if s.Seed == 0 {
			s.Seed = DefaultSeed
		}
	}
	return s
}

// modeNames are the modes as messages list them, flaky last.
var modeNames = []string{ModeDNS, ModeRefused, ModeBlackhole, ModeReset, ModeHTTPPrefix + "<status> (400 to 599, e.g. http-503)", ModeSlow, ModeFlaky}

// ListModes lists the modes for a message, with last before the last one: ListModes(" and ")
// is "dns, refused, blackhole, reset, http-<status> (400 to 599, e.g. http-503), slow and flaky".
func ListModes(last string) string {
	n := len(modeNames)
	return strings.Join(modeNames[:n-1], ", ") + last + modeNames[n-1]
}

var modeList = ListModes(", or ")

// fault is what a mode does to a request.
type fault struct {
	kind   string // a Mode* constant; ModeHTTPPrefix for http-<status>
	status int    // http-<status>
	name   string // the mode: "dns", "http-503"
	label  string // the mode as messages name it: "dns", "flaky/http-503"
}

// parseMode parses a mode other than flaky; field names it in errors ("mode", "fail mode").
func parseMode(mode, field string) (fault, error) {
	switch mode {
	case ModeDNS, ModeRefused, ModeBlackhole, ModeReset, ModeSlow:
		return fault{kind: mode, name: mode, label: mode}, nil
	}
	digits, ok := strings.CutPrefix(mode, ModeHTTPPrefix)
	if !ok {
		return fault{}, invalid("%s %q is not one of %s", field, mode, modeList)
	}
	status, err := strconv.Atoi(digits)
	if err != nil || len(digits) != 3 || digits[0] == '+' || digits[0] == '-' {
		return fault{}, invalid("%s %q: http- must be followed by a three-digit status from 400 to 599, e.g. http-503", field, mode)
	}
	if status < 400 || status > 599 {
		return fault{}, invalid("%s %q: the status must be an error, from 400 to 599", field, mode)
	}
	return fault{kind: ModeHTTPPrefix, status: status, name: mode, label: mode}, nil
}

func validateRegistry(r string) error {
	if r == "" {
		return invalid("a registry name is empty: use a registry host such as docker.io")
	}
	if !oci.ValidHost(r) {
		return invalid("registry %q is not a registry host[:port] such as docker.io or ghcr.io", r)
	}
	return nil
}

func normalizeRegistries(rs []string) []string {
	if len(rs) == 0 {
		return nil
	}
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = strings.ToLower(r)
	}
	return out
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// rateUnits are the units ParseRate accepts, lower-cased: decimal (k, kb) and binary (ki, kib).
var rateUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1e6, "mb": 1e6, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1e9, "gb": 1e9, "gi": 1 << 30, "gib": 1 << 30,
}

// ParseRate parses a rate in bytes per second: "500000", "100KiB/s", "1MB/s", "1.5 MiB/s".
// Units: B, kB/KB (1000), KiB (1024), MB, MiB, GB, GiB, case-insensitive, with an optional
// "/s". Errors: errdefs.ErrInvalidArgument for anything else, or a rate under 1 byte/s.
func ParseRate(s string) (int64, error) {
	v := strings.TrimSpace(s)
	v = strings.TrimSuffix(v, "/s")
	v = strings.TrimSpace(v)
	i := strings.IndexFunc(v, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(v)
	}
	num, unit := v[:i], strings.ToLower(strings.TrimSpace(v[i:]))
	mult, ok := rateUnits[unit]
	n, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || num == "" {
		return 0, invalid("rate %q is not a number of bytes per second such as 500000, 100KiB/s or 1MB/s", s)
	}
	bytes := n * mult
	if bytes >= math.MaxInt64 {
		return 0, invalid("rate %q is too large", s)
	}
	if bytes < 1 {
		return 0, invalid("rate %q is less than 1 byte per second", s)
	}
	return int64(bytes), nil
}

// HeaderSimulated is set on every answer the simulator synthesizes; its value is the mode.
const HeaderSimulated = oci.HeaderSimulatedOutage

// Error is a failure the simulator made up. It unwraps to the error a real failure of its kind
// gives (a *net.DNSError, a *net.OpError wrapping syscall.ECONNREFUSED or ECONNRESET, a context
// error), so errors.Is and errors.As treat it as one; its message is that error's followed by
// "(lifeboat simulated outage: <mode>)".
type Error struct {
	// Mode is the mode that failed the request: "dns", or "flaky/dns" for a flaky outage.
	Mode string
	Err  error
}

func (e *Error) Error() string {
	return e.Err.Error() + " (lifeboat simulated outage: " + e.Mode + ")"
}

func (e *Error) Unwrap() error { return e.Err }

// IsSimulated reports whether err is, or wraps, a failure the simulator made up.
func IsSimulated(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
