package hedge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// within fails the test unless ch yields within a minute, what naming what it waited for.
func within[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func TestFirstFailureStartsTheNextAtOnce(t *testing.T) {
	t.Parallel()
	// A delay no test waits for: only the failures can start the next attempts.
	winner, v, done, errs := First(t.Context(), []string{"a", "b", "c"}, time.Hour,
		func(ctx context.Context, name string) (string, error) {
			if name == "c" {
				return "from c", nil
			}
			return "", fmt.Errorf("%s failed", name)
		}, func(string) {})
	if winner != 2 || v != "from c" {
		t.Fatalf("winner %d with %q, want c", winner, v)
	}
	done()
	if errs[0] == nil || errs[1] == nil || errs[2] != nil {
		t.Errorf("errors %v, want a's and b's", errs)
	}
}

func TestFirstAsksTheNextWhileOneHangs(t *testing.T) {
	t.Parallel()
	hungEnded := make(chan struct{})
	// The deadline only ends the test cleanly should the hung attempt hang it.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	winner, v, done, _ := First(ctx, []string{"hung", "b"}, 10*time.Millisecond,
		func(ctx context.Context, name string) (string, error) {
			if name == "hung" {
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
	within(t, "the hung attempt to end", hungEnded)
}

func TestFirstReleasesLateSuccessesAndKeepsTheWinnersContext(t *testing.T) {
	t.Parallel()
	late := make(chan struct{})
	released := make(chan string, 1)
	var winnerCtx context.Context
	winner, _, done, _ := First(t.Context(), []string{"slow", "fast"}, 10*time.Millisecond,
		func(ctx context.Context, name string) (string, error) {
			if name == "slow" {
				<-late // succeeds after the winner, whatever its context says
				return "late", nil
			}
			winnerCtx = ctx
			return "fast", nil
		}, func(v string) { released <- v })
	if winner != 1 {
		t.Fatalf("winner %d, want fast", winner)
	}
	close(late)
	if v := within(t, "the late success to be released", released); v != "late" {
		t.Errorf("released %q, want the late success", v)
	}
	if winnerCtx.Err() != nil {
		t.Error("the winner's context ended before done")
	}
	done()
	if winnerCtx.Err() == nil {
		t.Error("done did not end the winner's context")
	}
}

func TestFirstEndsWithItsContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{}, 2)
	go func() {
		<-started
		<-started
		cancel()
	}()
	winner, _, _, _ := First(ctx, []string{"a", "b"}, time.Millisecond,
		func(ctx context.Context, name string) (string, error) {
			started <- struct{}{}
			<-ctx.Done()
			return "", ctx.Err()
		}, func(string) {})
	if winner != -1 {
		t.Errorf("winner %d, want none", winner)
	}
	winner, _, done, errs := First(t.Context(), nil, time.Millisecond, func(context.Context, string) (string, error) {
		return "", errors.New("never asked")
	}, nil)
	if winner != -1 || len(errs) != 0 {
		t.Errorf("no candidates: winner %d, errors %v", winner, errs)
	}
	done() // never nil
}

// An answer that does not end the race asks the next candidate at once, success or not; with
// none ending it, every candidate is asked and every answer seen, in Run's goroutine.
func TestRunGathersUntilAcceptStops(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		stopAt     string // the answer that ends the race; "" for none
		wantWinner int
		wantSeen   []string
	}{
		{name: "none stops", wantWinner: -1, wantSeen: []string{"a", "", "c"}},
		{name: "an answer stops", stopAt: "c", wantWinner: 2, wantSeen: []string{"a", "", "c"}},
		{name: "the first stops", stopAt: "a", wantWinner: 0, wantSeen: []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var seen []string
			// A delay no test waits for: only the answers can start the next attempts.
			winner, done := Run(t.Context(), []string{"a", "", "c"}, time.Hour,
				func(ctx context.Context, name string) (string, error) {
					if name == "" {
						return "", errors.New("no name")
					}
					return name, nil
				},
				func(i int, v string, err error) bool {
					if (err == nil) != (v != "") {
						t.Errorf("answer %d: %q, %v", i, v, err)
					}
					seen = append(seen, v)
					return tc.stopAt != "" && v == tc.stopAt
				}, nil)
			done()
			if winner != tc.wantWinner || !slices.Equal(seen, tc.wantSeen) {
				t.Errorf("winner %d after %q, want %d after %q", winner, seen, tc.wantWinner, tc.wantSeen)
			}
		})
	}
}

// When ctx ends, Run returns at once; every attempt still running is ended and its answer, an
// error here, is given to release: no goroutine is left waiting.
func TestRunReleasesEveryAnswerAfterItsContextEnded(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{}, 3)
	go func() {
		for range 3 {
			<-started
		}
		cancel()
	}()
	released := make(chan error, 3)
	returned := make(chan struct{}) // the attempts answer only once Run returned
	winner, done := Run(ctx, []string{"a", "b", "c"}, time.Millisecond,
		func(ctx context.Context, name string) (string, error) {
			started <- struct{}{}
			<-ctx.Done()
			<-returned
			return "", ctx.Err()
		},
		func(int, string, error) bool {
			t.Error("an answer came before the context ended")
			return false
		},
		func(_ string, err error) { released <- err })
	close(returned)
	done()
	if winner != -1 {
		t.Errorf("winner %d, want none", winner)
	}
	for range 3 {
		if err := within(t, "every attempt to be released", released); !errors.Is(err, context.Canceled) {
			t.Errorf("released %v, want the ended context's error", err)
		}
	}
}
