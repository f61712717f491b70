package demo

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

// TestCheckStep checks the verdict on a step against what it should have done.
func TestCheckStep(t *testing.T) {
	t.Parallel()
	hits := []Answer{{Kind: "tag", Status: 200, Cache: "stale", Count: 1}, {Kind: "manifest", Status: 200, Cache: "hit", Count: 1}, {Kind: "blob", Status: 200, Cache: "hit", Count: 4}}
	offline := expect{pull: true, tag: "stale", cached: true, quiet: true}
	for _, tc := range []struct {
		name string
		step Step
		want expect
		// problems are words each problem must contain, in order; none: the step is ok.
		problems []string
	}{
		{"as expected", Step{Pulled: true, Answers: hits, Outage: "blackhole"}, offline, nil},
		{"pull failed", Step{Error: "boom", Answers: hits}, offline, []string{"the pull failed: boom"}},
		{"pull succeeded", Step{Pulled: true}, expect{}, []string{"the pull succeeded"}},
		{"tag revalidated", Step{Pulled: true, Answers: slices.Concat([]Answer{{Kind: "tag", Status: 200, Cache: "revalidated", Count: 1}}, hits[1:])}, offline,
			[]string{"lifeboat answered the tag revalidated, want stale"}},
		{"no tag answer", Step{Pulled: true, Answers: hits[1:]}, offline, []string{"answered the tag never"}},
		{"blob fetched", Step{Pulled: true, Answers: append(slices.Clone(hits[:2]), Answer{Kind: "blob", Status: 200, Cache: "miss", Count: 4})}, offline,
			[]string{"did not answer every manifest and blob from its cache: tag stale, manifest hit, 4 blobs miss"}},
		{"upstream reached", Step{Pulled: true, Answers: hits, Upstream: Traffic{Requests: 2}}, offline, []string{"2 requests reached the registry"}},
		{"outage not named", Step{Outage: "blackhole", LifeboatSays: "404 MANIFEST_UNKNOWN: not found"}, expect{namesOutage: true},
			[]string{"does not name the simulated outage: 404 MANIFEST_UNKNOWN"}},
		{"outage named", Step{Outage: "blackhole", LifeboatSays: "404: (lifeboat simulated outage: blackhole)"}, expect{namesOutage: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := check(tc.step, tc.want)
			if len(got) != len(tc.problems) {
				t.Fatalf("problems %q, want %d like %q", got, len(tc.problems), tc.problems)
			}
			for i, p := range tc.problems {
				if !strings.Contains(got[i], p) {
					t.Errorf("problem %q, want it to say %q", got[i], p)
				}
			}
		})
	}
}

// TestRequestKind classifies the requests of a pull as the report counts them.
func TestRequestKind(t *testing.T) {
	t.Parallel()
	dgst := "sha256:" + strings.Repeat("a", 64)
	for _, tc := range []struct {
		name, target, want string
	}{
		{"tag", "/v2/library/busybox/manifests/1.36?ns=docker.io", "tag"},
		{"manifest by digest", "/v2/library/busybox/manifests/" + dgst + "?ns=docker.io", "manifest"},
		{"blob", "/v2/library/busybox/blobs/" + dgst + "?ns=docker.io", "blob"},
		{"ping", "/v2/", "other"},
		{"tags", "/v2/library/busybox/tags/list", "other"},
		{"referrers", "/v2/library/busybox/referrers/" + dgst, "other"},
		{"not the API", "/healthz", "other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u, err := url.Parse("http://mirror.test" + tc.target)
			if err != nil {
				t.Fatal(err)
			}
			if got := requestKind(u); got != tc.want {
				t.Errorf("requestKind(%s) = %q, want %q", tc.target, got, tc.want)
			}
		})
	}
}
