package cluster

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

func TestKeyShape(t *testing.T) {
	t.Parallel()
	sha256 := digest.FromString("x")
	sha512 := digest.SHA512.FromString("x")
	for _, tc := range []struct {
		name string
		rec  Record
		ok   bool
	}{
		{"sha256 blob", Record{Key: BlobKey(sha256)}, true},
		{"sha512 blob", Record{Key: BlobKey(sha512)}, true},
		{"tag", Record{Key: TagKey("docker.io", "library/alpine", "3.20"), Digest: sha256}, true},
		{"tag of a registry with a port", Record{Key: TagKey("localhost:5000", "a/b/c", "v1.0_rc-1"), Digest: sha512}, true},
		{"tag of an IPv6 registry", Record{Key: TagKey("[fd00::1]:5000", "app", "latest"), Digest: sha256}, true},
		{"junk", Record{Key: strings.Repeat("x", 1000)}, false},
		{"blob of another algorithm", Record{Key: "sha384:" + strings.Repeat("a", 96)}, false},
		{"short digest", Record{Key: BlobKey(sha256)[:70]}, false},
		{"upper-case digest", Record{Key: strings.ToUpper(BlobKey(sha256))}, false},
		{"blob record with a digest", Record{Key: BlobKey(sha256), Digest: sha256}, false},
		{"tag without a digest", Record{Key: TagKey("docker.io", "library/alpine", "3.20")}, false},
		{"tag with a bad digest", Record{Key: TagKey("docker.io", "library/alpine", "3.20"), Digest: "sha256:nope"}, false},
		{"tag without a tag", Record{Key: "docker.io/library/alpine", Digest: sha256}, false},
		{"tag with an empty tag", Record{Key: "docker.io/library/alpine:", Digest: sha256}, false},
		{"tag without a repository", Record{Key: "docker.io/:3.20", Digest: sha256}, false},
		{"upper-case repository", Record{Key: TagKey("docker.io", "Library/alpine", "3.20"), Digest: sha256}, false},
		{"registry not normalized", Record{Key: TagKey("Docker.IO", "library/alpine", "3.20"), Digest: sha256}, false},
		{"registry that is no host", Record{Key: TagKey("a_b", "app", "v"), Digest: sha256}, false},
		{"tag too long", Record{Key: TagKey("r.io", "app", strings.Repeat("v", 129)), Digest: sha256}, false},
		{"repository too long", Record{Key: TagKey("r.io", strings.Repeat("a", 300), "v"), Digest: sha256}, false},
	} {
		if got := keyShapeOK(tc.rec); got != tc.ok {
			t.Errorf("%s: keyShapeOK(%q, %q) = %v, want %v", tc.name, tc.rec.Key, tc.rec.Digest, got, tc.ok)
		}
	}
}

// viewOf returns a view of self and the members others, alive since the times given.
func viewOf(self string, others map[string]time.Time) *view {
	v := newView(self, log.L, func(string) {})
	v.members[self] = viewMember{Member: Member{Name: self, State: Alive, Self: true}}
	for name, since := range others {
		v.members[name] = viewMember{Member: Member{Name: name, State: Alive}, since: since}
	}
	return v
}

// A home keeps records of its keys only, counting a member that joined against it only once
// the grace window since its join has passed.
func TestHomeCheckGrace(t *testing.T) {
	t.Parallel()
	const grace = time.Minute
	now := t0
	old := now.Add(-time.Hour)
	settled := []string{"a", "b", "c", "d"}
	homes := func(k string, names []string) []string { return Rendezvous(k, names, 2) }
	// Keys by what a's homeship of them is among a, b, c, d (settled), and with e, which
	// joined 10 s ago.
	var mine, others, pushedOut string
	for i := 0; mine == "" || others == "" || pushedOut == ""; i++ {
		k := key(i)
		before := slices.Contains(homes(k, settled), "a")
		after := slices.Contains(homes(k, append(settled, "e")), "a")
		switch {
		case before && after && mine == "":
			mine = k
		case !before && others == "":
			others = k
		case before && !after && pushedOut == "":
			pushedOut = k
		}
	}
	h := &home{self: "a", replicas: 2, grace: grace, maxSkew: DefaultMaxClockSkew,
		view: viewOf("a", map[string]time.Time{"b": old, "c": old, "d": old, "e": now.Add(-10 * time.Second)})}
	check := h.homeCheck(now)
	for _, tc := range []struct {
		name, key string
		home      bool
	}{{"a's key", mine, true}, {"another's key", others, false}, {"a's key until e settles", pushedOut, true}} {
		if got := check.isHome(tc.key); got != tc.home {
			t.Errorf("%s: isHome = %v, want %v", tc.name, got, tc.home)
		}
	}
	// Once e has been alive for the grace window, the key is e's, not a's.
	if h.homeCheck(now.Add(grace)).isHome(pushedOut) {
		t.Error("a still takes records of a key e took from it, past the grace window")
	}
	// A member that left no longer counts at once: a sender that has yet to hear of it may
	// still rank a below it, and a takes the key then.
	gone := h.view.members["b"]
	gone.State = Dead
	h.view.members["b"] = gone
	var bs string
	for i := 0; bs == ""; i++ {
		if k := key(i); !slices.Contains(homes(k, []string{"a", "b", "c", "d", "e"}), "a") &&
			slices.Contains(homes(k, []string{"a", "c", "d", "e"}), "a") {
			bs = k
		}
	}
	if !h.homeCheck(now.Add(grace)).isHome(bs) {
		t.Error("a refuses a key it became a home of when b left")
	}

	// admit sorts an announce's records by reason.
	d := digest.FromString("x")
	recs := []Record{
		{Key: mine}, {Key: others}, {Key: "junk"},
		{Key: TagKey("r.io", "app", "v"), Digest: d, Date: now.Add(time.Hour)},
	}
	keep, refused := h.admit(recs, now)
	if len(keep) != 1 || keep[0].Key != mine || refused != (Refused{Shape: 1, NotHome: 1, Future: 1}) {
		t.Errorf("admit kept %v, refused %+v", keep, refused)
	}
}

// Over the peer listener: a home refuses the records of keys it is not a home of (the grace
// window shortened, so that the members count at once), and counts them.
func TestAnnounceRefusesOthersKeys(t *testing.T) {
	t.Parallel()
	noGrace := func(c *Config) { c.homeGrace = time.Nanosecond }
	a := startNode(t, "127.0.11.1", "a", nil, noGrace)
	b := startNode(t, "127.0.11.2", "b", []string{a.gossipAddr}, noGrace)
	c := startNode(t, "127.0.11.3", "c", []string{a.gossipAddr}, noGrace)
	eventually(t, 10*time.Second, "three members alive on each node", allAlive(a, b, c))
	notA := keyWhere(t, c, func(_ string, hs []string) bool { return !slices.Contains(hs, "a") })
	ofA := keyWhere(t, c, func(_ string, hs []string) bool { return slices.Contains(hs, "a") })
	body := fmt.Sprintf(`{"records":[{"k":%q},{"k":%q},{"k":"junk"}]}`, notA, ofA)
	req := httptest.NewRequestWithContext(WithPeer(t.Context(), "c"), http.MethodPost, PathAnnounce, strings.NewReader(body))
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusNoContent {
		t.Fatalf("announce: %d %s", rec.Code, rec.Body)
	}
	if hs := a.index.Get(ofA, time.Now()); !slices.Equal(holderNames(hs), []string{"c"}) {
		t.Errorf("a's key: holders %v, want c", hs)
	}
	if hs := a.index.Get(notA, time.Now()); len(hs) != 0 {
		t.Errorf("a kept a record of a key it is not a home of: %v", hs)
	}
	if got := a.Stats().IndexRefused; got != (Refused{NotHome: 1, Shape: 1}) {
		t.Errorf("IndexRefused = %+v, want one not a's, one of the wrong shape", got)
	}
	// What a node announces itself goes to the keys' homes only, and lands there.
	c.Announce(Record{Key: notA}, Record{Key: ofA})
	eventually(t, 10*time.Second, "the homes index c's records", func() bool {
		for _, n := range []*testNode{a, b} {
			for _, k := range []string{notA, ofA} {
				home := slices.ContainsFunc(c.Homes(k), func(m Member) bool { return m.Name == n.Name() })
				if home != slices.Equal(holderNames(n.index.Get(k, time.Now())), []string{"c"}) {
					return false
				}
			}
		}
		return true
	})
	if got := a.Stats().IndexRefused; got != (Refused{NotHome: 1, Shape: 1}) {
		t.Errorf("after c's own announce, IndexRefused = %+v: a refused a record c rightly sent", got)
	}
}
