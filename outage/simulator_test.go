package outage

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// recorder collects the statuses a subscriber is given.
type recorder chan Status

func subscribe(s *Simulator) recorder {
	r := make(recorder, 64)
	s.Subscribe(func(st Status) { r <- st })
	return r
}

// next waits for the next status, or fails the test after a generous deadline.
func (r recorder) next(t *testing.T) Status {
	t.Helper()
	select {
	case st := <-r:
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("no status change delivered within 10s")
		return Status{}
	}
}

// none checks that no status change is pending.
func (r recorder) none(t *testing.T) {
	t.Helper()
	select {
	case st := <-r:
		t.Fatalf("unexpected status change %+v", st)
	default:
	}
}

func TestStatusBeforeAnyOutage(t *testing.T) {
	t.Parallel()
	st := New().Status()
	if st.Active || st.Spec.Mode != "" || !st.Since.IsZero() || st.Affected != 0 {
		t.Fatalf("Status() = %+v, want the zero Status", st)
	}
}

func TestStartStop(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := New()
	r := subscribe(s)

	prev, err := s.Start(ctx, Spec{Mode: "dns", Registries: []string{"Docker.IO"}})
	if err != nil {
		t.Fatal(err)
	}
	if prev.Active || prev.Spec.Mode != "" {
		t.Errorf("previous = %+v, want none", prev)
	}
	st := s.Status()
	if !st.Active || st.Spec.Mode != "dns" || st.Since.IsZero() || !st.Until.IsZero() || !st.Ended.IsZero() {
		t.Errorf("Status() = %+v, want dns active until stopped", st)
	}
	if !slices.Equal(st.Spec.Registries, []string{"docker.io"}) {
		t.Errorf("registries = %q, want normalized [docker.io]", st.Spec.Registries)
	}
	if got := r.next(t); !got.Active || got.Spec.Mode != "dns" {
		t.Errorf("subscriber got %+v, want dns active", got)
	}

	stopped, err := s.Stop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.Active || stopped.Spec.Mode != "dns" || stopped.Ended.IsZero() {
		t.Errorf("Stop() = %+v, want dns ended", stopped)
	}
	if got := r.next(t); got.Active || got.Spec.Mode != "dns" {
		t.Errorf("subscriber got %+v, want dns ended", got)
	}
	if st := s.Status(); st.Active || st.Spec.Mode != "dns" {
		t.Errorf("Status() after Stop = %+v, want the ended dns outage", st)
	}
	if _, err := s.Stop(ctx); !errdefs.IsNotFound(err) {
		t.Errorf("second Stop() = %v, want ErrNotFound", err)
	}
	r.none(t)
}

func TestStopWithoutOutage(t *testing.T) {
	t.Parallel()
	_, err := New().Stop(t.Context())
	if !errdefs.IsNotFound(err) {
		t.Fatalf("Stop() = %v, want ErrNotFound", err)
	}
}

func TestStartInvalidChangesNothing(t *testing.T) {
	t.Parallel()
	s := New()
	if _, err := s.Start(t.Context(), Spec{Mode: "dns"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(t.Context(), Spec{Mode: "http-200"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Start(http-200) = %v, want ErrInvalidArgument", err)
	}
	if st := s.Status(); !st.Active || st.Spec.Mode != "dns" {
		t.Fatalf("Status() = %+v, want dns still active", st)
	}
}

func TestStartReplaces(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := New()
	r := subscribe(s)
	if _, err := s.Start(ctx, Spec{Mode: "dns", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r.next(t)
	prev, err := s.Start(ctx, Spec{Mode: "http-503", Repos: []string{"library/*"}})
	if err != nil {
		t.Fatal(err)
	}
	if !prev.Active || prev.Spec.Mode != "dns" || prev.Until.IsZero() {
		t.Errorf("previous = %+v, want the active dns outage", prev)
	}
	// A replacement is one change: the subscriber sees the new outage only.
	if got := r.next(t); !got.Active || got.Spec.Mode != "http-503" {
		t.Errorf("subscriber got %+v, want http-503 active", got)
	}
	r.none(t)
	if st := s.Status(); !st.Active || st.Spec.Mode != "http-503" || !st.Until.IsZero() {
		t.Errorf("Status() = %+v, want http-503 active until stopped", st)
	}
}

func TestExpiry(t *testing.T) {
	t.Parallel()
	s := New()
	r := subscribe(s)
	const d = 50 * time.Millisecond
	if _, err := s.Start(t.Context(), Spec{Mode: "blackhole", For: d}); err != nil {
		t.Fatal(err)
	}
	started := r.next(t)
	if !started.Active || started.Until.Sub(started.Since) != d {
		t.Fatalf("started = %+v, want active for %s", started, d)
	}
	// No traffic and no Status calls: the timer alone must end it.
	ended := r.next(t)
	if ended.Active || ended.Spec.Mode != "blackhole" || ended.Ended.Before(started.Until) {
		t.Fatalf("ended = %+v, want the blackhole ended at or after %s", ended, started.Until)
	}
	if st := s.Status(); st.Active {
		t.Fatalf("Status() = %+v after expiry, want inactive", st)
	}
	if _, err := s.Stop(t.Context()); !errdefs.IsNotFound(err) {
		t.Fatalf("Stop() after expiry = %v, want ErrNotFound", err)
	}
	r.none(t)
}

func TestExpiredOutageReportedInactiveBeforeItsTimer(t *testing.T) {
	t.Parallel()
	s := New()
	r := subscribe(s)
	if _, err := s.Start(t.Context(), Spec{Mode: "dns", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r.next(t)
	// Move the end into the past, as if the timer were late.
	s.mu.Lock()
	s.cur.Load().until = time.Now().Add(-time.Second)
	s.mu.Unlock()
	if st := s.Status(); st.Active {
		t.Fatalf("Status() = %+v, want inactive past Until", st)
	}
	if got := r.next(t); got.Active {
		t.Fatalf("subscriber got %+v, want the ended outage", got)
	}
	// Ended once: later calls change nothing.
	s.Status()
	r.none(t)
}

func TestSubscriberMayCallSimulator(t *testing.T) {
	t.Parallel()
	s := New()
	got := make(chan Status, 4)
	s.Subscribe(func(st Status) {
		if !st.Active {
			// Reentrant start: must neither deadlock nor be lost.
			if _, err := s.Start(t.Context(), Spec{Mode: "refused"}); err != nil {
				t.Error(err)
			}
		}
		got <- s.Status()
	})
	if _, err := s.Start(t.Context(), Spec{Mode: "dns"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []string{"dns", "refused", "refused"}
	for i, mode := range want {
		select {
		case st := <-got:
			if st.Spec.Mode != mode || !st.Active {
				t.Errorf("call %d saw %+v, want %s active", i, st, mode)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d not delivered", i)
		}
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec Spec
		want Spec
	}{
		{name: "slow", spec: Spec{Mode: "slow"}, want: Spec{Mode: "slow", Latency: DefaultLatency, Target: TargetUpstream}},
		{name: "slow rate only", spec: Spec{Mode: "slow", Rate: 10}, want: Spec{Mode: "slow", Rate: 10, Target: TargetUpstream}},
		{name: "flaky", spec: Spec{Mode: "flaky"}, want: Spec{Mode: "flaky", FailRatio: DefaultFailRatio, Seed: DefaultSeed, Target: TargetUpstream}},
		{name: "flaky failing slow", spec: Spec{Mode: "flaky", FailMode: "slow", Seed: 9}, want: Spec{Mode: "flaky", FailMode: "slow", FailRatio: DefaultFailRatio, Seed: 9, Latency: DefaultLatency, Target: TargetUpstream}},
		{name: "dns", spec: Spec{Mode: "dns"}, want: Spec{Mode: "dns", Target: TargetUpstream}},
		{name: "peers", spec: Spec{Mode: "dns", Target: TargetPeers}, want: Spec{Mode: "dns", Target: TargetPeers}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New()
			if _, err := s.Start(t.Context(), tt.spec); err != nil {
				t.Fatal(err)
			}
			got := s.Status().Spec
			got.Registries, got.Repos = nil, nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Spec in force = %+v, want %+v", got, tt.want)
			}
		})
	}
}
