package outage

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Status is the state of the simulator: the outage in force, or the last one (Active false),
// or none (the zero Status).
type Status struct {
	// Active is true while the outage is in force.
	Active bool `json:"active"`
	// Spec is the outage, with the defaults filled in.
	Spec Spec `json:"spec"`
	// Since is when it started.
	Since time.Time `json:"since,omitzero"`
	// Until is when it ends by itself; zero: until stopped.
	Until time.Time `json:"until,omitzero"`
	// Ended is when it ended (stopped, expired or replaced); zero while active.
	Ended time.Time `json:"ended,omitzero"`
	// Affected counts the requests the outage changed (for flaky: the failed ones).
	Affected int64 `json:"affected"`
	// Faults breaks Affected down by the fault applied: "dns", "http-503", ...
	Faults map[string]int64 `json:"faults,omitempty"`
}

// Simulator holds the simulated outage, if any, and applies it to the transports it wrapped.
// It is safe for concurrent use. The zero value is not usable: use New.
type Simulator struct {
	// cur is the outage in force, nil for none; the transports read it on every request.
	// It is written under mu.
	cur atomic.Pointer[outage]

	mu         sync.Mutex
	last       *outage // the latest outage, in force or ended; nil before the first
	subs       []func(Status)
	pending    []Status // changes not yet given to subs, in order
	delivering bool     // a goroutine is giving pending to subs
}

// New returns a simulator with no outage.
func New() *Simulator { return &Simulator{} }

// outage is one simulated outage, from its start to its end.
type outage struct {
	spec       Spec // with defaults
	fault      fault
	failModes  []fault // flaky: the modes a failing request may get
	registries []string
	since      time.Time
	until      time.Time     // zero: until stopped
	done       chan struct{} // closed when the outage ends
	timer      *time.Timer   // For: ends it

	ended time.Time // under Simulator.mu

	mu       sync.Mutex
	rng      *rand.Rand // flaky
	affected int64
	faults   map[string]int64
}

func newOutage(spec Spec, now time.Time) *outage {
	spec = spec.withDefaults()
	o := &outage{
		spec:       spec,
		registries: spec.Registries,
		since:      now,
		done:       make(chan struct{}),
		faults:     map[string]int64{},
	}
	if spec.For > 0 {
		o.until = now.Add(spec.For)
	}
	if spec.Mode != ModeFlaky {
		o.fault, _ = parseMode(spec.Mode, "mode")
		return o
	}
	o.rng = rand.New(rand.NewPCG(uint64(spec.Seed), uint64(spec.Seed)))
	modes := randomFailModes
	if spec.FailMode != "" {
		modes = []string{spec.FailMode}
	}
	for _, m := range modes {
		f, _ := parseMode(m, "fail mode")
		f.label = ModeFlaky + "/" + f.label
		o.failModes = append(o.failModes, f)
	}
	return o
}

// pick decides what the outage does to one request in its scope: ok is false when the request
// goes through unchanged (a flaky outage letting it pass).
func (o *outage) pick() (f fault, ok bool) {
	if o.rng == nil {
		return o.fault, true
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.rng.Float64() >= o.spec.FailRatio {
		return fault{}, false
	}
	if len(o.failModes) == 1 {
		return o.failModes[0], true
	}
	return o.failModes[o.rng.IntN(len(o.failModes))], true
}

// count records a request the outage changed.
func (o *outage) count(f fault) {
	o.mu.Lock()
	o.affected++
	o.faults[f.name]++
	o.mu.Unlock()
}

// logFields describes o for the log.
func (o *outage) logFields() log.Fields {
	f := log.Fields{"mode": o.spec.Mode, "target": o.spec.Target}
	if len(o.spec.Registries) > 0 {
		f["registries"] = o.spec.Registries
	}
	if len(o.spec.Repos) > 0 {
		f["repos"] = o.spec.Repos
	}
	if !o.until.IsZero() {
		f["for"] = o.spec.For.String()
		f["until"] = o.until.Format(time.RFC3339)
	}
	if o.spec.Mode == ModeFlaky {
		f["fail_ratio"] = o.spec.FailRatio
		f["seed"] = o.spec.Seed
		if o.spec.FailMode != "" {
			f["fail_mode"] = o.spec.FailMode
		}
	}
	if o.spec.Latency > 0 {
		f["latency"] = o.spec.Latency.String()
	}
	if o.spec.Rate > 0 {
		f["rate_bytes_per_second"] = o.spec.Rate
	}
	return f
}

// statusLocked is o's status; s.mu is held.
func (o *outage) statusLocked() Status {
	st := Status{
		Active: o.ended.IsZero(),
		Spec:   o.spec,
		Since:  o.since,
		Until:  o.until,
		Ended:  o.ended,
	}
	st.Spec.Registries = append([]string(nil), o.spec.Registries...)
	st.Spec.Repos = append([]string(nil), o.spec.Repos...)
	o.mu.Lock()
	st.Affected = o.affected
	if len(o.faults) > 0 {
		st.Faults = maps.Clone(o.faults)
	}
	o.mu.Unlock()
	return st
}

// Start starts an outage, replacing the one in force if any. previous is the status just before
// (Active only if an outage was replaced). Errors: errdefs.ErrInvalidArgument for an invalid
// spec (see Spec.Validate); nothing changes then. The start, and a replacement, are logged.
func (s *Simulator) Start(ctx context.Context, spec Spec) (previous Status, err error) {
	if err := spec.Validate(); err != nil {
		return Status{}, err
	}
	now := time.Now()

	s.mu.Lock()
	expired := s.expireLocked(now)
	if s.last != nil {
		previous = s.last.statusLocked()
	}
	replaced := s.cur.Load()
	if replaced != nil {
		// One change for the subscribers: they see the new outage only.
		s.endLocked(replaced, now)
	}
	o := newOutage(spec, now)
	if !o.until.IsZero() {
		o.timer = time.AfterFunc(spec.For, func() { s.expire(o) })
	}
	s.cur.Store(o)
	s.last = o
	s.queueLocked(o.statusLocked())
	s.mu.Unlock()

	logExpired(expired)
	if replaced != nil {
		log.G(ctx).WithFields(replaced.logFields()).WithField("affected", previous.Affected).
			Info("outage simulation replaced by a new one")
	}
	log.G(ctx).WithFields(o.logFields()).Info("outage simulation started")
	s.deliver()
	return previous, nil
}

// Stop ends the outage in force and returns its final status (Active false). Errors:
// errdefs.ErrNotFound when no outage is in force. The stop is logged.
func (s *Simulator) Stop(ctx context.Context) (Status, error) {
	now := time.Now()
	s.mu.Lock()
	expired := s.expireLocked(now)
	o := s.cur.Load()
	var st Status
	if o != nil {
		s.endLocked(o, now)
		st = o.statusLocked()
		s.queueLocked(st)
	}
	s.mu.Unlock()

	logExpired(expired)
	if o == nil {
		s.deliver()
		return Status{}, fmt.Errorf("no outage is being simulated: %w", errdefs.ErrNotFound)
	}
	log.G(ctx).WithFields(o.logFields()).WithFields(log.Fields{
		"affected": st.Affected,
		"lasted":   now.Sub(o.since).Round(time.Millisecond).String(),
	}).Info("outage simulation stopped")
	s.deliver()
	return st, nil
}

// Status returns the outage in force, or the last one with Active false, or the zero Status if
// there has been none. An outage past its Until is reported ended (and ended, if its timer has
// not done so yet).
func (s *Simulator) Status() Status {
	s.mu.Lock()
	expired := s.expireLocked(time.Now())
	var st Status
	if s.last != nil {
		st = s.last.statusLocked()
	}
	s.mu.Unlock()
	logExpired(expired)
	s.deliver()
	return st
}

// Subscribe calls fn with the new status whenever the state changes: a start (or replacement:
// one call, with the new outage), a stop, an expiry (on time, from a timer, whether or not there
// is traffic). Calls are made one at a time, in the order of the changes, outside the
// simulator's lock, so fn may call the simulator; a change made while fn runs is delivered after
// it returns, possibly after the call that made it has returned. fn must not block for long: it
// delays the delivery of later changes.
func (s *Simulator) Subscribe(fn func(Status)) {
	s.mu.Lock()
	s.subs = append(s.subs, fn)
	s.mu.Unlock()
}

// active returns the outage in force, or nil. It is the transports' fast path.
func (s *Simulator) active() *outage {
	o := s.cur.Load()
	if o == nil {
		return nil
	}
	if !o.until.IsZero() && !time.Now().Before(o.until) {
		s.expire(o)
		return nil
	}
	return o
}

// expire ends o because its time is up, if it is still in force.
func (s *Simulator) expire(o *outage) {
	s.mu.Lock()
	var ended *outage
	if s.cur.Load() == o {
		s.endLocked(o, time.Now())
		s.queueLocked(o.statusLocked())
		ended = o
	}
	s.mu.Unlock()
	logExpired(ended)
	s.deliver()
}

// expireLocked ends the outage in force if it is past its Until, and returns it (nil if none).
func (s *Simulator) expireLocked(now time.Time) *outage {
	o := s.cur.Load()
	if o == nil || o.until.IsZero() || now.Before(o.until) {
		return nil
	}
	s.endLocked(o, now)
	s.queueLocked(o.statusLocked())
	return o
}

// endLocked ends o, the outage in force.
func (s *Simulator) endLocked(o *outage, now time.Time) {
	s.cur.Store(nil)
	o.ended = now
	close(o.done)
	if o.timer != nil {
		o.timer.Stop()
	}
}

func logExpired(o *outage) {
	if o == nil {
		return
	}
	o.mu.Lock()
	affected := o.affected
	o.mu.Unlock()
	log.L.WithFields(o.logFields()).WithField("affected", affected).Info("outage simulation ended: its time is up")
}

func (s *Simulator) queueLocked(st Status) {
	if len(s.subs) > 0 {
		s.pending = append(s.pending, st)
	}
}

// deliver gives the pending changes to the subscribers, unless another goroutine is doing so
// (it will deliver them too).
func (s *Simulator) deliver() {
	s.mu.Lock()
	if s.delivering {
		s.mu.Unlock()
		return
	}
	s.delivering = true
	for len(s.pending) > 0 {
		st := s.pending[0]
		s.pending = s.pending[1:]
		subs := s.subs[:len(s.subs):len(s.subs)]
		s.mu.Unlock()
		s.call(subs, st)
		s.mu.Lock()
	}
	s.delivering = false
	s.pending = nil
	s.mu.Unlock()
}

// call calls subs with st. Should one panic, delivery is handed back before the panic goes on,
// so that later changes are still delivered.
func (s *Simulator) call(subs []func(Status), st Status) {
	ok := false
	defer func() {
		if !ok {
			s.mu.Lock()
			s.delivering = false
			s.mu.Unlock()
		}
	}()
	for _, fn := range subs {
		fn(st)
	}
	ok = true
}
