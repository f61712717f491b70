package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
)

// The index requests between nodes, under the peer listener, JSON both ways:
//
//	POST /lifeboat/v1/announce  {"records":[Record...]}  → 204: the sender holds these keys
//	POST /lifeboat/v1/lookup    {"key":"..."}            → 200 {"holders":[Holder...]}
//	GET  /lifeboat/v1/lookup?key=...                     → the same
//
// The sender is the node the peer listener authenticated (PeerFrom, else HeaderPeer once the
// listener checked it is the node of the connection's client certificate).
const (
	PathAnnounce = "/lifeboat/v1/announce"
	PathLookup   = "/lifeboat/v1/lookup"
)

// Bounds of what one request can make a node do.
const (
	// maxAnnounceRecords is the most records one announce request carries.
	maxAnnounceRecords = 10_000
	// maxAnnounceBody bounds an announce request's body; senders split batches to fit.
	maxAnnounceBody = 4 << 20
	// maxLookupBody bounds a lookup request's body.
	maxLookupBody = 4 << 10
	// maxKeyLen bounds an index key (a tag key is a registry, a repository of at most 255
	// characters and a tag of at most 128).
	maxKeyLen = 1024
	// maxAnnouncesServed is how many announce requests a node decodes and puts at once; the
	// others wait for their turn, their bodies read.
	maxAnnouncesServed = 4
	// maxAnnouncesBuffered bounds the bytes of the announce bodies a node holds at once, read
	// or being read and not yet put (8 full bodies); an announce past it gets 503, and its
	// records go again with its sender's next refresh.
	maxAnnouncesBuffered = 8 * maxAnnounceBody
	// maxLookupHolders is the most holders a lookup's answer names (see answerHolders).
	maxLookupHolders = 32
)

type announceRequest struct {
	Records []Record `json:"records"`
}

type lookupRequest struct {
	Key string `json:"key"`
}

type lookupResponse struct {
	Holders []Holder `json:"holders"`
}

// recordSize is about how many bytes r takes in an announce request.
func recordSize(r Record) int { return len(r.Key) + len(r.Digest) + 64 }

type peerKey struct{}

// WithPeer returns ctx marked as carrying a request from the authenticated node node; the
// peer listener's handler sets it after Node.Authenticate, and Handler takes the sender from it.
func WithPeer(ctx context.Context, node string) context.Context {
	return context.WithValue(ctx, peerKey{}, node)
}

// PeerFrom returns the authenticated node WithPeer put in ctx.
func PeerFrom(ctx context.Context) (node string, ok bool) {
	node, ok = ctx.Value(peerKey{}).(string)
	return node, ok && node != ""
}

// sender is the node req came from: the one the peer listener put in its context, else the
// one its HeaderPeer names (Node.Authenticate checked it is the name in the certificate).
func sender(req *http.Request) string {
	if node, ok := PeerFrom(req.Context()); ok {
		return node
	}
	return req.Header.Get(HeaderPeer)
}

func validRecord(r Record) error {
	if r.Key == "" || len(r.Key) > maxKeyLen {
		return fmt.Errorf("a record's key is empty or longer than %d bytes", maxKeyLen)
	}
	if r.Digest != "" {
		if err := r.Digest.Validate(); err != nil {
			return fmt.Errorf("record %q: %w", r.Key, err)
		}
	}
	return nil
}

// answerHolders is what a home answers about key from its records hs: all of them when they are
// few, else maxLookupHolders of them, so that an answer stays small however many nodes hold a
// popular key. A blob's are picked at random, which also spreads the transfers of a popular blob
// over its holders instead of sending every node to the same first one; a tag's are those with
// the newest registry Dates, the ones its resolution picks from.
func answerHolders(key string, hs []Holder) []Holder {
	if len(hs) <= maxLookupHolders {
		if !isTagKey(key) {
			rand.Shuffle(len(hs), func(i, j int) { hs[i], hs[j] = hs[j], hs[i] })
		}
		return hs
	}
	if isTagKey(key) {
		slices.SortStableFunc(hs, func(a, b Holder) int { return b.Date.Compare(a.Date) })
	} else {
		rand.Shuffle(len(hs), func(i, j int) { hs[i], hs[j] = hs[j], hs[i] })
	}
	return hs[:maxLookupHolders]
}

// decode reads req's JSON body of at most limit bytes into v; on error it has answered.
func decode(w http.ResponseWriter, req *http.Request, limit int64, v any) error {
	err := json.NewDecoder(http.MaxBytesReader(w, req.Body, limit)).Decode(v)
	if err != nil {
		code := http.StatusBadRequest
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			code = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "cannot read the request: "+err.Error(), code)
	}
	return err
}
