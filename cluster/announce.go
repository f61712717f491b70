package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sync/errgroup"
)

const (
	// maxBatchBytes is the most an announce batch is let to grow to (by recordSize), below
	// maxAnnounceBody so that JSON's escapes fit too.
	maxBatchBytes = maxAnnounceBody * 3 / 4
	// announceSends is how many announce requests one batcher has in flight.
	announceSends = 4
)

// Announce queues records for their homes; they go out within AnnounceInterval. It never
// blocks: past a bounded queue, records wait for the next full refresh.
func (n *Node) Announce(recs ...Record) {
	for _, r := range recs {
		select {
		case n.queue <- r:
		default:
			n.stats.announceDropped.Add(1)
		}
	}
}

// announceLoop sends the queued records to their homes every AnnounceInterval.
func (n *Node) announceLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.AnnounceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		queued := len(n.queue)
		if queued == 0 {
			continue
		}
		b := n.newBatcher(ctx, n.view.alive())
		for range queued {
			b.add(<-n.queue)
		}
		b.flush()
	}
}

// refreshLoop announces everything this node holds (Config.Local) at once and every
// RefreshInterval, and, a little after a membership change, what the homes that changed are
// missing.
func (n *Node) refreshLoop(ctx context.Context) {
	refresh := time.NewTicker(n.cfg.RefreshInterval)
	defer refresh.Stop()
	var rehome <-chan time.Time
	prev := n.pass(ctx, nil)
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.view.changes():
			if rehome == nil {
				rehome = time.After(n.cfg.rehomeDelay)
			}
		case <-rehome:
			rehome = nil
			prev = n.pass(ctx, prev)
		case <-refresh.C:
			prev = n.pass(ctx, nil)
		}
	}
}

// pass announces this node's records (Config.Local) to their homes among the alive members;
// with prev (the generation of the last pass), only to the homes each record did not have in
// prev, or that restarted since. It returns the generation it announced to.
func (n *Node) pass(ctx context.Context, prev generation) generation {
	alive, cur := n.view.generation()
	if n.cfg.Local == nil || (prev != nil && maps.Equal(prev, cur)) {
		return cur
	}
	b := n.newBatcher(ctx, alive)
	if prev != nil {
		b.prev, b.prevNames, b.cur = prev, hashNames(slices.Collect(maps.Keys(prev))), cur
	}
	err := n.cfg.Local(ctx, func(r Record) bool {
		b.add(r)
		return ctx.Err() == nil
	})
	b.flush()
	l := n.log.WithField("records", b.added).WithField("members", len(cur))
	if err != nil && ctx.Err() == nil {
		l.WithError(err).Warn("cluster: cannot list this node's records to announce them")
		return cur
	}
	if prev == nil {
		l.Debug("cluster: announced everything this node holds")
	} else {
		l.Debug("cluster: announced this node's records to their new homes")
	}
	return cur
}

func hashNames(names []string) []hashedName {
	hs := make([]hashedName, len(names))
	for i, name := range names {
		hs[i] = hashName(name)
	}
	return hs
}

// batcher groups records by home and sends each home a batch when it is full and at flush.
type batcher struct {
	n     *Node
	ctx   context.Context
	alive map[string]Member
	names []hashedName
	// prev, when not nil, is the generation of an earlier pass (prevNames its names) and cur
	// the current one: a record goes only to the homes it did not have in prev, or that
	// restarted since.
	prev, cur generation
	prevNames []hashedName
	batches   map[string][]Record
	bytes     map[string]int
	sends     errgroup.Group
	added     int
}

func (n *Node) newBatcher(ctx context.Context, alive map[string]Member) *batcher {
	b := &batcher{n: n, ctx: ctx, alive: alive, names: hashNames(slices.Collect(maps.Keys(alive))),
		batches: map[string][]Record{}, bytes: map[string]int{}}
	b.sends.SetLimit(announceSends)
	return b
}

func (b *batcher) add(r Record) {
	if validRecord(r) != nil {
		return // homes would refuse the whole batch for it
	}
	kh := xxhash.Sum64String(r.Key)
	var old []weighted
	if b.prev != nil {
		old = rank(kh, b.prevNames, b.n.cfg.Replicas)
	}
	for _, h := range rank(kh, b.names, b.n.cfg.Replicas) {
		if b.prev != nil && b.prev[h.name] == b.cur[h.name] &&
			slices.ContainsFunc(old, func(o weighted) bool { return o.name == h.name }) {
			continue
		}
		b.added++
		b.batches[h.name] = append(b.batches[h.name], r)
		b.bytes[h.name] += recordSize(r)
		if len(b.batches[h.name]) >= maxAnnounceRecords || b.bytes[h.name] >= maxBatchBytes {
			b.send(h.name)
		}
	}
}

// send sends home h its batch (waiting while announceSends batches are in flight).
func (b *batcher) send(h string) {
	recs := b.batches[h]
	delete(b.batches, h)
	delete(b.bytes, h)
	m := b.alive[h]
	b.sends.Go(func() error {
		b.n.sendBatch(b.ctx, m, recs)
		return nil
	})
}

// flush sends what is left and waits for every send.
func (b *batcher) flush() {
	for h := range b.batches {
		b.send(h)
	}
	_ = b.sends.Wait()
}

// sendBatch gives home recs: into this node's own index when it is the home, else in one
// announce request. A failed request is dropped: the next full refresh repairs it.
func (n *Node) sendBatch(ctx context.Context, home Member, recs []Record) {
	if home.Self {
		n.home.put(n.cfg.NodeName, recs, time.Now())
		n.stats.announced.Add(int64(len(recs)))
		return
	}
	if err := n.postAnnounce(ctx, home, recs); err != nil {
		if ctx.Err() == nil {
			n.log.WithError(err).WithField("home", home.Name).WithField("records", len(recs)).
				Warn("cluster: cannot announce records to their home; the next refresh will")
		}
		return
	}
	n.stats.announced.Add(int64(len(recs)))
}

func (n *Node) postAnnounce(ctx context.Context, home Member, recs []Record) error {
	body, err := json.Marshal(announceRequest{Records: recs})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+home.PeerAddr+PathAnnounce, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s answered %s: %s", home.PeerAddr, resp.Status, bytes.TrimSpace(msg))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	return nil
}
