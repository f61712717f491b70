// Package clustersim simulates the routing layer of a cluster in process, for the figures of
// docs/cluster.md ("Scale") and the bench (hack/bench): it homes keys with the nodes' own
// ranking (cluster.Ranking), feeds real cluster.Indexes, and counts the announcements. It
// sends nothing, and no lifeboat runs it.
package clustersim

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

// Options describes a simulated cluster for Simulate: its members, the images they hold,
// and the rates that drive announcements. Zero fields get the defaults named beside them.
//
// The catalogue is Images images, each a tag, a manifest, a config and LayersPerImage layers,
// BaseLayers of which are those of one of Bases base images (so base layers are shared by
// many images). Each member holds ImagesPerNode distinct images drawn from a Zipf
// distribution (exponent Zipf) over the catalogue, and so for every key of them a record.
type Options struct {
	Members  int // required
	Replicas int // 3

	Images         int     // catalogue size, 10,000
	Bases          int     // base images, 100
	ImagesPerNode  int     // 200
	LayersPerImage int     // 6: with the manifest and the config, 8 blobs per image
	BaseLayers     int     // 2 of the layers come from the image's base
	Zipf           float64 // popularity exponent, 1.1 (must be > 1)

	// PullRate is how many images the whole cluster pulls per second (1), each new to the
	// node that pulls it, so that all its keys are announced.
	PullRate float64
	// AnnounceInterval (250 ms) batches announcements: one message per home per interval.
	// Every RefreshInterval (5 min) each member announces all its records again.
	AnnounceInterval, RefreshInterval time.Duration
	// IndexSample is how many homes get a real Index, for the memory figures (50).
	IndexSample int
	Seed        uint64
}

func (o *Options) defaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Replicas, 3)
	def(&o.Images, 10_000)
	def(&o.Bases, 100)
	def(&o.ImagesPerNode, 200)
	def(&o.LayersPerImage, 6)
	def(&o.BaseLayers, 2)
	def(&o.IndexSample, 50)
	o.BaseLayers = min(o.BaseLayers, o.LayersPerImage)
	o.ImagesPerNode = min(o.ImagesPerNode, o.Images)
	if o.Zipf <= 1 {
		o.Zipf = 1.1
	}
	if o.PullRate <= 0 {
		o.PullRate = 1
	}
	if o.AnnounceInterval <= 0 {
		o.AnnounceInterval = 250 * time.Millisecond
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = 5 * time.Minute
	}
}

// Spread is the minimum, median and maximum of a figure over members (or keys).
type Spread struct{ Min, Median, Max float64 }

func spread[T int | int64 | float64](vs []T) Spread {
	if len(vs) == 0 {
		return Spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return Spread{Min: float64(s[0]), Median: float64(s[len(s)/2]), Max: float64(s[len(s)-1])}
}

// Report is what Simulate found.
type Report struct {
	Options Options // with defaults filled in
	// Keys is how many distinct keys some member holds; Records how many (member, key) pairs.
	Keys, Records int
	// HoldersPerKey is how many members hold a key.
	HoldersPerKey Spread
	// KeysPerHome and RecordsPerHome: what each member's index holds as a home.
	KeysPerHome, RecordsPerHome Spread
	// IndexBytesPerHome is Index.Size's estimate over the IndexSample homes that got a real
	// Index fed with every record homed on them.
	IndexBytesPerHome Spread
	// MessagesPerPull is how many announce batches one pull sends: the distinct homes of the
	// image's keys (one batch per home within AnnounceInterval).
	MessagesPerPull float64
	// RefreshMessages is how many batches one member sends per full refresh (one per distinct
	// home of its records), RefreshRecords how many records.
	RefreshMessages, RefreshRecords Spread
	// Per member and second, averaged (pulls at PullRate cluster-wide, refreshes every
	// RefreshInterval): announce messages and records sent (received are the same on average:
	// see ReceivedMessagesPerSec for the spread), announce bytes (JSON, uncompressed), and
	// lookups (one per blob of a pulled image, before hedging).
	MessagesPerSec, RecordsPerSec, BytesPerSec, LookupsPerSec float64
	// ReceivedMessagesPerSec is, per home, the announce messages it receives per second.
	ReceivedMessagesPerSec Spread
	// One member leaving, and one joining: the keys whose homes change, and the records their
	// new homes must learn (every holder's record of those keys).
	LeaveKeysMoved, LeaveRecordsMoved, JoinKeysMoved, JoinRecordsMoved int
	// Elapsed is how long the simulation took.
	Elapsed time.Duration
}

// Simulate runs the routing layer of a cluster in process: it homes every key with
// cluster.Rendezvous' ranking over opts.Members virtual members, feeds a sample of homes'
// Indexes with the records homed on them, counts the announce batches of pulls and full
// refreshes, and counts the keys that move when a member leaves and when one joins. It sends
// nothing.
func Simulate(opts Options) Report {
	start := time.Now()
	opts.defaults()
	rep := Report{Options: opts}
	if opts.Members <= 0 {
		return rep
	}
	r := rand.New(rand.NewPCG(opts.Seed, 0x11feb0a7))
	n := opts.Members

	members := make([]string, n)
	memberIndex := make(map[string]int32, n)
	for i := range members {
		members[i] = fmt.Sprintf("node-%05d", i)
		memberIndex[members[i]] = int32(i)
	}
	ranking := cluster.NewRanking(members)

	// The catalogue's keys, numbered: each image's tag, manifest, config and own layers, then
	// the bases' layers.
	ownLayers := opts.LayersPerImage - opts.BaseLayers
	perImage := 3 + ownLayers
	baseKey0 := opts.Images * perImage
	keys := make([]cluster.Record, baseKey0+opts.Bases*opts.BaseLayers)
	var b [9]byte
	for k := range keys {
		binary.BigEndian.PutUint64(b[1:], uint64(k)+opts.Seed<<40)
		keys[k] = cluster.Record{Key: cluster.BlobKey(digest.FromBytes(b[:]))}
		if k < baseKey0 && k%perImage == 0 {
			img := k / perImage
			keys[k] = cluster.Record{
				Key:    cluster.TagKey("registry.example.com", fmt.Sprintf("team-%d/app-%d", img%97, img), "v1.2.3"),
				Digest: digest.FromBytes(b[:]),
				Date:   time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
			}
		}
	}
	baseOf := make([]int, opts.Images)
	baseZipf := rand.NewZipf(r, opts.Zipf, 1, uint64(opts.Bases-1))
	for i := range baseOf {
		baseOf[i] = int(baseZipf.Uint64())
	}
	imageKeys := func(img int, yield func(k int)) {
		for j := range perImage {
			yield(img*perImage + j)
		}
		for j := range opts.BaseLayers {
			yield(baseKey0 + baseOf[img]*opts.BaseLayers + j)
		}
	}

	// What each member holds: ImagesPerNode distinct images by popularity.
	imageZipf := rand.NewZipf(r, opts.Zipf, 1, uint64(opts.Images-1))
	holds := make([][]int32, n) // member → its keys
	holders := make([]int32, len(keys))
	stamp := make([]int32, len(keys)) // key → last member that took it, +1
	for m := range holds {
		images := map[int]bool{}
		for draws := 0; len(images) < opts.ImagesPerNode; draws++ {
			if draws < 100*opts.ImagesPerNode {
				images[int(imageZipf.Uint64())] = true
			} else { // the popular ones are all taken: fill up with any
				images[r.IntN(opts.Images)] = true
			}
		}
		for img := range images {
			imageKeys(img, func(k int) {
				if stamp[k] != int32(m+1) {
					stamp[k] = int32(m + 1)
					holds[m] = append(holds[m], int32(k))
					holders[k]++
				}
			})
		}
	}

	// Home every held key, keeping the lowest-ranked home for the join.
	homes := make([][]int32, len(keys))
	last := make([]string, len(keys))
	var holderCounts []int
	for k := range keys {
		if holders[k] == 0 {
			continue
		}
		rep.Keys++
		rep.Records += int(holders[k])
		holderCounts = append(holderCounts, int(holders[k]))
		top := ranking.Top(keys[k].Key, opts.Replicas)
		for _, name := range top {
			homes[k] = append(homes[k], memberIndex[name])
		}
		last[k] = top[len(top)-1]
	}
	rep.HoldersPerKey = spread(holderCounts)

	// What each home indexes; a sample of homes gets a real Index.
	keysPerHome := make([]int, n)
	recordsPerHome := make([]int, n)
	for k, hs := range homes {
		for _, h := range hs {
			keysPerHome[h]++
			recordsPerHome[h] += int(holders[k])
		}
	}
	rep.KeysPerHome, rep.RecordsPerHome = spread(keysPerHome), spread(recordsPerHome)

	sample := make(map[int32]int, opts.IndexSample) // home → slot
	for _, h := range r.Perm(n)[:min(n, opts.IndexSample)] {
		sample[int32(h)] = len(sample)
	}
	indexes := make([]*cluster.Index, len(sample))
	for i := range indexes {
		indexes[i] = cluster.NewIndex(0, 3*opts.RefreshInterval)
	}
	pending := make([][]cluster.Record, len(sample))
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

	// Full refresh: one batch per member per distinct home of its records.
	recBytes := make([]int, len(keys))
	for k := range keys {
		if holders[k] > 0 {
			js, _ := json.Marshal(keys[k])
			recBytes[k] = len(js) + 1 // and a comma
		}
	}
	homeStamp := make([]int32, n)
	refreshMessages := make([]int, n)
	refreshRecords := make([]int, n)
	received := make([]int, n)
	var refreshBytes int64
	for m, ks := range holds {
		for _, k := range ks {
			refreshBytes += int64(opts.Replicas * recBytes[k])
			for _, h := range homes[k] {
				refreshRecords[m]++
				if homeStamp[h] != int32(m+1) {
					homeStamp[h] = int32(m + 1)
					refreshMessages[m]++
					received[h]++
				}
				if slot, ok := sample[h]; ok {
					pending[slot] = append(pending[slot], keys[k])
				}
			}
		}
		for slot, recs := range pending {
			if len(recs) > 0 {
				indexes[slot].Put(members[m], recs, now)
				pending[slot] = recs[:0]
			}
		}
	}
	var indexBytes []int64
	for _, x := range indexes {
		_, _, bytes := x.Size()
		indexBytes = append(indexBytes, bytes)
	}
	rep.IndexBytesPerHome = spread(indexBytes)
	rep.RefreshMessages, rep.RefreshRecords = spread(refreshMessages), spread(refreshRecords)

	// Pulls: the batches of one image's announcement, over a sample of images by popularity.
	const pulls = 2000
	var pullMessages, pullRecords, pullBytes, pullLookups int
	for range pulls {
		seen := map[int32]bool{}
		imageKeys(int(imageZipf.Uint64()), func(k int) {
			if holders[k] == 0 { // held by nobody yet: home it now
				for _, name := range ranking.Top(keys[k].Key, opts.Replicas) {
					homes[k] = append(homes[k], memberIndex[name])
				}
				holders[k] = -1
				js, _ := json.Marshal(keys[k])
				recBytes[k] = len(js) + 1
			}
			if keys[k].Digest == "" {
				pullLookups++
			}
			for _, h := range homes[k] {
				seen[h] = true
				pullRecords++
				pullBytes += recBytes[k]
			}
		})
		pullMessages += len(seen)
	}
	rep.MessagesPerPull = float64(pullMessages) / pulls
	refreshSecs := opts.RefreshInterval.Seconds()
	perMember := opts.PullRate / pulls / float64(n)
	var refreshMsgTotal, refreshRecTotal int
	for m := range n {
		refreshMsgTotal += refreshMessages[m]
		refreshRecTotal += refreshRecords[m]
	}
	rep.MessagesPerSec = float64(pullMessages)*perMember + float64(refreshMsgTotal)/float64(n)/refreshSecs
	rep.RecordsPerSec = float64(pullRecords)*perMember + float64(refreshRecTotal)/float64(n)/refreshSecs
	rep.BytesPerSec = float64(pullBytes)*perMember + float64(refreshBytes)/float64(n)/refreshSecs
	rep.LookupsPerSec = float64(pullLookups) * perMember
	receivedPerSec := make([]float64, n)
	for h := range n {
		receivedPerSec[h] = float64(received[h])/refreshSecs + float64(pullMessages)*perMember
	}
	rep.ReceivedMessagesPerSec = spread(receivedPerSec)

	// One member leaves: the keys it was a home of move, and only those; one joins: it takes
	// the keys it outranks the lowest home of.
	leaver := int32(r.IntN(n))
	const joiner = "node-joining"
	for k, hs := range homes {
		if holders[k] <= 0 {
			continue
		}
		if slices.Contains(hs, leaver) {
			rep.LeaveKeysMoved++
			rep.LeaveRecordsMoved += int(holders[k])
		}
		if len(hs) < opts.Replicas || cluster.Rendezvous(keys[k].Key, []string{last[k], joiner}, 1)[0] == joiner {
			rep.JoinKeysMoved++
			rep.JoinRecordsMoved += int(holders[k])
		}
	}
	rep.Elapsed = time.Since(start)
	return rep
}

// Table renders reports as a Markdown table, one column per report.
func Table(reps []Report) string {
	var sb strings.Builder
	row := func(name string, f func(Report) string) {
		sb.WriteString("| " + name + " |")
		for _, rep := range reps {
			sb.WriteString(" " + f(rep) + " |")
		}
		sb.WriteString("\n")
	}
	num := func(v float64) string {
		switch {
		case v >= 100:
			return fmt.Sprintf("%.0f", v)
		case v >= 10:
			return fmt.Sprintf("%.1f", v)
		default:
			return fmt.Sprintf("%.2f", v)
		}
	}
	bytes := func(v float64) string {
		switch {
		case v >= 1<<20:
			return fmt.Sprintf("%.1f MiB", v/(1<<20))
		case v >= 1<<10:
			return fmt.Sprintf("%.0f KiB", v/(1<<10))
		default:
			return fmt.Sprintf("%.0f B", v)
		}
	}
	sp := func(s Spread, f func(float64) string) string {
		return f(s.Min) + " / " + f(s.Median) + " / " + f(s.Max)
	}
	pct := func(part, whole int) string {
		return fmt.Sprintf("%d (%.2f%%)", part, 100*float64(part)/float64(max(whole, 1)))
	}
	row("members", func(r Report) string { return fmt.Sprint(r.Options.Members) })
	sb.WriteString("|---|")
	for range reps {
		sb.WriteString("---|")
	}
	sb.WriteString("\n")
	row("keys held in the cluster", func(r Report) string { return fmt.Sprint(r.Keys) })
	row("records (member, key)", func(r Report) string { return fmt.Sprint(r.Records) })
	row("holders per key, min / median / max", func(r Report) string { return sp(r.HoldersPerKey, num) })
	row("keys per home, min / median / max", func(r Report) string { return sp(r.KeysPerHome, num) })
	row("records per home, min / median / max", func(r Report) string { return sp(r.RecordsPerHome, num) })
	row("index memory per home (Index.Size), min / median / max", func(r Report) string { return sp(r.IndexBytesPerHome, bytes) })
	row("announce batches per pull", func(r Report) string { return num(r.MessagesPerPull) })
	row("batches per full refresh, per member, min / median / max", func(r Report) string { return sp(r.RefreshMessages, num) })
	row("announce messages/s sent per member", func(r Report) string { return num(r.MessagesPerSec) })
	row("announce messages/s received per home, min / median / max", func(r Report) string { return sp(r.ReceivedMessagesPerSec, num) })
	row("announce records/s per member", func(r Report) string { return num(r.RecordsPerSec) })
	row("announce bytes/s per member (JSON)", func(r Report) string { return bytes(r.BytesPerSec) + "/s" })
	row("lookups/s per member (before hedging)", func(r Report) string { return fmt.Sprintf("%.2g", r.LookupsPerSec) })
	row("keys moved when one member leaves", func(r Report) string { return pct(r.LeaveKeysMoved, r.Keys) })
	row("records re-announced after a leave", func(r Report) string { return pct(r.LeaveRecordsMoved, r.Records) })
	row("keys moved when one member joins", func(r Report) string { return pct(r.JoinKeysMoved, r.Keys) })
	row("records re-announced after a join", func(r Report) string { return pct(r.JoinRecordsMoved, r.Records) })
	row("simulation time", func(r Report) string { return r.Elapsed.Round(100 * time.Millisecond).String() })
	return sb.String()
}
