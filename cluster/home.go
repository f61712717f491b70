package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
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
	// slots bounds the announce requests served at once.
	slots chan struct{}
	// expireEvery is how often the index's expired records are swept.
	expireEvery time.Duration
	// received counts the records other nodes announced, dropped the records refused (the
	// index full, or a tag's Date too far ahead).
	received, dropped atomic.Int64
}

// newHome returns the home of index, whose records live ttl.
func newHome(index *Index, ttl time.Duration, view *view) *home {
	return &home{index: index, view: view, slots: make(chan struct{}, maxAnnouncesServed),
		expireEvery: min(ttl/2, maxExpireEvery)}
}

// put records that node from holds recs, counting the records the index refuses.
func (h *home) put(from string, recs []Record, now time.Time) {
	h.dropped.Add(int64(h.index.Put(from, recs, now)))
}

// answer is what this home answers about key (see answerHolders).
func (h *home) answer(key string) []Holder {
	return answerHolders(key, h.index.Get(key, time.Now()))
}

// report adds what the home counts to s.
func (h *home) report(s *Stats) {
	s.IndexDropped = h.dropped.Load()
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

func (h *home) serveAnnounce(w http.ResponseWriter, req *http.Request) {
	from := sender(req)
	if m, ok := h.view.member(from); !ok || m.Self {
		http.Error(w, fmt.Sprintf("%q is not an alive member of this node's cluster", from), http.StatusForbidden)
		return
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	case <-req.Context().Done():
		return
	}
	var body announceRequest
	if err := decode(w, req, maxAnnounceBody, &body); err != nil {
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
	now := time.Now()
	recs := slices.DeleteFunc(body.Records, func(r Record) bool { return r.Date.After(now.Add(maxDateAhead)) })
	h.dropped.Add(int64(len(body.Records) - len(recs)))
	h.put(from, recs, now)
	h.received.Add(int64(len(body.Records)))
	w.WriteHeader(http.StatusNoContent)
}

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
