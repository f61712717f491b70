package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/internal/hedge"
)

// maxLookupResponse bounds a home's answer to a lookup.
const maxLookupResponse = 1 << 20

// Lookup asks key's homes which nodes hold it: the first home at once, each next one after
// HedgeDelay (or as soon as the one before failed), the first answer that names a holder
// wins. This node is never among the holders returned, nor are members that are not alive.
// An empty answer with a nil error means no home knows a holder; an error, that no home
// answered within LookupTimeout.
//
// A home that answers without a holder counts as one that failed for the hedging: the next is
// asked at once, since a home that came after a membership change may not know yet.
//
// A tag's lookup waits for every home (within LookupTimeout) and merges their answers: the
// answer is a choice among the records (the newest registry Date), and a home that came after
// a membership change may know only some of them, so the first answer could name an older
// digest.
func (n *Node) Lookup(ctx context.Context, key string) ([]Holder, error) {
	start := time.Now()
	hs, err := n.lookup(ctx, key)
	switch {
	case err != nil:
		n.stats.lookupsFailed.Add(1)
	case len(hs) > 0:
		n.stats.lookupsFound.Add(1)
	default:
		n.stats.lookupsNotFound.Add(1)
	}
	if n.cfg.ObserveLookup != nil {
		n.cfg.ObserveLookup(time.Since(start), len(hs) > 0, err)
	}
	return hs, err
}

func (n *Node) lookup(ctx context.Context, key string) ([]Holder, error) {
	if key == "" || len(key) > maxKeyLen {
		return nil, nil // such a key is never announced
	}
	alive := n.view.alive()
	homes := homesAmong(key, alive, n.cfg.Replicas)
	ctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
	defer cancel()

	tag := isTagKey(key)
	var found []Holder  // the first holders a blob's home named
	var merged []Holder // a tag's records from every home that answered
	var errs []error
	answered := 0
	winner, done := hedge.Run(ctx, homes, n.cfg.HedgeDelay,
		func(ctx context.Context, home Member) ([]Holder, error) {
			if home.Self {
				return n.home.answer(key), nil
			}
			return n.ask(ctx, home, key)
		},
		func(_ int, hs []Holder, err error) bool {
			if err != nil {
				errs = append(errs, err)
				return false
			}
			answered++
			hs = n.holders(hs, alive)
			if len(hs) > 0 && !tag {
				found = hs
				return true
			}
			merged = mergeHolders(merged, hs)
			return false
		}, nil)
	done()
	switch {
	case winner >= 0:
		return found, nil
	case answered > 0 || len(homes) == 0:
		return merged, nil
	}
	if len(errs) < len(homes) { // every answer was an error, and some did not come in time
		errs = append(errs, context.Cause(ctx))
	}
	return nil, fmt.Errorf("lookup %s: no home answered: %w: %w", key, errors.Join(errs...), errdefs.ErrUnavailable)
}

// isTagKey reports whether key is a tag's ("registry/repository:tag"); a blob's is a digest,
// which has no slash.
func isTagKey(key string) bool { return strings.Contains(key, "/") }

// mergeHolders adds hs to merged: one record per node, the one with the newest Date.
func mergeHolders(merged, hs []Holder) []Holder {
next:
	for _, h := range hs {
		for i, m := range merged {
			if m.Node == h.Node {
				if h.Date.After(m.Date) {
					merged[i] = h
				}
				continue next
			}
		}
		merged = append(merged, h)
	}
	return merged
}

// holders is hs without this node and members that are not alive.
func (n *Node) holders(hs []Holder, alive map[string]Member) []Holder {
	out := hs[:0:0]
	for _, h := range hs {
		if m, ok := alive[h.Node]; ok && !m.Self {
			out = append(out, h)
		}
	}
	return out
}

// ask asks home which nodes hold key.
func (n *Node) ask(ctx context.Context, home Member, key string) ([]Holder, error) {
	u := "https://" + home.PeerAddr + PathLookup + "?key=" + url.QueryEscape(key)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("home %s answered %s", home.Name, resp.Status)
	}
	var body lookupResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxLookupResponse)).Decode(&body); err != nil {
		return nil, fmt.Errorf("home %s: %w", home.Name, err)
	}
	return body.Holders, nil
}
