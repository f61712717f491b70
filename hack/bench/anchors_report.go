package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// coldCPUGoal is the goal for lifeboat's CPU seconds per GiB of a cold miss, GET to
// commit.
const coldCPUGoal = 1.5

// fanOutGoal is the goal for the slowest fan-out client ÷ one client alone.
const fanOutGoal = 1.2

// slowestToAlone is the fan-out's slowest client time divided by one client's alone.
func slowestToAlone(slow, alone []time.Duration) float64 {
	return median(slow).Seconds() / median(alone).Seconds()
}

// aggregateGiBps is what the fan-out delivered to all its clients together, per second.
func (r anchorResults) aggregateGiBps(slow []time.Duration) float64 {
	return float64(r.size) * fanOutClients / median(slow).Seconds() / (1 << 30)
}

func renderAnchors(b *strings.Builder, r anchorResults) {
	fmt.Fprintf(b, "\n## Against the distribution registry in proxy mode\n\n")
	var gets []string
	for _, br := range r.blobs {
		gets = append(gets, fmt.Sprintf("%d with the %s blob", br.rounds, sizeName(br.size)))
	}
	if last := len(r.blobs) - 1; r.blobs[last].rounds < r.blobs[0].rounds {
		gets[last] += " (fewer, to keep the run short)"
	}
	fmt.Fprintf(b, "The anchor is the same distribution registry binary as the upstream, in proxy mode in front of it\n"+
		"(`proxy.remoteurl`, `ttl: 0`, filesystem storage); each is a separate process on loopback, with a fresh\n"+
		"lifeboat root and fresh proxy storage for every cold measurement. The last column is lifeboat's figure\n"+
		"divided by the proxy's.\n\n"+
		"Medians with min–max in brackets. Single-client GETs: lifeboat, the proxy and the upstream direct\n"+
		"alternating, the order reversed every other round, rounds: %s. Fan-out: %d rounds, lifeboat and\n"+
		"the proxy alternating likewise (over the link, lifeboat and one GET over the link). Outage: one round\n"+
		"(the first HEAD of each party meets the outage fresh), lifeboat first, each party with its own time\n"+
		"budget. Fan-out and outage use the %s blob and its tag.\n\n"+
		"CPU is the user and system time of the serving process (lifeboat or the proxy) from\n"+
		"/proc/<pid>/stat, per GiB served: for a cold miss from the GET until the blob is committed to its\n"+
		"storage, for a warm hit over the GET alone. /proc counts in clock ticks of %s, so a figure is\n"+
		"only as fine as one tick per blob.\n\n", strings.Join(gets, "; "), r.fanRounds, sizeName(r.size), time.Duration(float64(time.Second)/clockTicks))
	fmt.Fprintf(b, "| measurement | lifeboat | distribution proxy | upstream direct | lifeboat ÷ proxy |\n|---|---:|---:|---:|---:|\n")
	row := func(what, lb, px, dir string, ratio float64) {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.2f |\n", what, lb, px, dir, ratio)
	}
	for _, br := range r.blobs {
		mb := func(ds []time.Duration) string { return rateSpread(br.size, ds) + " MiB/s" }
		row(fmt.Sprintf("warm hit, %s blob GET (higher is better)", sizeName(br.size)), mb(br.lb.warm), mb(br.px.warm), mb(br.direct), mibps(br.size, br.lb.warm)/mibps(br.size, br.px.warm))
	}
	for _, br := range r.blobs {
		mb := func(ds []time.Duration) string { return rateSpread(br.size, ds) + " MiB/s" }
		row(fmt.Sprintf("cold miss, %s blob GET (higher is better)", sizeName(br.size)), mb(br.lb.cold), mb(br.px.cold), mb(br.direct), mibps(br.size, br.lb.cold)/mibps(br.size, br.px.cold))
	}
	for _, br := range r.blobs {
		row(fmt.Sprintf("cold miss, %s blob, time to first byte (lower is better)", sizeName(br.size)), durSpread(br.lb.ttfb), durSpread(br.px.ttfb), durSpread(br.ttfbDir), median(br.lb.ttfb).Seconds()/median(br.px.ttfb).Seconds())
	}
	cpu := func(xs []float64) string { return floatSpread(xs, 2) + " CPU-s/GiB" }
	for _, br := range r.blobs {
		row(fmt.Sprintf("cold miss, %s blob: CPU of the serving process, GET to commit (lower is better; goal ≤ %.1f for lifeboat)", sizeName(br.size), coldCPUGoal),
			cpu(br.lb.cpuCold)+goal(median(br.lb.cpuCold) <= coldCPUGoal), cpu(br.px.cpuCold), "–", median(br.lb.cpuCold)/median(br.px.cpuCold))
		row(fmt.Sprintf("warm hit, %s blob: CPU of the serving process over the GET (lower is better)", sizeName(br.size)), cpu(br.lb.cpuWarm), cpu(br.px.cpuWarm), "–", median(br.lb.cpuWarm)/median(br.px.cpuWarm))
	}
	copies := func(xs []int64) string {
		return floatSpread(mapSlice(xs, func(n int64) float64 { return float64(n) / float64(r.size) }), 2) + " copies"
	}
	ms := func(ds []time.Duration) string {
		return spread(ds, func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }, time.Duration.String)
	}
	row(fmt.Sprintf("fan-out, %d cold clients: upstream bytes (goal 1 copy)", fanOutClients), copies(r.fanBytesLB)+goal(float64(median(r.fanBytesLB))/float64(r.size) < 1.01), copies(r.fanBytesPX), "–",
		float64(median(r.fanBytesLB))/float64(median(r.fanBytesPX)))
	row(fmt.Sprintf("fan-out, slowest of %d ÷ one client alone, of the medians (goal ≤ 1.2)", fanOutClients),
		fmt.Sprintf("%.2f (%s ÷ %s)%s", slowestToAlone(r.fanSlowLB, r.aloneLB), ms(r.fanSlowLB), ms(r.aloneLB),
			goal(slowestToAlone(r.fanSlowLB, r.aloneLB) <= fanOutGoal)),
		fmt.Sprintf("%.2f (%s ÷ %s)", slowestToAlone(r.fanSlowPX, r.alonePX), ms(r.fanSlowPX), ms(r.alonePX)),
		"–", slowestToAlone(r.fanSlowLB, r.aloneLB)/slowestToAlone(r.fanSlowPX, r.alonePX))
	fmt.Fprintf(b, "| fan-out over a %s upstream link, slowest of %d ÷ one client alone, of the medians (goal ≤ 1.2) | %.2f (%s ÷ %s)%s, %s upstream | not run | one GET over the link: %s | – |\n",
		linkName(fanOutLink), fanOutClients, slowestToAlone(r.linkSlowLB, r.linkAlone),
		ms(r.linkSlowLB), ms(r.linkAlone),
		goal(slowestToAlone(r.linkSlowLB, r.linkAlone) <= fanOutGoal), copies(r.linkBytesLB),
		ms(r.linkDirect))
	if r.rssLB > 0 && r.rssPX > 0 {
		row("fan-out, peak RSS (lower is better)", fmt.Sprintf("%.0f MiB", mib(r.rssLB)), fmt.Sprintf("%.0f MiB", mib(r.rssPX)), "–", float64(r.rssLB)/float64(r.rssPX))
	}
	firstRatio := "–"
	if !r.outLB.firstFailed() && !r.outPX.firstFailed() {
		firstRatio = fmt.Sprintf("%.4f", r.outLB.first.Seconds()/r.outPX.first.Seconds())
	}
	fmt.Fprintf(b, "| outage, first tag HEAD (lower is better) | %s | %s | – | %s |\n", r.outLB.firstString(), r.outPX.firstString(), firstRatio)
	for _, p := range []float64{0.5, 0.99} {
		fmt.Fprintf(b, "| outage, p%.0f of the next %d tag HEADs, %d at a time (lower is better) | %s | %s | – | %s |\n",
			p*100, outageFollowUps, outageParallel, r.outLB.pctString(p), r.outPX.pctString(p), pctRatio(r.outLB, r.outPX, p))
	}
	fmt.Fprintf(b, "\nFan-out: every party and all %d clients share the machine's %d CPUs, so delivering %d copies is itself\n"+
		"bound by CPU here (lifeboat delivered %.1f GiB/s to the clients in aggregate, the proxy %.1f GiB/s); the\n"+
		"upstream bytes are counted by a forwarder in front of the upstream, one per instance. Peak RSS is the\n"+
		"high-water mark of a fresh process that served only the fan-out, the largest over the rounds.\n",
		fanOutClients, runtime.NumCPU(), fanOutClients, r.aggregateGiBps(r.fanSlowLB), r.aggregateGiBps(r.fanSlowPX))
	fmt.Fprintf(b, "\nFan-out over a link: the same, with the forwarder sending the upstream's bytes at most at %s\n"+
		"(all connections together), as when the registry is across a network, so the upstream and not the\n"+
		"local delivery sets the pace. lifeboat only: the proxy's %d upstream copies would take over a minute\n"+
		"a round at that rate.\n", linkName(fanOutLink), fanOutClients)
	fmt.Fprintf(b, "\nOutage: the upstream of both is a forwarder that, once the tag is cached by each, closes every\n"+
		"connection and then accepts new ones and never answers. Each tag HEAD is cut at %s and each party's\n"+
		"outage measurement at %s. Follow-ups through lifeboat: %s; through the proxy: %s. The\n"+
		"percentiles are over the follow-ups that ran, timed-out ones counted as the slowest.\n",
		fmtSec(outageReqCap), fmtSec(outageBudget), r.outLB.note(), r.outPX.note())
}

// anchorsJSON is the anchor comparison; "distribution_proxy" is the anchor.
type anchorsJSON struct {
	Blobs  []blobJSON `json:"single_client_blob_gets"`
	FanOut fanOutJSON `json:"fan_out"`
	Outage outageJSON `json:"outage"`
}

type blobJSON struct {
	SizeBytes int64       `json:"blob_size_bytes"`
	Rounds    int         `json:"rounds"`
	WarmHit   byPartyJSON `json:"warm_hit_mib_per_s"`
	ColdMiss  byPartyJSON `json:"cold_miss_mib_per_s"`
	TTFB      byPartyJSON `json:"cold_miss_time_to_first_byte_seconds"`
	CPUCold   cpuJSON     `json:"cold_miss_cpu_seconds_per_gib"` // GET to commit
	CPUWarm   cpuJSON     `json:"warm_hit_cpu_seconds_per_gib"`
}

// cpuJSON is the CPU seconds per GiB of each serving process, the median of the rounds, and
// lifeboat's divided by the proxy's.
type cpuJSON struct {
	Lifeboat float64 `json:"lifeboat"`
	Proxy    float64 `json:"distribution_proxy"`
	Ratio    float64 `json:"lifeboat_to_proxy_ratio"`
	// Goal is the goal for lifeboat's figure, when it has one, and GoalMet whether it
	// was met.
	Goal    float64 `json:"lifeboat_goal,omitempty"`
	GoalMet *bool   `json:"lifeboat_goal_met,omitempty"`
}

func cpuByParty(lb, px []float64) cpuJSON {
	return cpuJSON{Lifeboat: median(lb), Proxy: median(px), Ratio: median(lb) / median(px)}
}

// withGoal adds a goal that lifeboat's figure is at most.
func (c cpuJSON) withGoal(atMost float64) cpuJSON {
	met := c.Lifeboat <= atMost
	c.Goal, c.GoalMet = atMost, &met
	return c
}

// byPartyJSON is one figure for each party, in the unit its parent's name gives, and
// lifeboat's divided by the proxy's.
type byPartyJSON struct {
	Lifeboat float64 `json:"lifeboat"`
	Proxy    float64 `json:"distribution_proxy"`
	Upstream float64 `json:"upstream_direct"`
	Ratio    float64 `json:"lifeboat_to_proxy_ratio"`
}

func byParty(lb, px, up float64) byPartyJSON {
	return byPartyJSON{Lifeboat: lb, Proxy: px, Upstream: up, Ratio: lb / px}
}

type fanOutJSON struct {
	Clients   int             `json:"clients"`
	SizeBytes int64           `json:"blob_size_bytes"`
	Rounds    int             `json:"rounds"`
	Lifeboat  fanOutPartyJSON `json:"lifeboat"`
	Proxy     fanOutPartyJSON `json:"distribution_proxy"`

	// The lifeboat fan-out again with the upstream behind a link of LinkBytesPerS.
	LinkBytesPerS      int64           `json:"link_bytes_per_s"`
	OverLink           fanOutPartyJSON `json:"lifeboat_over_link"`
	DirectOverLinkSecs float64         `json:"upstream_direct_over_link_seconds"`
}

type fanOutPartyJSON struct {
	UpstreamBytes       int64   `json:"upstream_bytes"`
	UpstreamCopies      float64 `json:"upstream_copies"`
	SlowestSeconds      float64 `json:"slowest_client_seconds"`
	AloneSeconds        float64 `json:"one_client_alone_seconds"`
	SlowestToAloneRatio float64 `json:"slowest_to_alone_ratio"`
	AggregateGiBPerS    float64 `json:"aggregate_gib_per_s"`
	PeakRSSMiB          float64 `json:"peak_rss_mib,omitempty"` // absent when /proc could not be read
}

type outageJSON struct {
	RequestCapSeconds float64         `json:"request_cap_seconds"`
	BudgetSeconds     float64         `json:"budget_seconds"`
	FollowUps         int             `json:"follow_ups"`
	Parallel          int             `json:"follow_ups_in_parallel"`
	Lifeboat          outagePartyJSON `json:"lifeboat"`
	Proxy             outagePartyJSON `json:"distribution_proxy"`
}

// outagePartyJSON is one party's outage figures. A percentile is null when it is over the
// request cap (its over_cap field says so) or when no follow-up ran.
type outagePartyJSON struct {
	FirstSeconds float64  `json:"first_tag_head_seconds"`
	FirstOutcome string   `json:"first_tag_head_outcome"` // answered, timed_out or failed
	P50Seconds   *float64 `json:"follow_ups_p50_seconds"`
	P50OverCap   bool     `json:"follow_ups_p50_over_cap"`
	P99Seconds   *float64 `json:"follow_ups_p99_seconds"`
	P99OverCap   bool     `json:"follow_ups_p99_over_cap"`
	Answered     int      `json:"follow_ups_answered"`
	TimedOut     int      `json:"follow_ups_timed_out"`
	Errors       int      `json:"follow_ups_errors"`
	NotRun       int      `json:"follow_ups_not_run"`
}

func (o outage) json() outagePartyJSON {
	j := outagePartyJSON{FirstSeconds: o.first.Seconds(), FirstOutcome: "answered",
		Answered: len(o.followUps), TimedOut: o.timedOut, Errors: o.errors, NotRun: o.notRun}
	switch {
	case o.firstTimedOut:
		j.FirstOutcome = "timed_out"
	case o.firstErr != nil:
		j.FirstOutcome = "failed"
	}
	pct := func(p float64) (*float64, bool) {
		d, over, ok := o.followUpPct(p)
		if over || !ok {
			return nil, over
		}
		s := d.Seconds()
		return &s, false
	}
	j.P50Seconds, j.P50OverCap = pct(0.5)
	j.P99Seconds, j.P99OverCap = pct(0.99)
	return j
}

func (r anchorResults) json() anchorsJSON {
	var j anchorsJSON
	for _, br := range r.blobs {
		j.Blobs = append(j.Blobs, blobJSON{
			SizeBytes: br.size, Rounds: br.rounds,
			WarmHit:  byParty(mibps(br.size, br.lb.warm), mibps(br.size, br.px.warm), mibps(br.size, br.direct)),
			ColdMiss: byParty(mibps(br.size, br.lb.cold), mibps(br.size, br.px.cold), mibps(br.size, br.direct)),
			TTFB:     byParty(median(br.lb.ttfb).Seconds(), median(br.px.ttfb).Seconds(), median(br.ttfbDir).Seconds()),
			CPUCold:  cpuByParty(br.lb.cpuCold, br.px.cpuCold).withGoal(coldCPUGoal),
			CPUWarm:  cpuByParty(br.lb.cpuWarm, br.px.cpuWarm),
		})
	}
	fan := func(bytes []int64, slow, alone []time.Duration, rss int64) fanOutPartyJSON {
		return fanOutPartyJSON{
			UpstreamBytes: median(bytes), UpstreamCopies: float64(median(bytes)) / float64(r.size),
			SlowestSeconds: median(slow).Seconds(), AloneSeconds: median(alone).Seconds(),
			SlowestToAloneRatio: slowestToAlone(slow, alone), AggregateGiBPerS: r.aggregateGiBps(slow), PeakRSSMiB: mib(rss),
		}
	}
	j.FanOut = fanOutJSON{Clients: fanOutClients, SizeBytes: r.size, Rounds: r.fanRounds,
		Lifeboat:      fan(r.fanBytesLB, r.fanSlowLB, r.aloneLB, r.rssLB),
		Proxy:         fan(r.fanBytesPX, r.fanSlowPX, r.alonePX, r.rssPX),
		LinkBytesPerS: fanOutLink, OverLink: fan(r.linkBytesLB, r.linkSlowLB, r.linkAlone, 0),
		DirectOverLinkSecs: median(r.linkDirect).Seconds()}
	j.Outage = outageJSON{RequestCapSeconds: outageReqCap.Seconds(), BudgetSeconds: outageBudget.Seconds(),
		FollowUps: outageFollowUps, Parallel: outageParallel, Lifeboat: r.outLB.json(), Proxy: r.outPX.json()}
	return j
}
