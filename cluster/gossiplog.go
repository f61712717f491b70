package cluster

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
)

// dropLogEvery is how often, at most, a line says what gossip was dropped as not from a member.
const dropLogEvery = time.Minute

// dropReason is why a gossip packet or stream was dropped as not from a member.
type dropReason int

const (
	// dropLabel: without this cluster's label (junk, or a memberlist of another cluster).
	dropLabel dropReason = iota
	// dropDecrypt: labelled, but not encrypted with this cluster's key.
	dropDecrypt
	// dropMalformed: not a message memberlist can decode.
	dropMalformed
	// dropStreamLimit: a stream refused because too many were open (guardedTransport).
	dropStreamLimit
	// dropStreamIdle: a stream that sent nothing in time.
	dropStreamIdle
	numDropReasons
)

// GossipDropReasons are the reasons GossipStats.Dropped counts, as the metric labels them.
var GossipDropReasons = [numDropReasons]string{"label", "decrypt", "malformed", "stream_limit", "stream_idle"}

func (r dropReason) String() string { return GossipDropReasons[r] }

// foreignComplaints are memberlist's log lines about packets and streams that are not a
// member's, by what they contain, with the reason each counts under. Anyone who can reach the
// gossip port can make memberlist write them, once per packet.
var foreignComplaints = []struct {
	text   string
	reason dropReason
}{
	{"with unacceptable label", dropLabel},
	{"label header", dropLabel}, // "unexpected double … label header", "failed to receive and remove the stream label header", "label header cannot be empty"
	{"cannot decode label", dropLabel},
	{"Decrypt packet failed", dropDecrypt},
	{"failed to receive:", dropMalformed}, // a stream: decrypt or decode
	{"UDP packet too short", dropMalformed},
	{"missing message type byte", dropMalformed},
	{"Received invalid msgType", dropMalformed},
	{"not supported", dropMalformed}, // "msg type (n) not supported"
	{"Failed to decode", dropMalformed},
	{"Got invalid checksum", dropMalformed},
	{"Failed to decompress payload", dropMalformed},
	{"Compound request had", dropMalformed},
	{"Failed to receive user message", dropMalformed},
	{"Failed to read remote state", dropMalformed},
	{"Remote node state size", dropMalformed},
}

// classifyComplaint returns the reason memberlist's line msg counts under, and whether it is
// a complaint about a packet or stream that is not a member's.
func classifyComplaint(msg string) (dropReason, bool) {
	for _, c := range foreignComplaints {
		if !strings.Contains(msg, c.text) {
			continue
		}
		switch {
		case strings.Contains(msg, "i/o timeout"):
			return dropStreamIdle, true
		case c.reason == dropMalformed && strings.Contains(msg, "crypt"):
			return dropDecrypt, true
		}
		return c.reason, true
	}
	return 0, false
}

// gossipLog is memberlist's logger. Its lines go to containerd's log at their level, except
// its complaints about packets and streams that are not a member's (and the streams the
// transport dropped): those are counted by reason, and one line at most every dropLogEvery
// says how many there were since the last one, so that a flood of junk makes a line a
// minute, not a line a packet.
type gossipLog struct {
	log   *log.Entry
	every time.Duration
	now   func() time.Time

	dropped [numDropReasons]atomic.Int64 // since start

	mu      sync.Mutex
	logged  time.Time             // of the last line about drops; zero before the first
	pending [numDropReasons]int64 // since that line
	last    string                // the last drop since that line, as memberlist said it
}

func newGossipLog(l *log.Entry) *gossipLog {
	return &gossipLog{log: l, every: dropLogEvery, now: time.Now}
}

// Write takes one line of memberlist's ("[WARN] memberlist: ...").
func (g *gossipLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level, msg := "", line
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			level, msg = line[1:i], strings.TrimSpace(line[i+1:])
		}
	}
	if level == "ERR" || level == "ERROR" || level == "WARN" {
		if r, ok := classifyComplaint(msg); ok {
			g.add(r, msg)
			return len(p), nil
		}
		if strings.Contains(msg, "Failed to send error") {
			// memberlist's answer to a stream it could not read, after the complaint counted.
			level = "DEBUG"
		}
	}
	switch level {
	case "ERR", "ERROR":
		g.log.Error(msg)
	case "WARN":
		g.log.Warn(msg)
	case "INFO":
		g.log.Info(msg)
	default:
		g.log.Debug(msg)
	}
	return len(p), nil
}

// add counts a drop for reason; what says what was dropped, for the next line.
func (g *gossipLog) add(reason dropReason, what string) {
	g.dropped[reason].Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pending[reason]++
	g.last = what
	g.flushLocked()
}

// flush writes the line about the drops since the last one, if there were any and the last
// line is dropLogEvery old.
func (g *gossipLog) flush() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.flushLocked()
}

func (g *gossipLog) flushLocked() {
	now := g.now()
	if !g.logged.IsZero() && now.Sub(g.logged) < g.every {
		return
	}
	var total int64
	var by []string
	for r, n := range g.pending {
		if n > 0 {
			total += n
			by = append(by, fmt.Sprintf("%s=%d", dropReason(r), n))
		}
	}
	if total == 0 {
		return
	}
	l := g.log.WithFields(log.Fields{"dropped": total, "reasons": strings.Join(by, " "), "last": g.last})
	if !g.logged.IsZero() {
		l = l.WithField("since", now.Sub(g.logged).Round(time.Second))
	}
	l.Warn("cluster: dropped gossip that is not from a member (no cluster key, another cluster, or a flood); logged at most once a minute")
	g.logged, g.pending, g.last = now, [numDropReasons]int64{}, ""
}

// counts returns the drops since start, by reason.
func (g *gossipLog) counts() map[string]int64 {
	m := make(map[string]int64, numDropReasons)
	for r := range g.dropped {
		m[dropReason(r).String()] = g.dropped[r].Load()
	}
	return m
}
