package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The anchor: the same distribution registry binary as the upstream, in proxy mode in front of
// it (proxy.remoteurl, ttl 0), with its own filesystem storage and loopback port.

const (
	fanOutClients   = 32
	fanOutLink      = 125_000_000      // bytes/s: the upstream over a 1 Gbit/s link, for the second fan-out
	outageReqCap    = 20 * time.Second // per tag resolution during the outage
	outageBudget    = 60 * time.Second // each party's whole outage measurement
	outageFollowUps = 100
	outageParallel  = 10
)

// anchorResults holds what anchorBench measured.
type anchorResults struct {
	size int64 // of the blob in blobs[0], the one the fan-out fetches

	// Warm hit and cold miss, one client, for each blob size.
	blobs []blobResults

	// Fan-out of fanOutClients cold clients.
	fanRounds              int
	fanBytesLB, fanBytesPX []int64         // upstream bytes for the fan-out
	fanSlowLB, fanSlowPX   []time.Duration // slowest client of the fan-out
	aloneLB, alonePX       []time.Duration // one client alone, cold
	rssLB, rssPX           int64           // peak RSS (bytes) during the fan-out, largest of the rounds

	// The same fan-out with the upstream behind a fanOutLink link, lifeboat only.
	linkBytesLB                       []int64
	linkSlowLB, linkAlone, linkDirect []time.Duration // linkDirect: one GET from the upstream over the link

	// Outage: the upstream blackholed after the tag was cached.
	outLB, outPX outage
}

// startProxy runs the distribution registry in proxy mode in front of upstream, with storage
// in dir.
func startProxy(dir, tools, upstream string) (*daemon, string, error) {
	return runRegistry(dir, tools, "", fmt.Sprintf("proxy:\n  remoteurl: http://%s\n  ttl: 0s\n", upstream))
}

// proxyHasBlob reports whether the proxy has committed the blob to its storage and linked it
// into the repository, so that the next GET is served locally.
func proxyHasBlob(dir, repo, hex string) bool {
	_, err := os.Stat(filepath.Join(dir, "data", "docker", "registry", "v2", "repositories", repo, "_layers", "sha256", hex, "link"))
	return err == nil
}

// peakRSS returns the VmHWM of a running process in bytes, or 0.
func peakRSS(d *daemon) int64 {
	return procKB(fmt.Sprintf("/proc/%d/status", d.Pid()), "VmHWM:")
}

// anchorBench measures lifeboat against the distribution registry in proxy mode, and both
// against the upstream registry they front: single-client GETs of a size blob over rounds and
// of a largeSize blob over largeRounds, then the fan-out and the outage with the size blob.
func anchorBench(ctx context.Context, scratch, tools, lifeboat string, size int64, rounds int, largeSize int64, largeRounds, fanRounds int) (anchorResults, error) {
	var res anchorResults
	base := filepath.Join(scratch, "anchors")
	reg, regAddr, err := startRegistry(base, tools)
	if err != nil {
		return res, err
	}
	defer reg.stop()

	n := 0
	fresh := func(kind string) string {
		n++
		return filepath.Join(base, fmt.Sprintf("%s-%d", kind, n))
	}

	// 1 and 2: single-client GETs, the usual blob then the large one.
	dgst, size, err := pushBlobImage(ctx, regAddr, "library/anchor:1", size)
	if err != nil {
		return res, err
	}
	res.size = size
	blobPath := "/v2/library/anchor/blobs/" + dgst.String()
	small, err := blobBench(fresh, tools, lifeboat, regAddr, "library/anchor", dgst, size, rounds)
	if err != nil {
		return res, err
	}
	ldgst, lsize, err := pushBlobImage(ctx, regAddr, "library/anchor-large:1", largeSize)
	if err != nil {
		return res, err
	}
	large, err := blobBench(fresh, tools, lifeboat, regAddr, "library/anchor-large", ldgst, lsize, largeRounds)
	if err != nil {
		return res, err
	}
	res.blobs = []blobResults{small, large}

	// 3: fan-out. Each subject gets a fresh instance in front of its own counting forwarder,
	// once for one client alone and once for fanOutClients at once. The forwarder's link is
	// limited to link bytes/s, or not at all when link is 0.
	fanOnce := func(kind string, clients int, link int64) (slowest time.Duration, upstream, rss int64, err error) {
		fwd, err := startLinkForwarder(regAddr, link)
		if err != nil {
			return 0, 0, 0, err
		}
		defer fwd.close()
		dir := fresh(kind)
		defer os.RemoveAll(dir)
		var d *daemon
		var addr string
		if kind == "lifeboat" {
			d, addr, err = startLifeboat(dir, lifeboat, fwd.addr())
		} else {
			d, addr, err = startProxy(dir, tools, fwd.addr())
		}
		if err != nil {
			return 0, 0, 0, err
		}
		defer d.stop()
		start0 := fwd.bytes()
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, t, err := fetch("http://"+addr+blobPath, size)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				}
				slowest = max(slowest, t)
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			return 0, 0, 0, fmt.Errorf("%s fan-out: %d of %d clients failed, first: %w", kind, len(errs), clients, errs[0])
		}
		return slowest, fwd.bytes() - start0, peakRSS(d), nil
	}
	res.fanRounds = fanRounds
	fanParty := func(kind string) func() error {
		return func() error {
			alone, _, _, err := fanOnce(kind, 1, 0)
			if err != nil {
				return err
			}
			slow, up, rss, err := fanOnce(kind, fanOutClients, 0)
			if err != nil {
				return err
			}
			if kind == "lifeboat" {
				res.aloneLB, res.fanSlowLB, res.fanBytesLB = append(res.aloneLB, alone), append(res.fanSlowLB, slow), append(res.fanBytesLB, up)
				res.rssLB = max(res.rssLB, rss)
			} else {
				res.alonePX, res.fanSlowPX, res.fanBytesPX = append(res.alonePX, alone), append(res.fanSlowPX, slow), append(res.fanBytesPX, up)
				res.rssPX = max(res.rssPX, rss)
			}
			return nil
		}
	}
	if err := alternate(fanRounds, fanParty("lifeboat"), fanParty("proxy")); err != nil {
		return res, err
	}
	// Over a limited link, lifeboat only (32 copies through the proxy would take over a minute
	// a round at this rate), alternating with one GET from the upstream over the link.
	overLink := func() error {
		fwd, err := startLinkForwarder(regAddr, fanOutLink)
		if err != nil {
			return err
		}
		_, direct, err := fetch("http://"+fwd.addr()+blobPath, size)
		fwd.close()
		if err != nil {
			return fmt.Errorf("GET from the upstream over the link: %w", err)
		}
		res.linkDirect = append(res.linkDirect, direct)
		return nil
	}
	lbOverLink := func() error {
		alone, _, _, err := fanOnce("lifeboat", 1, fanOutLink)
		if err != nil {
			return err
		}
		slow, up, _, err := fanOnce("lifeboat", fanOutClients, fanOutLink)
		if err != nil {
			return err
		}
		res.linkAlone, res.linkSlowLB, res.linkBytesLB = append(res.linkAlone, alone), append(res.linkSlowLB, slow), append(res.linkBytesLB, up)
		return nil
	}
	if err := alternate(fanRounds, lbOverLink, overLink); err != nil {
		return res, err
	}

	// 4: outage. Both cache the tag through one forwarder, which is then blackholed.
	fwd, err := startForwarder(regAddr)
	if err != nil {
		return res, err
	}
	defer fwd.close()
	lbDir, pxDir := fresh("lifeboat"), fresh("proxy")
	defer os.RemoveAll(lbDir)
	defer os.RemoveAll(pxDir)
	lb, lbAddr, err := startLifeboat(lbDir, lifeboat, fwd.addr())
	if err != nil {
		return res, err
	}
	defer lb.stop()
	px, pxAddr, err := startProxy(pxDir, tools, fwd.addr())
	if err != nil {
		return res, err
	}
	defer px.stop()
	tag := "/v2/library/anchor/manifests/1"
	for _, a := range []string{lbAddr, pxAddr} {
		if err := getManifest("http://" + a + tag); err != nil {
			return res, fmt.Errorf("cache the tag: %w", err)
		}
		if _, err := head("http://" + a + tag); err != nil {
			return res, fmt.Errorf("cache the tag: %w", err)
		}
	}
	fwd.blackhole()
	// One round, each party with its own budget: the first HEAD of each meets the outage fresh.
	outageOf := func(into *outage, url string) func() error {
		return func() error {
			octx, cancel := context.WithTimeout(ctx, outageBudget)
			defer cancel()
			*into = measureOutage(octx, url)
			return nil
		}
	}
	err = runRound(0, outageOf(&res.outLB, "http://"+lbAddr+tag), outageOf(&res.outPX, "http://"+pxAddr+tag))
	return res, err
}
