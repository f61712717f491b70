package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobResults holds the single-client GETs of one blob: a cold miss then a warm hit on a fresh
// lifeboat and on a fresh proxy each round, alternating with a GET from the upstream direct.
type blobResults struct {
	size   int64
	rounds int

	lb, px          partyGets
	direct, ttfbDir []time.Duration // GETs from the upstream
}

// partyGets are one party's GETs of a blob over the rounds.
type partyGets struct {
	ttfb, cold, warm []time.Duration
	// CPU seconds per GiB the serving process used: for a cold miss from the GET to the blob's
	// commit, for a warm hit over the GET.
	cpuCold, cpuWarm []float64
}

// blobBench times, over rounds, a cold miss then a warm hit of the blob dgst of repo on a fresh
// lifeboat and on a fresh proxy, and a GET from the upstream direct, the three alternating (see
// order), with the CPU time each serving process used. fresh names a new directory for an instance of kind.
func blobBench(fresh func(kind string) string, tools, lifeboat, regAddr, repo string, dgst v1.Hash, size int64, rounds int) (blobResults, error) {
	res := blobResults{size: size, rounds: rounds}
	blobPath := "/v2/" + repo + "/blobs/" + dgst.String()
	// round starts a fresh instance of kind, times a cold miss then a warm hit through it
	// into gets; committed waits until the instance has stored the blob, so that the warm GET
	// is a hit.
	round := func(kind string, gets *partyGets, start func(dir string) (*daemon, string, error), committed func(dir, url string) error) func() error {
		return func() error {
			dir := fresh(kind)
			defer os.RemoveAll(dir)
			srv, addr, err := start(dir)
			if err != nil {
				return err
			}
			defer srv.stop()
			url := "http://" + addr + blobPath
			var t, d time.Duration
			cpu, err := cpuPerGiB(srv.Pid(), size, func() error {
				if t, d, err = fetch(url, size); err != nil {
					return err
				}
				return committed(dir, url)
			})
			if err != nil {
				return fmt.Errorf("%s cold: %w", kind, err)
			}
			gets.ttfb, gets.cold, gets.cpuCold = append(gets.ttfb, t), append(gets.cold, d), append(gets.cpuCold, cpu)
			cpu, err = cpuPerGiB(srv.Pid(), size, func() error {
				_, d, err = fetch(url, size)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s warm: %w", kind, err)
			}
			gets.warm, gets.cpuWarm = append(gets.warm, d), append(gets.cpuWarm, cpu)
			return nil
		}
	}
	lbRound := round("lifeboat", &res.lb,
		func(dir string) (*daemon, string, error) { return startLifeboat(dir, lifeboat, regAddr) },
		func(_, url string) error { return waitCached(url) })
	pxRound := round("proxy", &res.px,
		func(dir string) (*daemon, string, error) { return startProxy(dir, tools, regAddr) },
		func(dir, _ string) error {
			// The proxy commits the blob after the last byte is sent.
			for deadline := time.Now().Add(30 * time.Second); !proxyHasBlob(dir, repo, dgst.Hex); {
				if time.Now().After(deadline) {
					return errors.New("the proxy did not store the blob within 30 s of serving it")
				}
				time.Sleep(10 * time.Millisecond)
			}
			return nil
		})
	directRound := func() error {
		t, d, err := fetch("http://"+regAddr+blobPath, size)
		if err != nil {
			return err
		}
		res.ttfbDir, res.direct = append(res.ttfbDir, t), append(res.direct, d)
		return nil
	}
	return res, alternate(rounds, lbRound, pxRound, directRound)
}
