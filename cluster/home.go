package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// maxExpireEvery is the longest the index waits between sweeps of its expired records.
const maxExpireEvery = time.Minute

// home is this node as a home of keys: the index of which nodes hold them, the announce and
// lookup requests of other nodes that feed and ask it, and the sweep of its expired records.
type home struct {
	index *Index
	view  *view // who may announce: alive members other than this node
	// self is this node's name; replicas the homes each key has; grace how long a member that
	// joined does not count yet against this node being a key's home (see homeCheck).
	self     string
	replicas int
	grace    time.Duration
	// maxSkew is how far past this node's clock a tag record's registry Date may be.
	maxSkew time.Duration
	// slots bounds the announce requests decoded and put at once; buffered counts the bytes of
	// announce bodies read and not yet put (at most maxAnnouncesBuffered).
	slots    chan struct{}
	buffered atomic.Int64
	// expireEvery is how often the index's expired records are swept.
	expireEvery time.Duration
	// received counts the records other nodes announced; refused those the index did not keep
	// (this node's own included), by reason.
	received atomic.Int64
	refused  struct {
		sync.Mutex
		Refused
	}
}

// newHome returns the home of index for this node (cfg.NodeName).
func newHome(index *Index, cfg Config, view *view) *home {
	return &home{index: index, view: view, self: cfg.NodeName, replicas: cfg.Replicas, grace: cfg.homeGrace,
		maxSkew: cfg.MaxClockSkew, slots: make(chan struct{}, maxAnnouncesServed),
		expireEvery: min(cfg.HolderTTL/2, maxExpireEvery)}
}

// put records that node from holds recs, counting the records the index refuses.
func (h *home) put(from string, recs []Record, now time.Time) {
	h.refuse(h.index.Put(from, recs, now))
}

// refuse counts r.
func (h *home) refuse(r Refused) {
	if r.Total() == 0 {
		return
	}
	h.refused.Lock()
	h.refused.add(r)
	h.refused.Unlock()
}

// answer is what this home answers about key (see answerHolders).
func (h *home) answer(key string) []Holder {
	return answerHolders(key, h.index.Get(key, time.Now()))
}

// report adds what the home counts to s.
func (h *home) report(s *Stats) {
	h.refused.Lock()
	s.IndexRefused = h.refused.Refused
	h.refused.Unlock()
	s.ReceivedRecords = h.received.Load()
	s.HomedKeys, s.IndexEntries, s.IndexBytes = h.index.Size()
}

// expireLoop sweeps the index's expired records every half their lifetime, and at least every
// maxExpireEvery.
func (h *home) expireLoop(ctx context.Context) {
	every(ctx, h.expireEvery, func() { h.index.Expire(time.Now()) })
}

// Handler serves the index requests of other nodes under /lifeboat/v1/ (announce, lookup).
// The caller authenticates requests first (Node.Authenticate). The sender of an announce is the
// node WithPeer put in the request's context, else the one its HeaderPeer names (Authenticate
// refuses a request whose HeaderPeer is not the node of its certificate); only alive members
// other than this node may announce.
func (n *Node) Handler() http.Handler { return n.home.handler() }

func (h *home) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathAnnounce, h.serveAnnounce)
	mux.HandleFunc("POST "+PathLookup, h.serveLookup)
	mux.HandleFunc("GET "+PathLookup, h.serveLookup)
	return mux
}

// serveAnnounce reads an announce's body whole (within rpcTimeout, maxAnnounceBody bytes, and
// maxAnnouncesBuffered bytes for all announces at once) before it waits for one of the slots
// that decode and put: a sender that trickles its body holds no slot, and is cut off when an
// honest sender would have given up.
func (h *home) serveAnnounce(w http.ResponseWriter, req *http.Request) {
	from := sender(req)
	if m, ok := h.view.member(from); !ok || m.Self {
		http.Error(w, fmt.Sprintf("%q is not an alive member of this node's cluster", from), http.StatusForbidden)
		return
	}
	raw, release, err := h.readAnnounce(w, req)
	if err != nil {
		return
	}
	defer release()
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	case <-req.Context().Done():
		return
	}
	var body announceRequest
	if err := json.Unmarshal(raw, &body); err != nil {
		http.Error(w, "cannot read the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body.Records) > maxAnnounceRecords {
		http.Error(w, fmt.Sprintf("more than %d records", maxAnnounceRecords), http.StatusRequestEntityTooLarge)
		return
	}
	for _, r := range body.Records {
		if err := validRecord(r); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	received := int64(len(body.Records))
	now := time.Now()
	recs, refused := h.admit(body.Records, now)
	h.refuse(refused)
	h.put(from, recs, now)
	h.received.Add(received)
	w.WriteHeader(http.StatusNoContent)
}

// readAnnounce reads req's body: at most maxAnnounceBody bytes, by rpcTimeout from now, while
// the bodies read and not yet put stay within maxAnnouncesBuffered bytes. release gives the
// body's bytes back to that bound once the body is done with. On error it has answered.
func (h *home) readAnnounce(w http.ResponseWriter, req *http.Request) (body []byte, release func(), err error) {
	// The peer listener's server may not support deadlines (a test's recorder): then the
	// caller's own bounds are all there is.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(rpcTimeout))
	var held int64
	release = func() { h.buffered.Add(-held) }
	r := http.MaxBytesReader(w, req.Body, maxAnnounceBody)
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, len(buf)) // double, as append would
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		held += int64(n)
		if h.buffered.Add(int64(n)) > maxAnnouncesBuffered {
			release()
			http.Error(w, "this node is reading too many announces at once; the next refresh will repeat it", http.StatusServiceUnavailable)
			return nil, nil, errBusy
		}
		if rerr == io.EOF {
			_ = rc.SetReadDeadline(time.Time{}) // the body is in: the rest is this node's time
			return buf, release, nil
		}
		if rerr != nil {
			release()
			code := http.StatusBadRequest
			if _, ok := errors.AsType[*http.MaxBytesError](rerr); ok {
				code = http.StatusRequestEntityTooLarge
			} else if errors.Is(rerr, os.ErrDeadlineExceeded) {
				code = http.StatusRequestTimeout
			}
			w.Header().Set("Connection", "close")
			http.Error(w, "cannot read the request: "+rerr.Error(), code)
			return nil, nil, rerr
		}
	}
}

// errBusy is readAnnounce's error when the announces read at once hold their bound.
var errBusy = errors.New("too many announces read at once")

func (h *home) serveLookup(w http.ResponseWriter, req *http.Request) {
	key := req.URL.Query().Get("key")
	if req.Method == http.MethodPost {
		var body lookupRequest
		if err := decode(w, req, maxLookupBody, &body); err != nil {
			return
		}
		key = body.Key
	}
	if key == "" || len(key) > maxKeyLen {
		http.Error(w, fmt.Sprintf("the key is empty or longer than %d bytes", maxKeyLen), http.StatusBadRequest)
		return
	}
	resp := lookupResponse{Holders: h.answer(key)}
	if resp.Holders == nil {
		resp.Holders = []Holder{}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}
