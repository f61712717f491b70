package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"

	"github.com/lifeboat-dev/lifeboat/plan"
)

// PullRequest asks the daemon to fetch images into the cache.
type PullRequest struct {
	// Refs are image references ("alpine:3.20", "ghcr.io/org/app@sha256:...").
	Refs []string `json:"refs"`
	// Platform is the platform to fetch ("linux/arm64"); the daemon's own if empty.
	Platform string `json:"platform,omitempty"`
	// AllPlatforms fetches every manifest of an index instead.
	AllPlatforms bool `json:"allPlatforms,omitempty"`
}

// Pull states, in the order an image goes through them.
const (
	PullWaiting   = "waiting"
	PullResolving = "resolving"
	PullPulling   = "pulling"
	PullDone      = "pulled"
	PullFailed    = "failed"
)

// PullProgress is how far the pull of one image got. The daemon sends one when an image
// starts, about every PullProgressInterval while it downloads, and one with its Result at the
// end.
type PullProgress struct {
	// Ref is the normalized reference (as requested if it is not a valid reference).
	Ref   string `json:"ref"`
	State string `json:"state"`
	// Bytes of the image in the cache so far, counting downloads by how far they got.
	Bytes int64 `json:"bytes"`
	// Total is the size of what the pull needs, once known.
	Total  int64       `json:"total"`
	Result *PullResult `json:"result,omitempty"`
}

// PullProgressInterval is how often the daemon reports the progress of a download.
const PullProgressInterval = 250 * time.Millisecond

// PullResult is the outcome of the pull of one image.
type PullResult struct {
	// Ref is the normalized reference (as requested if it is not a valid reference).
	Ref string `json:"ref"`
	// Digest is what the ref resolved to.
	Digest string `json:"digest,omitempty"`
	// Bytes is the size of what the pull needs: indexes, manifests, configs and layers.
	Bytes int64 `json:"bytes"`
	// CachedBytes are the config and layer bytes that were cached when the pull started, and
	// FetchedBytes those it fetched: a pull of an image already cached fetches none, one that
	// was interrupted only what it lacked.
	CachedBytes  int64   `json:"cachedBytes"`
	FetchedBytes int64   `json:"fetchedBytes"`
	Seconds      float64 `json:"seconds"`
	Error        string  `json:"error,omitempty"`
}

// PullReport is the outcome of a PullRequest, results in the order of the refs.
type PullReport struct {
	// Platform is what was pulled: "linux/amd64", or "all".
	Platform string       `json:"platform"`
	Results  []PullResult `json:"results"`
	Pulled   int          `json:"pulled"`
	Failed   int          `json:"failed"`
}

// Bounds of a pull request.
const (
	// pullConcurrency is how many images are pulled at once; each fetches up to 3 blobs at once.
	pullConcurrency = 3
	maxPullRefs     = 10000
)

// Pull fetches the images into the cache, pullConcurrency at a time, calling progress (from
// several goroutines, one call at a time) as they go. What fails for one image is in its result;
// only a bad request and the end of ctx are errors.
func (s *Service) Pull(ctx context.Context, req PullRequest, progress func(PullProgress)) (PullReport, error) {
	if len(req.Refs) > maxPullRefs {
		return PullReport{}, fmt.Errorf("%d images in one pull, more than %d: %w", len(req.Refs), maxPullRefs, errdefs.ErrInvalidArgument)
	}
	if req.AllPlatforms && req.Platform != "" {
		return PullReport{}, fmt.Errorf("a platform and all platforms cannot both be asked for: %w", errdefs.ErrInvalidArgument)
	}
	spec, err := parsePlatform(req.Platform)
	if err != nil {
		return PullReport{}, err
	}
	rep := PullReport{Platform: platforms.FormatAll(platforms.Normalize(spec)), Results: make([]PullResult, len(req.Refs))}
	if req.AllPlatforms {
		rep.Platform = "all"
	}
	var mu sync.Mutex
	report := func(p PullProgress) {
		if progress != nil {
			mu.Lock()
			defer mu.Unlock()
			progress(p)
		}
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(pullConcurrency, len(req.Refs)) {
		wg.Go(func() {
			for i := range next {
				rep.Results[i] = s.pullOne(ctx, req.Refs[i], platforms.Only(spec), req.AllPlatforms, report)
			}
		})
	}
feed:
	for i := range req.Refs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return PullReport{}, err
	}
	for _, r := range rep.Results {
		if r.Error == "" {
			rep.Pulled++
		} else {
			rep.Failed++
		}
	}
	log.G(ctx).WithFields(log.Fields{"pulled": rep.Pulled, "failed": rep.Failed, "platform": rep.Platform}).Info("pull")
	return rep, nil
}

// pullOne pulls one image, reporting its progress.
func (s *Service) pullOne(ctx context.Context, ref string, platform platforms.MatchComparer, all bool, progress func(PullProgress)) PullResult {
	start := time.Now()
	res := PullResult{Ref: ref}
	fail := func(err error) PullResult {
		res.Error = strings.TrimPrefix(err.Error(), res.Ref+": ")
		res.Seconds = time.Since(start).Seconds()
		progress(PullProgress{Ref: res.Ref, State: PullFailed, Result: &res})
		log.G(ctx).WithError(err).WithField("ref", res.Ref).Warn("pull failed")
		return res
	}
	name, err := plan.NormalizeRef(ref)
	if err != nil {
		return fail(err)
	}
	res.Ref = name
	progress(PullProgress{Ref: name, State: PullResolving})
	plans := s.plans()
	plan, err := plans.PlanPull(ctx, name, platform, all)
	if err != nil {
		return fail(err)
	}
	res.Digest, res.Bytes = plan.Digest.String(), plan.Size
	done, blobsBefore := plans.PullProgress(ctx, plan)
	res.CachedBytes = blobsBefore
	progress(PullProgress{Ref: name, State: PullPulling, Bytes: done, Total: plan.Size})

	stop := make(chan struct{})
	var ticker sync.WaitGroup
	ticker.Go(func() {
		t := time.NewTicker(PullProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				done, _ := plans.PullProgress(ctx, plan)
				progress(PullProgress{Ref: name, State: PullPulling, Bytes: done, Total: plan.Size})
			}
		}
	})
	err = plans.Pull(ctx, plan)
	close(stop)
	ticker.Wait()
	done, blobsAfter := plans.PullProgress(ctx, plan)
	res.FetchedBytes = max(blobsAfter-blobsBefore, 0)
	if err != nil {
		return fail(err)
	}
	res.Seconds = time.Since(start).Seconds()
	progress(PullProgress{Ref: name, State: PullDone, Bytes: done, Total: plan.Size, Result: &res})
	log.G(ctx).WithFields(log.Fields{"ref": name, "bytes": res.Bytes, "fetched": res.FetchedBytes, "seconds": res.Seconds}).Info("pulled")
	return res
}

// pullLine is one line of the answer to POST /v1/pull: progress lines, then the report or an
// error.
type pullLine struct {
	Progress *PullProgress `json:"progress,omitempty"`
	Report   *PullReport   `json:"report,omitempty"`
	Error    *apiError     `json:"error,omitempty"`
}

// servePull answers POST /v1/pull with newline-delimited JSON: a bad request is a plain error
// answer; once the pull started, progress lines follow as they come, and the last line is the
// report or the error that ended the pull.
func servePull(s *Service) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req PullRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 16<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("pull request: %v: %w", err, errdefs.ErrInvalidArgument))
			return
		}
		rc := http.NewResponseController(w)
		enc := json.NewEncoder(w)
		started := false
		send := func(l pullLine) {
			if !started {
				w.Header().Set("Content-Type", "application/x-ndjson")
				started = true
			}
			enc.Encode(l)
			rc.Flush()
		}
		rep, err := s.Pull(r.Context(), req, func(p PullProgress) { send(pullLine{Progress: &p}) })
		switch {
		case err != nil && !started:
			reply(w, nil, err)
		case err != nil:
			_, kind := errorKind(err)
			send(pullLine{Error: &apiError{Error: err.Error(), Kind: kind}})
		default:
			send(pullLine{Report: &rep})
		}
	}
}

// Pull asks the daemon to fetch images into the cache and calls progress, if not nil, with each
// progress report as it arrives. It waits, without the client's usual time limit, until every
// image is pulled or has failed.
func (c *Client) Pull(ctx context.Context, req PullRequest, progress func(PullProgress)) (PullReport, error) {
	resp, err := c.withoutTimeout().send(ctx, http.MethodPost, "/v1/pull", req)
	if err != nil {
		return PullReport{}, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var l pullLine
		if err := dec.Decode(&l); err != nil {
			if ctx.Err() != nil {
				return PullReport{}, ctx.Err()
			}
			return PullReport{}, fmt.Errorf("admin socket %s: the pull answer ended early: %w", c.socket, err)
		}
		switch {
		case l.Error != nil:
			return PullReport{}, l.Error.err()
		case l.Report != nil:
			return *l.Report, nil
		case l.Progress != nil && progress != nil:
			progress(*l.Progress)
		}
	}
}
