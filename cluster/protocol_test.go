package cluster

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// A home refuses tag records dated more than MaxClockSkew past its clock: the forged
// record, dated 59 minutes ahead, cannot win over the registry's later answers.
func TestAnnounceRefusesFutureDates(t *testing.T) {
	t.Parallel()
	a := startNode(t, "127.0.6.11", "a", nil)
	b := startNode(t, "127.0.6.12", "b", []string{a.gossipAddr})
	eventually(t, 10*time.Second, "a and b alive on both", allAlive(a, b))

	d := digest.FromString("forged")
	now := time.Now()
	var recs []string
	for _, tc := range []struct {
		tag   string
		ahead time.Duration
	}{{"soon", time.Minute}, {"later", DefaultMaxClockSkew + time.Minute}, {"forged", 59 * time.Minute}, {"far", 30 * 24 * time.Hour}} {
		recs = append(recs, fmt.Sprintf(`{"k":"r.io/app:%s","d":%q,"t":%q}`, tc.tag, d, now.Add(tc.ahead).UTC().Format(time.RFC3339)))
	}
	body := `{"records":[` + strings.Join(recs, ",") + `]}`
	req := httptest.NewRequestWithContext(WithPeer(t.Context(), "b"), http.MethodPost, PathAnnounce, strings.NewReader(body))
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusNoContent {
		t.Fatalf("announce: %d %s", rec.Code, rec.Body)
	}
	if hs := a.index.Get("r.io/app:soon", time.Now()); len(hs) != 1 {
		t.Errorf("a record dated a minute ahead (within the clock skew) was not kept: %v", hs)
	}
	for _, tag := range []string{"later", "forged", "far"} {
		if hs := a.index.Get("r.io/app:"+tag, time.Now()); len(hs) != 0 {
			t.Errorf("a record dated past the clock skew (%s) was kept: %v", tag, hs)
		}
	}
	if got := a.Stats().IndexRefused; got != (Refused{Future: 3}) {
		t.Errorf("IndexRefused = %+v, want 3 for their dates", got)
	}
}

func TestAnswerHoldersIsBounded(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var blob, tag []Holder
	for i := range 500 {
		blob = append(blob, Holder{Node: fmt.Sprintf("n%03d", i)})
		tag = append(tag, Holder{Node: fmt.Sprintf("n%03d", i), Digest: digest.FromString("x"), Date: base.Add(time.Duration(i) * time.Second)})
	}
	firsts := map[string]bool{}
	for range 20 {
		hs := answerHolders("sha256:x", append([]Holder(nil), blob...))
		if len(hs) != maxLookupHolders {
			t.Fatalf("a blob's answer names %d holders, want %d", len(hs), maxLookupHolders)
		}
		firsts[hs[0].Node] = true
	}
	if len(firsts) < 2 {
		t.Errorf("20 answers all named %v first: the transfers of a popular blob are not spread", firsts)
	}
	hs := answerHolders("r.io/app:1", append([]Holder(nil), tag...))
	if len(hs) != maxLookupHolders {
		t.Fatalf("a tag's answer names %d holders, want %d", len(hs), maxLookupHolders)
	}
	for _, h := range hs {
		if h.Date.Before(base.Add(time.Duration(500-maxLookupHolders) * time.Second)) {
			t.Errorf("a tag's answer kept %s dated %s, not one of the newest", h.Node, h.Date)
		}
	}
	if few := answerHolders("r.io/app:1", tag[:3]); len(few) != 3 {
		t.Errorf("an answer of 3 holders was cut to %d", len(few))
	}
}
