package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

type outage struct {
	first         time.Duration
	firstTimedOut bool
	firstErr      error           // answered with an error status or a failed connection
	followUps     []time.Duration // answered
	timedOut      int             // follow-ups cut at outageReqCap
	errors        int             // follow-ups answered with an error status or a failed connection
	notRun        int             // follow-ups left out once the p99 was known to exceed the cap
}

func getManifest(url string) error {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1)+", "+string(types.DockerManifestSchema2))
	return launch.DoOK(&http.Client{Timeout: outageReqCap}, req)
}

// headCapped is head with the request cut at outageReqCap (or when ctx ends).
func headCapped(ctx context.Context, url string) (d time.Duration, timedOut bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, outageReqCap)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1)+", "+string(types.DockerManifestSchema2))
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	d = time.Since(start)
	if err != nil {
		return d, ctx.Err() != nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return d, false, fmt.Errorf("HEAD %s: %s", url, resp.Status)
	}
	return d, false, nil
}

// measureOutage times the first tag resolution, then outageFollowUps more, outageParallel at a
// time. Once more than 1% of the follow-ups have timed out their p99 is known to exceed the cap,
// and the rest are not run; so are any still waiting when ctx ends.
func measureOutage(ctx context.Context, url string) outage {
	var o outage
	d, to, err := headCapped(ctx, url)
	o.first, o.firstTimedOut = d, to || (err != nil && ctx.Err() != nil)
	if err != nil && !o.firstTimedOut {
		o.firstErr = err
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		sem = make(chan struct{}, outageParallel)
	)
	for range outageFollowUps {
		select {
		case sem <- struct{}{}:
		case <-fctx.Done():
		}
		if fctx.Err() != nil {
			mu.Lock()
			o.notRun++
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d, to, err := headCapped(fctx, url)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case to && d >= outageReqCap-100*time.Millisecond:
				o.timedOut++
				if o.timedOut*100 > outageFollowUps {
					stop()
				}
			case fctx.Err() != nil:
				o.notRun++ // cut short because the answer was already known or the budget ran out
			case err != nil:
				o.errors++
			default:
				o.followUps = append(o.followUps, d)
			}
		}()
	}
	wg.Wait()
	return o
}

// followUpPct is the p-th percentile of the follow-ups that ran, counting timed-out ones as the
// slowest. ok is false when none ran; overCap is true when the percentile falls among the timed
// out ones, or when so many timed out that it would over all outageFollowUps whatever the ones
// not run would have done.
func (o outage) followUpPct(p float64) (d time.Duration, overCap, ok bool) {
	total := len(o.followUps) + o.timedOut
	if total == 0 {
		return 0, false, false
	}
	idx := min(total-1, int(float64(total)*p))
	if idx >= len(o.followUps) || float64(o.timedOut) > float64(outageFollowUps)*(1-p) {
		return 0, true, true
	}
	return percentile(o.followUps, p), false, true
}

func (o outage) pctString(p float64) string {
	d, over, ok := o.followUpPct(p)
	switch {
	case !ok:
		return "n/a"
	case over:
		return fmt.Sprintf("> %s (timed out)", fmtSec(outageReqCap))
	}
	return d.Round(time.Microsecond).String()
}

// pctRatio is lifeboat's percentile divided by the proxy's, or "–" when either is not a time.
func pctRatio(lb, px outage, p float64) string {
	a, aOver, aOK := lb.followUpPct(p)
	b, bOver, bOK := px.followUpPct(p)
	if aOver || bOver || !aOK || !bOK {
		return "–"
	}
	return fmt.Sprintf("%.4f", a.Seconds()/b.Seconds())
}

func (o outage) firstFailed() bool { return o.firstTimedOut || o.firstErr != nil }

func (o outage) firstString() string {
	if o.firstTimedOut {
		return fmt.Sprintf("> %s (timed out)", fmtSec(outageReqCap))
	}
	if o.firstErr != nil {
		return fmt.Sprintf("failed after %s", o.first.Round(time.Millisecond))
	}
	return o.first.Round(time.Microsecond).String()
}

func (o outage) note() string {
	s := fmt.Sprintf("%d answered", len(o.followUps))
	if o.timedOut > 0 {
		s += fmt.Sprintf(", %d timed out", o.timedOut)
	}
	if o.errors > 0 {
		s += fmt.Sprintf(", %d errors", o.errors)
	}
	if o.notRun > 0 {
		why := "the outage time budget was spent"
		if o.timedOut*100 > outageFollowUps {
			why = "the p99 was already known to exceed the cap"
		}
		s += fmt.Sprintf(", %d not run (%s)", o.notRun, why)
	}
	return s
}
