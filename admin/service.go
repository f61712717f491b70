// Package admin is the daemon's control surface: the service behind the admin socket (status,
// outage simulation, drills, the cached images: list, pull, pin, remove, gc, verify) and the
// client the lifeboat CLI uses to reach it. The CLI also runs the Service over a cache it opens
// itself when the daemon is not running.
package admin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/hosts"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/plan"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// Status is what `lifeboat status` shows.
type Status struct {
	Version   string             `json:"version"`
	StartedAt time.Time          `json:"startedAt"`
	Uptime    string             `json:"uptime"`
	Root      string             `json:"root"`
	Cache     CacheStatus        `json:"cache"`
	Requests  RequestStatus      `json:"requests"`
	Endpoints []endpoints.Status `json:"endpoints"`
	// FailedRevalidations are the tags whose last revalidation failed, newest first, with why
	// (the registry unreachable, or access denied, or the tag gone) and whether the cached tag
	// was served stale or refused.
	FailedRevalidations []resolver.FailedRevalidation `json:"failedRevalidations"`
	Outage              outage.Status                 `json:"outage"`
	Listeners           map[string]string             `json:"listeners"`
	// Cluster is the cluster tier; absent when it is off.
	Cluster *ClusterStatus `json:"cluster,omitempty"`
}

// CacheStatus is the cache's size against its budget.
type CacheStatus struct {
	UsedBytes   int64 `json:"usedBytes"`
	BudgetBytes int64 `json:"budgetBytes"`
	Evictions   int64 `json:"evictions"`
}

// RequestStatus is what the registry mirror answered since the daemon started.
type RequestStatus struct {
	// Answers counts them by result: hit, miss, stale, revalidated, peer, error, and none
	// (answers without a cache status, such as pings).
	Answers map[string]int64 `json:"answers"`
	// HitRatio is the share of the answers with content that came from the cache (hit, stale,
	// revalidated) or a peer of the cluster (peer) rather than from the upstream (miss); 0
	// before the first.
	HitRatio float64 `json:"hitRatio"`
}

func newRequestStatus(answers map[string]int64) RequestStatus {
	rs := RequestStatus{Answers: answers}
	if rs.Answers == nil {
		rs.Answers = map[string]int64{}
	}
	// Served without fetching the content from the registry: from this node's cache, or from
	// a peer of the cluster.
	cached := rs.Answers["hit"] + rs.Answers["stale"] + rs.Answers["revalidated"] + rs.Answers["peer"]
	if total := cached + rs.Answers["miss"]; total > 0 {
		rs.HitRatio = float64(cached) / float64(total)
	}
	return rs
}

// OutageRequest starts a simulated outage.
type OutageRequest struct {
	Spec outage.Spec `json:"spec"`
	// HostsDir, when set, is containerd's hosts directory: the hosts.toml files lifeboat manages
	// there are switched to lifeboat-only for the outage and restored when it ends.
	HostsDir string `json:"hostsDir,omitempty"`
}

// OutageResult says what starting or stopping an outage did.
type OutageResult struct {
	// Previous is the outage that was replaced or stopped (Active false if none).
	Previous outage.Status `json:"previous"`
	// Current is the outage in force now.
	Current outage.Status `json:"current"`
	// HostsSwitched and HostsRestored list the registries whose hosts.toml changed.
	HostsSwitched []string `json:"hostsSwitched,omitempty"`
	HostsRestored []string `json:"hostsRestored,omitempty"`
}

// Service implements the admin API over the daemon's parts.
type Service struct {
	Version   string
	StartedAt time.Time
	Store     *cache.Store
	Resolver  *resolver.Resolver
	Outage    *outage.Simulator
	// MirrorURL is how containerd reaches the mirror ("http://127.0.0.1:5100").
	MirrorURL string
	Listeners map[string]string
	// Upstreams are the registries the daemon is configured for, with their endpoints: Status
	// lists them, up, before the first request to them creates their health tracking.
	Upstreams map[string][]string
	// Answers, when set, counts the mirror's answers by result (metrics.Mirror.Answers).
	Answers func() map[string]int64
	// Cluster and Peers are the cluster tier, both nil when it is off: status reports them,
	// images and drill ask the peers who holds what.
	Cluster ClusterNode
	Peers   ClusterPeers

	hostsMu sync.Mutex // one hosts.toml switch or restore at a time
}

// plans are the image plans (drill, warm, pull, inspect) over the service's resolver and cache.
func (s *Service) plans() *plan.Planner { return plan.New(s.Resolver, s.Store) }

func (s *Service) answers() map[string]int64 {
	if s.Answers == nil {
		return nil
	}
	return s.Answers()
}

// hostsBackupDir keeps the original hosts.toml files while an outage has them switched.
func (s *Service) hostsBackupDir() string {
	return filepath.Join(s.Store.Root(), "outage-hosts")
}

// Init restores hosts.toml files a crashed daemon left switched, and arranges for them to be
// restored, and the upstreams probed at once, whenever an outage ends (stop or expiry).
func (s *Service) Init(ctx context.Context) error {
	if restored, err := s.restoreHosts(ctx); err != nil {
		return fmt.Errorf("restore hosts.toml files switched before a crash: %w", err)
	} else if len(restored) > 0 {
		log.G(ctx).WithField("registries", restored).Warn("restored hosts.toml files an interrupted outage drill had switched")
	}
	s.Outage.Subscribe(func(st outage.Status) {
		if st.Active {
			return
		}
		if _, err := s.restoreHosts(ctx); err != nil {
			log.G(ctx).WithError(err).Error("cannot restore hosts.toml files after the outage")
		}
		s.Resolver.ProbeNow()
	})
	return nil
}

func (s *Service) restoreHosts(ctx context.Context) ([]string, error) {
	s.hostsMu.Lock()
	defer s.hostsMu.Unlock()
	restored, err := hosts.Restore(s.hostsBackupDir())
	if len(restored) > 0 {
		log.G(ctx).WithField("registries", restored).Info("restored hosts.toml files")
	}
	return restored, err
}

// Status reports the daemon's state.
func (s *Service) Status(ctx context.Context) Status {
	used, budget := s.Store.Usage()
	return Status{
		Version:   s.Version,
		StartedAt: s.StartedAt,
		Uptime:    time.Since(s.StartedAt).Round(time.Second).String(),
		Root:      s.Store.Root(),
		Cache:     CacheStatus{UsedBytes: used, BudgetBytes: budget, Evictions: s.Store.Evictions()},
		Requests:  newRequestStatus(s.answers()),
		Endpoints: s.endpoints(),
		Outage:    s.Outage.Status(),

		FailedRevalidations: s.Resolver.FailedRevalidations(),
		Listeners:           s.Listeners,
		Cluster:             s.clusterStatus(ctx),
	}
}

// endpoints is the health of the upstream endpoints in use, and of the configured ones not
// used yet: those count as up since the daemon started, as the resolver counts a new one.
func (s *Service) endpoints() []endpoints.Status {
	eps := s.Resolver.Endpoints()
	used := map[string]bool{}
	for _, e := range eps {
		used[e.Registry] = true
	}
	for registry, urls := range s.Upstreams {
		if used[registry] {
			continue
		}
		for _, u := range urls {
			eps = append(eps, endpoints.Status{Registry: registry, Endpoint: u, Up: true, Since: s.StartedAt})
		}
	}
	slices.SortStableFunc(eps, func(a, b endpoints.Status) int { return strings.Compare(a.Registry, b.Registry) })
	if eps == nil {
		eps = []endpoints.Status{}
	}
	return eps
}

// StartOutage starts (or replaces) a simulated outage and, with a hosts directory, switches the
// managed hosts.toml files there to lifeboat-only. It returns once both are in force.
func (s *Service) StartOutage(ctx context.Context, req OutageRequest) (OutageResult, error) {
	var res OutageResult
	if err := req.Spec.Validate(); err != nil {
		return res, err
	}
	if req.HostsDir != "" {
		if fi, err := os.Stat(req.HostsDir); err != nil || !fi.IsDir() {
			return res, fmt.Errorf("hosts directory %s does not exist: %w", req.HostsDir, errdefs.ErrInvalidArgument)
		}
		s.hostsMu.Lock()
		switched, err := hosts.Switch(req.HostsDir, s.hostsBackupDir(), s.MirrorURL, req.Spec.Registries)
		s.hostsMu.Unlock()
		res.HostsSwitched = switched
		if err != nil {
			return res, fmt.Errorf("switch hosts.toml files: %w", err)
		}
		log.G(ctx).WithField("registries", switched).Info("hosts.toml files switched to lifeboat-only for the outage")
	}
	prev, err := s.Outage.Start(ctx, req.Spec)
	if err != nil {
		return res, err
	}
	res.Previous, res.Current = prev, s.Outage.Status()
	return res, nil
}

// StopOutage ends the simulated outage; the hosts.toml files are restored by the subscription
// set up in Init before it returns.
func (s *Service) StopOutage(ctx context.Context) (OutageResult, error) {
	if !s.Outage.Status().Active {
		return OutageResult{}, fmt.Errorf("no outage is being simulated: %w", errdefs.ErrNotFound)
	}
	// The files go back first, so that the answer lists them and the CLI returns only once
	// containerd sees its usual configuration again.
	restored, err := s.restoreHosts(ctx)
	if err != nil {
		return OutageResult{HostsRestored: restored}, fmt.Errorf("restore hosts.toml files: %w", err)
	}
	prev, err := s.Outage.Stop(ctx)
	if err != nil {
		return OutageResult{HostsRestored: restored}, err
	}
	return OutageResult{Previous: prev, Current: s.Outage.Status(), HostsRestored: restored}, nil
}

// DrillRequest asks whether the cache alone could serve pulls of images, as during an outage.
type DrillRequest struct {
	// Refs are image references ("docker.io/library/alpine:3.20", "alpine", "app@sha256:...").
	Refs []string `json:"refs"`
	// Platform is the platform pulls are for ("linux/amd64"); the daemon's own if empty.
	Platform string `json:"platform,omitempty"`
	// Fix fetches what is missing from the upstreams before the answer, which then says what
	// is still missing afterwards.
	Fix bool `json:"fix,omitempty"`
}

// DrillResult is the readiness of one image.
type DrillResult struct {
	plan.Readiness
	// Error says why the image could not be checked at all (a malformed reference); it is then
	// not ready.
	Error string `json:"error,omitempty"`
	// FixError says why fetching what was missing failed, with Fix.
	FixError string `json:"fixError,omitempty"`
}

// DrillReport answers a DrillRequest, with the results in the order of the refs.
type DrillReport struct {
	Platform string        `json:"platform"`
	Results  []DrillResult `json:"results"`
	Ready    int           `json:"ready"`
	Total    int           `json:"total"`
	// Cluster is true when the cluster tier is on: a result's ServedBy may then name peers.
	Cluster bool `json:"cluster,omitempty"`
}

// maxDrillRefs bounds one drill.
const maxDrillRefs = 10000

// Drill checks, from the cache alone and without a single upstream request, whether each image
// would pull through lifeboat during an outage. With Fix, the images that would not are warmed
// from the upstreams first, one at a time, and checked again.
func (s *Service) Drill(ctx context.Context, req DrillRequest) (DrillReport, error) {
	if len(req.Refs) > maxDrillRefs {
		return DrillReport{}, fmt.Errorf("%d images in one drill, more than %d: %w", len(req.Refs), maxDrillRefs, errdefs.ErrInvalidArgument)
	}
	spec, err := parsePlatform(req.Platform)
	if err != nil {
		return DrillReport{}, err
	}
	platform := platforms.Only(spec)
	rep := DrillReport{Platform: platforms.FormatAll(platforms.Normalize(spec)), Results: make([]DrillResult, 0, len(req.Refs)), Total: len(req.Refs)}
	for _, ref := range req.Refs {
		res, err := s.drillOne(ctx, ref, platform, req.Fix)
		if err != nil {
			return DrillReport{}, err
		}
		if res.Ready {
			rep.Ready++
		}
		rep.Results = append(rep.Results, res)
	}
	s.servedBy(&rep)
	log.G(ctx).WithFields(log.Fields{"ready": rep.Ready, "total": rep.Total, "platform": rep.Platform, "fix": req.Fix}).Info("drill")
	return rep, nil
}

// drillOne checks one image and, with fix, warms and checks it again if it is not ready. Only
// the end of ctx is an error: what goes wrong with one image is in its result.
func (s *Service) drillOne(ctx context.Context, ref string, platform platforms.MatchComparer, fix bool) (DrillResult, error) {
	rd, err := s.plans().Check(ctx, ref, platform)
	if err != nil {
		if ctx.Err() != nil {
			return DrillResult{}, ctx.Err()
		}
		return DrillResult{Readiness: plan.Readiness{Ref: ref, Missing: []string{}}, Error: err.Error()}, nil
	}
	res := DrillResult{Readiness: rd}
	if rd.Ready || !fix {
		return res, nil
	}
	if err := s.plans().Warm(ctx, ref, platform); err != nil {
		if ctx.Err() != nil {
			return DrillResult{}, ctx.Err()
		}
		log.G(ctx).WithError(err).WithField("ref", rd.Ref).Warn("drill: cannot fetch what the image is missing")
		res.FixError = err.Error()
	}
	// Even a failed warm may have fetched part of it: report the state now.
	if rd, err = s.plans().Check(ctx, ref, platform); err != nil {
		return DrillResult{}, err
	}
	res.Readiness = rd
	return res, nil
}
