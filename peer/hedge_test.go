package peer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/cluster"
)

func members(names ...string) []cluster.Member {
	var ms []cluster.Member
	for _, n := range names {
		ms = append(ms, cluster.Member{Name: n})
	}
	return ms
}

func TestHedgeFailureStartsTheNextAtOnce(t *testing.T) {
	t.Parallel()
	// A delay no test waits for: only the failures can start the next attempts.
	winner, v, done, errs := hedge(t.Context(), members("a", "b", "c"), time.Hour,
		func(ctx context.Context, m cluster.Member) (string, error) {
			if m.Name == "c" {
				return "from c", nil
			}
			return "", fmt.Errorf("%s failed", m.Name)
		}, func(string) {})
	if winner != 2 || v != "from c" {
		t.Fatalf("winner %d with %q, want c", winner, v)
	}
	done()
	if errs[0] == nil || errs[1] == nil || errs[2] != nil {
		t.Errorf("errors %v, want a's and b's", errs)
	}
}

func TestHedgeAsksTheNextWhileOneHangs(t *testing.T) {
	t.Parallel()
	hungEnded := make(chan struct{})
	// The deadline only ends the test cleanly should the hung attempt hang it.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	winner, v, done, _ := hedge(ctx, members("hung", "b"), 10*time.Millisecond,
		func(ctx context.Context, m cluster.Member) (string, error) {
			if m.Name == "hung" {
				<-ctx.Done()
				close(hungEnded)
				return "", ctx.Err()
			}
			return "from b", nil
		}, func(string) {})
	if winner != 1 || v != "from b" {
		t.Fatalf("winner %d with %q, want b", winner, v)
	}
	done()
	select {
	case <-hungEnded:
	case <-time.After(time.Minute):
		t.Fatal("the hung attempt was not ended")
	}
}

func TestHedgeReleasesLateSuccessesAndKeepsTheWinnersContext(t *testing.T) {
	t.Parallel()
	late := make(chan struct{})
	var released atomic.Int64
	var winnerCtx context.Context
	winner, _, done, _ := hedge(t.Context(), members("slow", "fast"), 10*time.Millisecond,
		func(ctx context.Context, m cluster.Member) (string, error) {
			if m.Name == "slow" {
				<-late // succeeds after the winner, whatever its context says
				return "late", nil
			}
			winnerCtx = ctx
			return "fast", nil
		}, func(v string) {
			if v == "late" {
				released.Add(1)
			}
		})
	if winner != 1 {
		t.Fatalf("winner %d, want fast", winner)
	}
	close(late)
	waitFor(t, "the late success to be released", func() bool { return released.Load() == 1 })
	if winnerCtx.Err() != nil {
		t.Error("the winner's context ended before done")
	}
	done()
	if winnerCtx.Err() == nil {
		t.Error("done did not end the winner's context")
	}
}

func TestHedgeEndsWithItsContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{}, 2)
	go func() {
		<-started
		<-started
		cancel()
	}()
	winner, _, _, _ := hedge(ctx, members("a", "b"), time.Millisecond,
		func(ctx context.Context, m cluster.Member) (string, error) {
			started <- struct{}{}
			<-ctx.Done()
			return "", ctx.Err()
		}, func(string) {})
	if winner != -1 {
		t.Errorf("winner %d, want none", winner)
	}
	if winner, _, _, errs := hedge(t.Context(), nil, time.Millisecond, func(context.Context, cluster.Member) (string, error) {
		return "", errors.New("never asked")
	}, func(string) {}); winner != -1 || len(errs) != 0 {
		t.Errorf("no candidates: winner %d, errors %v", winner, errs)
	}
}
