package clustersim

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

// TestSimulateSmall checks the simulation's invariants on a small cluster.
func TestSimulateSmall(t *testing.T) {
	t.Parallel()
	opts := Options{Members: 50, Images: 2000, Bases: 20, ImagesPerNode: 100, IndexSample: 50, Seed: 1}
	rep := Simulate(opts)
	o := rep.Options
	if o.Replicas != 3 || o.LayersPerImage != 6 {
		t.Fatalf("defaults not filled in: %+v", o)
	}
	// Each member holds ImagesPerNode images: their keys, less the base layers they share.
	maxPerMember := o.ImagesPerNode * (3 + o.LayersPerImage)
	if rep.Records < o.Members*o.ImagesPerNode*3 || rep.Records > o.Members*maxPerMember {
		t.Fatalf("%d records for %d members holding %d images", rep.Records, o.Members, o.ImagesPerNode)
	}
	if rep.Keys <= 0 || rep.Keys > rep.Records || rep.HoldersPerKey.Max > float64(o.Members) || rep.HoldersPerKey.Min < 1 {
		t.Fatalf("keys %d, records %d, holders per key %+v", rep.Keys, rep.Records, rep.HoldersPerKey)
	}
	// Every key has Replicas homes: the homes' keys add up to that, and each home holds about
	// its share.
	mean := float64(rep.Keys*o.Replicas) / float64(o.Members)
	if rep.KeysPerHome.Min > mean || rep.KeysPerHome.Max < mean || rep.KeysPerHome.Median < mean/2 || rep.KeysPerHome.Median > 2*mean {
		t.Fatalf("keys per home %+v around a mean of %.0f", rep.KeysPerHome, mean)
	}
	// Every home got a real index here (IndexSample = Members): its records are the ones homed
	// on it, so the index memory spans what Size says of the smallest and largest.
	perRecordMin := indexBytesPerRecord()
	if rep.IndexBytesPerHome.Min < rep.RecordsPerHome.Min*perRecordMin || rep.IndexBytesPerHome.Max < rep.RecordsPerHome.Max*perRecordMin {
		t.Fatalf("index bytes %+v for records per home %+v", rep.IndexBytesPerHome, rep.RecordsPerHome)
	}
	// A full refresh sends one batch per distinct home: at most every member, at least one.
	if rep.RefreshMessages.Min < 1 || rep.RefreshMessages.Max > float64(o.Members) {
		t.Fatalf("refresh batches %+v", rep.RefreshMessages)
	}
	keysPerImage := float64(3 + o.LayersPerImage)
	if rep.MessagesPerPull < float64(o.Replicas) || rep.MessagesPerPull > keysPerImage*float64(o.Replicas) {
		t.Fatalf("batches per pull %.1f", rep.MessagesPerPull)
	}
	if rep.MessagesPerSec <= 0 || rep.RecordsPerSec < rep.MessagesPerSec || rep.BytesPerSec < 50*rep.RecordsPerSec {
		t.Fatalf("rates: %.2f msg/s, %.2f rec/s, %.0f B/s", rep.MessagesPerSec, rep.RecordsPerSec, rep.BytesPerSec)
	}
	// A leave moves the keys the member was a home of, about Replicas/Members of them; so does a
	// join, about Replicas/(Members+1). The keys here are few, so the band is wide (±50%).
	for _, c := range []struct {
		what  string
		moved int
		want  float64
	}{
		{"leave", rep.LeaveKeysMoved, float64(rep.Keys*o.Replicas) / float64(o.Members)},
		{"join", rep.JoinKeysMoved, float64(rep.Keys*o.Replicas) / float64(o.Members+1)},
	} {
		if float64(c.moved) < c.want/2 || float64(c.moved) > 1.5*c.want {
			t.Errorf("%s moved %d keys, want about %.0f", c.what, c.moved, c.want)
		}
	}
	if rep.LeaveRecordsMoved < rep.LeaveKeysMoved || rep.JoinRecordsMoved < rep.JoinKeysMoved {
		t.Fatalf("records moved fewer than keys: %+v", rep)
	}
	// The same options give the same report.
	again := Simulate(opts)
	again.Elapsed = rep.Elapsed
	if fmt.Sprint(again) != fmt.Sprint(rep) {
		t.Fatalf("not deterministic:\n%+v\n%+v", rep, again)
	}
	t.Log("\n" + Table([]Report{rep}))
}

// indexBytesPerRecord is what Index.Size counts for one more record of a key it holds.
func indexBytesPerRecord() float64 {
	x := cluster.NewIndex(0, 0)
	recs := []cluster.Record{{Key: cluster.BlobKey(digest.FromString("a layer"))}}
	now := time.Now()
	x.Put("node-a", recs, now)
	_, _, one := x.Size()
	x.Put("node-b", recs, now)
	_, _, two := x.Size()
	return float64(two - one)
}

// TestSimulateScale runs the simulation of docs/cluster.md ("Scale"): LIFEBOAT_SIMULATE=1.
func TestSimulateScale(t *testing.T) {
	if os.Getenv("LIFEBOAT_SIMULATE") == "" {
		t.Skip("set LIFEBOAT_SIMULATE=1 to simulate 1,000 and 10,000 members")
	}
	var reps []Report
	for _, members := range []int{100, 1000, 10_000} {
		reps = append(reps, Simulate(Options{Members: members, Seed: 1}))
	}
	fmt.Println(Table(reps))
}
