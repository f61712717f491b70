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
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/containerd/log"
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
func (n *Node) Announce(recs ...Record) { n.announcer.announce(recs) }

// announcer sends this node's records to their homes: what Announce queues, in batches every
// AnnounceInterval, and everything Config.Local lists, every RefreshInterval and a little
// after a membership change.
type announcer struct {
	cfg    Config
	log    *log.Entry
	view   *view // the alive members, whose changes it waits for
	home   *home // this node, when it is a record's home
	client *http.Client
	queue  chan Record // Announce's records, waiting for the next batch
	// dropped counts the records the queue had no room for, sent those given to their homes.
	dropped, sent atomic.Int64
}

func newAnnouncer(cfg Config, log *log.Entry, view *view, home *home, client *http.Client) *announcer {
	return &announcer{cfg: cfg, log: log, view: view, home: home, client: client,
		queue: make(chan Record, announceQueue)}
}

func (a *announcer) announce(recs []Record) {
	for _, r := range recs {
		select {
		case a.queue <- r:
		default:
			a.dropped.Add(1)
		}
	}
}

// report adds what the announcer counts to s.
func (a *announcer) report(s *Stats) {
	s.AnnouncedRecords = a.sent.Load()
	s.AnnounceDropped = a.dropped.Load()
}

// announceLoop sends the queued records to their homes every AnnounceInterval.
func (a *announcer) announceLoop(ctx context.Context) {
	every(ctx, a.cfg.AnnounceInterval, func() { a.sendQueued(ctx) })
}

// sendQueued sends the records queued so far to their homes.
func (a *announcer) sendQueued(ctx context.Context) {
	queued := len(a.queue)
	if queued == 0 {
		return
	}
	b := a.newBatcher(ctx, a.view.alive())
	for range queued {
		b.add(<-a.queue)
	}
	b.flush()
}

// refreshLoop announces everything this node holds (Config.Local) at once and every
// RefreshInterval, and, a little after a membership change, what the homes that changed are
// missing.
func (a *announcer) refreshLoop(ctx context.Context) {
	refresh := time.NewTicker(a.cfg.RefreshInterval)
	defer refresh.Stop()
	var rehome <-chan time.Time
	prev := a.pass(ctx, nil)
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.view.changes():
			if rehome == nil {
				rehome = time.After(a.cfg.rehomeDelay)
			}
		case <-rehome:
			rehome = nil
			prev = a.pass(ctx, prev)
		case <-refresh.C:
			prev = a.pass(ctx, nil)
		}
	}
}

// pass announces this node's records (Config.Local) to their homes among the alive members;
// with prev (the generation of the last pass), only to the homes each record did not have in
// prev, or that restarted since. It returns the generation it announced to.
func (a *announcer) pass(ctx context.Context, prev generation) generation {
	alive, cur := a.view.generation()
	if a.cfg.Local == nil || (prev != nil && maps.Equal(prev, cur)) {
		return cur
	}
	b := a.newBatcher(ctx, alive)
	if prev != nil {
		b.prev, b.prevNames, b.cur = prev, hashNames(slices.Collect(maps.Keys(prev))), cur
	}
	err := a.cfg.Local(ctx, func(r Record) bool {
		b.add(r)
		return ctx.Err() == nil
	})
	b.flush()
	l := a.log.WithField("records", b.added).WithField("members", len(cur))
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
	a     *announcer
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

func (a *announcer) newBatcher(ctx context.Context, alive map[string]Member) *batcher {
	b := &batcher{a: a, ctx: ctx, alive: alive, names: hashNames(slices.Collect(maps.Keys(alive))),
		batches: map[string][]Record{}, bytes: map[string]int{}}
	b.sends.SetLimit(announceSends)
	return b
}

func (b *batcher) add(r Record) {
	if validRecord(r) != nil {
		return // homes would refuse the whole batch for it
	}
	if !keyShapeOK(r) {
		return // homes would refuse it
	}
	kh := xxhash.Sum64String(r.Key)
	var old []weighted
	if b.prev != nil {
		old = rank(kh, b.prevNames, b.a.cfg.Replicas)
	}
	for _, h := range rank(kh, b.names, b.a.cfg.Replicas) {
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
		b.a.sendBatch(b.ctx, m, recs)
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
func (a *announcer) sendBatch(ctx context.Context, home Member, recs []Record) {
	if home.Self {
		a.home.put(a.cfg.NodeName, recs, time.Now())
		a.sent.Add(int64(len(recs)))
		return
	}
	if err := a.postAnnounce(ctx, home, recs); err != nil {
		if ctx.Err() == nil {
			a.log.WithError(err).WithField("home", home.Name).WithField("records", len(recs)).
				Warn("cluster: cannot announce records to their home; the next refresh will")
		}
		return
	}
	a.sent.Add(int64(len(recs)))
}

func (a *announcer) postAnnounce(ctx context.Context, home Member, recs []Record) error {
	body, err := json.Marshal(announceRequest{Records: recs})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+home.PeerAddr+PathAnnounce, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
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
