package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lifeboat-dev/lifeboat/internal/oci"
)

// pushRandom pushes a random image of layers × layerSize to the registry as repo:1 and returns
// its config and layer digests with their sizes.
func pushRandom(ctx context.Context, regAddr, repo string, layers int, layerSize int64) (map[string]int64, error) {
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		return nil, err
	}
	ref, err := name.ParseReference(regAddr+"/"+repo+":1", name.Insecure)
	if err != nil {
		return nil, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	blobs := map[string]int64{m.Config.Digest.String(): m.Config.Size}
	for _, l := range m.Layers {
		blobs[l.Digest.String()] = l.Size
	}
	return blobs, nil
}

// getBlobs GETs every blob of repo through the mirror at once; when want is set, every answer
// must carry X-Lifeboat-Cache: want.
func getBlobs(mirror, repo string, blobs map[string]int64, want string) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(blobs))
	for d, size := range blobs {
		wg.Go(func() {
			if err := getBlob(mirror, repo, d, size, want); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// getBlob GETs blob d of size bytes of repo through the mirror and reads it all; when want is
// set, the answer must carry X-Lifeboat-Cache: want.
func getBlob(mirror, repo, d string, size int64, want string) error {
	url := "http://" + mirror + "/v2/" + repo + "/blobs/" + d + "?ns=docker.io"
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if got := resp.Header.Get(oci.HeaderCache); want != "" && got != want {
		return fmt.Errorf("GET %s: %s %q, want %q", url, oci.HeaderCache, got, want)
	}
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, make([]byte, 1<<20))
	if err == nil && n != size {
		err = fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
	}
	return err
}

// peerVsRegistry: a holder fetches an image of peerSize bytes in four layers; then each round a
// fresh member (empty root, joined, seeing the holder alive) fetches every blob from the holder,
// alternating with a fresh lone node fetching them from the registry. Both fill their caches.
func peerVsRegistry(ctx context.Context, base, bin, regAddr, key string, ips *loopbackIPs, peerSize int64, res *clusterResults) error {
	const repo = "library/peerbench"
	blobs, err := pushRandom(ctx, regAddr, repo, 4, peerSize/4)
	if err != nil {
		return err
	}
	for _, s := range blobs {
		res.peerBytes += s
	}
	holder, err := startMember(filepath.Join(base, "holder"), bin, regAddr, ips.next(), "holder", key, "")
	if err != nil {
		return err
	}
	defer holder.remove()
	if err := getBlobs(holder.mirror, repo, blobs, ""); err != nil {
		return err
	}
	// The holder announces what it cached in batches: a fresh node that looked before the batch
	// went out would find no holder and fetch from the registry.
	if err := waitHomed(holder, len(blobs)); err != nil {
		return err
	}
	fresh := 0
	return alternate(res.rounds,
		func() error {
			fresh++
			m, err := startMember(filepath.Join(base, fmt.Sprintf("fresh-%d", fresh)), bin, regAddr, ips.next(), fmt.Sprintf("fresh-%d", fresh), key, holder.gossip)
			if err != nil {
				return err
			}
			defer m.remove()
			if err := waitAlive([]*member{holder, m}); err != nil {
				return err
			}
			err = timedInto(&res.fromPeer, func() error { return getBlobs(m.mirror, repo, blobs, "peer") })()
			if err != nil {
				return fmt.Errorf("%w; %s's log ends:\n%s\nthe holder's log ends:\n%s", err, m.name, tail(m.Log(), 3000), tail(holder.Log(), 3000))
			}
			return nil
		},
		func() error {
			fresh++
			m, err := startMember(filepath.Join(base, fmt.Sprintf("fresh-%d", fresh)), bin, regAddr, ips.next(), "", "", "")
			if err != nil {
				return err
			}
			defer m.remove()
			return timedInto(&res.fromRegistry, func() error { return getBlobs(m.mirror, repo, blobs, "miss") })()
		})
}

// coalesceBench starts coalesceNodes cluster members and as many lone nodes; each round both
// groups pull a cold image of their own, every node every blob at once, alternating, and the
// registry's access log counts the GETs of each blob.
func coalesceBench(ctx context.Context, base, bin string, reg *daemon, regAddr, key string, ips *loopbackIPs, res *clusterResults) error {
	var members, alone []*member
	defer func() {
		for _, m := range append(members, alone...) {
			m.remove()
		}
	}()
	for i := range res.coalesceNodes {
		join := ""
		if i > 0 {
			join = members[0].gossip
		}
		m, err := startMember(filepath.Join(base, fmt.Sprintf("member-%d", i)), bin, regAddr, ips.next(), fmt.Sprintf("member-%d", i), key, join)
		if err != nil {
			return err
		}
		members = append(members, m)
		a, err := startMember(filepath.Join(base, fmt.Sprintf("alone-%d", i)), bin, regAddr, ips.next(), "", "", "")
		if err != nil {
			return err
		}
		alone = append(alone, a)
	}
	if err := waitAlive(members); err != nil {
		return err
	}
	const layers, layerSize = 3, 8 << 20
	res.coalesceBlobs = layers + 1
	image := 0
	pull := func(nodes []*member, gets *[]float64, wall *[]time.Duration) func() error {
		return func() error {
			image++
			repo := fmt.Sprintf("library/cold-%d", image)
			blobs, err := pushRandom(ctx, regAddr, repo, layers, layerSize)
			if err != nil {
				return err
			}
			var wg sync.WaitGroup
			errs := make(chan error, len(nodes))
			start := time.Now()
			for _, m := range nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := getBlobs(m.mirror, repo, blobs, ""); err != nil {
						errs <- fmt.Errorf("%w; its log ends:\n%s", err, tail(m.Log(), 3000))
					}
				}()
			}
			wg.Wait()
			*wall = append(*wall, time.Since(start))
			close(errs)
			if err := <-errs; err != nil {
				return err
			}
			log := reg.Log()
			n := 0
			for d := range blobs {
				n += strings.Count(log, `"GET /v2/`+repo+`/blobs/`+d)
			}
			*gets = append(*gets, float64(n)/float64(len(blobs)))
			return nil
		}
	}
	return alternate(res.rounds,
		pull(members, &res.getsCluster, &res.wallCluster),
		pull(alone, &res.getsAlone, &res.wallAlone))
}

// tail is the last n bytes of s.
func tail(s string, n int) string { return s[max(0, len(s)-n):] }
