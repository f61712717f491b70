package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

// The cluster tier's failed paths against the cluster off: cold blobs fetched one after another
// by member R of three while its peers are unreachable, and while the first home of each blob is
// stopped, each against a lone lifeboat fetching as many cold blobs in the same rounds.

// failedBlobs cold blobs of failedBlobSize bytes a round, for each party.
const (
	failedBlobs    = 8
	failedBlobSize = 256 << 10
)

// failedPaths starts three members (R, H and a third) and a lone node. Each round, alternating,
// each party fetches failedBlobs cold blobs of its own one after another, each timed:
//   - the lone node (the cluster off: the baseline);
//   - R under `lifeboat outage start --mode blackhole --target peers`: gossip stays up, its
//     peer HTTP gets no answer. The first blob's lookup waits out the lookup timeout and trips
//     R's breaker on both peers (checked: lifeboat_peer_down 2); the next ones ask no peer;
//   - R with H stopped (SIGSTOP), blobs whose first home is H, fetched before memberlist
//     declares H dead (how many rounds it did anyway is counted); H is resumed after.
//
// Each cluster party starts once R's breaker holds no peer down and every member sees three
// alive, so that neither inherits the other's failure.
func failedPaths(ctx context.Context, base, bin, regAddr, key string, ips *loopbackIPs, res *clusterResults) error {
	names := []string{"r", "h", "o"}
	var nodes []*member
	defer func() {
		for _, m := range nodes {
			m.remove()
		}
	}()
	for i, n := range names {
		join := ""
		if i > 0 {
			join = nodes[0].gossip
		}
		m, err := startMember(filepath.Join(base, "failed-"+n), bin, regAddr, ips.next(), n, key, join)
		if err != nil {
			return err
		}
		nodes = append(nodes, m)
	}
	off, err := startMember(filepath.Join(base, "failed-off"), bin, regAddr, ips.next(), "", "", "")
	if err != nil {
		return err
	}
	defer off.remove()
	r, h := nodes[0], nodes[1]
	rng := rand.NewChaCha8([32]byte{21})
	repos := 0
	settled := func() error {
		if err := waitAlive(nodes); err != nil {
			return err
		}
		return waitMetric(r, "lifeboat_peer_down", "", "0", 30*time.Second, func(v float64) bool { return v == 0 })
	}
	admin := "--admin-socket=" + filepath.Join(r.dir, "a.sock")
	lbOutage := func(args ...string) error {
		if out, err := exec.CommandContext(ctx, bin, append(append([]string{"outage"}, args...), admin)...).CombinedOutput(); err != nil {
			return fmt.Errorf("lifeboat outage %s: %v\n%s", args[0], err, out)
		}
		return nil
	}
	// unreachable fetches blobs through R, its peers cut: the first must trip its breaker.
	unreachable := func(repo string, blobs []string) ([]time.Duration, error) {
		if err := settled(); err != nil {
			return nil, err
		}
		if err := lbOutage("start", "--mode", "blackhole", "--target", "peers"); err != nil {
			return nil, err
		}
		took, err := coldGets(r.mirror, repo, blobs[:1], "miss")
		if err == nil {
			if down, merr := r.metric("lifeboat_peer_down", ""); merr != nil || down != 2 {
				err = fmt.Errorf("after the first cold blob R holds %v peers down, want 2 (%v)", down, merr)
			}
		}
		if err == nil {
			var next []time.Duration
			next, err = coldGets(r.mirror, repo, blobs[1:], "miss")
			took = append(took, next...)
		}
		// Stopping the outage releases the requests it holds, the breaker's probes among them.
		if serr := lbOutage("stop"); err == nil {
			err = serr
		}
		return took, err
	}
	// stopped fetches blobs through R while H is stopped, and resumes H.
	stopped := func(repo string, blobs []string) ([]time.Duration, error) {
		if err := settled(); err != nil {
			return nil, err
		}
		if err := syscall.Kill(h.Pid(), syscall.SIGSTOP); err != nil {
			return nil, fmt.Errorf("SIGSTOP %s: %w", h.name, err)
		}
		defer syscall.Kill(h.Pid(), syscall.SIGCONT)
		took, err := coldGets(r.mirror, repo, blobs, "")
		if alive, merr := r.metric("lifeboat_cluster_members", `state="alive"`); merr == nil && int(alive) < len(nodes) {
			res.stoppedDeclaredDead++
		}
		return took, err
	}
	// party pushes a round's cold blobs (those keep accepts, any when nil), has measure fetch
	// them, and adds their latencies to into; an error comes with the logs of logs.
	party := func(into *[][]time.Duration, keep func(digest.Digest) bool, measure func(string, []string) ([]time.Duration, error), logs ...*member) func() error {
		return func() error {
			repos++
			repo := fmt.Sprintf("library/failed-%d", repos)
			blobs, err := pushColdBlobs(ctx, rng, regAddr, repo, failedBlobs, failedBlobSize, keep)
			if err != nil {
				return err
			}
			took, err := measure(repo, blobs)
			if err != nil {
				for _, m := range logs {
					err = fmt.Errorf("%w; %s's log ends:\n%s", err, m.name, tail(m.Log(), 3000))
				}
				return err
			}
			*into = append(*into, took)
			return nil
		}
	}
	homedOnH := func(d digest.Digest) bool { return cluster.Rendezvous(cluster.BlobKey(d), names, 1)[0] == h.name }
	return alternate(res.rounds,
		party(&res.coldOff, nil, func(repo string, blobs []string) ([]time.Duration, error) {
			return coldGets(off.mirror, repo, blobs, "miss")
		}, off),
		party(&res.coldUnreachable, nil, unreachable, r),
		party(&res.coldStopped, homedOnH, stopped, r, h))
}

// pushColdBlobs pushes random blobs of size bytes to repo, each one that keep accepts (any when
// keep is nil), until it has pushed n, and returns their digests in order.
func pushColdBlobs(ctx context.Context, rng *rand.ChaCha8, regAddr, repo string, n int, size int64, keep func(digest.Digest) bool) ([]string, error) {
	ref, err := name.NewRepository(regAddr+"/"+repo, name.Insecure)
	if err != nil {
		return nil, err
	}
	var blobs []string
	for len(blobs) < n {
		b := make([]byte, size)
		rng.Read(b)
		d := digest.FromBytes(b)
		if keep != nil && !keep(d) {
			continue
		}
		if err := remote.WriteLayer(ref, static.NewLayer(b, types.OCILayer), remote.WithContext(ctx)); err != nil {
			return nil, err
		}
		blobs = append(blobs, d.String())
	}
	return blobs, nil
}

// coldGets GETs each of blobs (of failedBlobSize bytes) of repo through mirror, one after
// another, and returns how long each took; when want is set, each answer must carry
// X-Lifeboat-Cache: want.
func coldGets(mirror, repo string, blobs []string, want string) ([]time.Duration, error) {
	var took []time.Duration
	for _, d := range blobs {
		t, err := timed(func() error { return getBlob(mirror, repo, d, failedBlobSize, want) })
		if err != nil {
			return nil, err
		}
		took = append(took, t)
	}
	return took, nil
}
