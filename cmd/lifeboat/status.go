package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/cluster"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

func newStatusCommand() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's cache, upstream health and outage simulation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				return printJSON(out, st)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "version\t%s\n", st.Version)
			fmt.Fprintf(tw, "uptime\t%s\n", st.Uptime)
			fmt.Fprintf(tw, "root\t%s\n", st.Root)
			pct := 0.0
			if st.Cache.BudgetBytes > 0 {
				pct = 100 * float64(st.Cache.UsedBytes) / float64(st.Cache.BudgetBytes)
			}
			fmt.Fprintf(tw, "cache\t%s of %s (%.0f%%), %d blobs evicted\n", humanBytes(st.Cache.UsedBytes), humanBytes(st.Cache.BudgetBytes), pct, st.Cache.Evictions)
			fmt.Fprintf(tw, "requests\t%s\n", describeRequests(st.Requests))
			fmt.Fprintf(tw, "outage\t%s\n", describeOutage(st.Outage))
			names := make([]string, 0, len(st.Listeners))
			for k := range st.Listeners {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				addr := st.Listeners[k]
				if addr == "" {
					addr = "off"
				}
				fmt.Fprintf(tw, "%s\t%s\n", k, addr)
			}
			tw.Flush()
			if len(st.Endpoints) > 0 {
				fmt.Fprintln(out)
				tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "REGISTRY\tENDPOINT\tSTATE\tSINCE\tLAST ERROR")
				for _, e := range st.Endpoints {
					state := "up"
					if !e.Up {
						state = "down"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Registry, e.Endpoint, state, e.Since.Format(time.RFC3339), strings.ReplaceAll(e.LastError, "\n", " "))
				}
				tw.Flush()
			}
			printFailedRevalidations(out, st.FailedRevalidations)
			printCluster(out, st.Cluster)
			return nil
		},
	}
	f.register(cmd, true)
	return cmd
}

// describeRequests sums up the mirror's answers: "122 answered, hit ratio 95% (100 hit, 5 miss,
// 14 revalidated, 1 stale), 2 errors". Answers without a cache status (pings) count only in
// the total.
func describeRequests(r admin.RequestStatus) string {
	var total int64
	for _, n := range r.Answers {
		total += n
	}
	if total == 0 {
		return "none answered yet"
	}
	var parts []string
	for _, k := range []string{"hit", "miss", "revalidated", "stale", "peer"} {
		if n := r.Answers[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, k))
		}
	}
	s := fmt.Sprintf("%d answered", total)
	if len(parts) > 0 {
		s += fmt.Sprintf(", hit ratio %.0f%% (%s)", 100*r.HitRatio, strings.Join(parts, ", "))
	}
	if n := r.Answers["error"]; n == 1 {
		s += ", 1 error"
	} else if n > 1 {
		s += fmt.Sprintf(", %d errors", n)
	}
	return s
}

// statusMaxFailures is how many failed revalidations the text form of status lists.
const statusMaxFailures = 20

// printFailedRevalidations lists the tags whose last revalidation failed: why, and whether the
// cached tag was served stale or refused.
func printFailedRevalidations(out io.Writer, fs []resolver.FailedRevalidation) {
	if len(fs) == 0 {
		return
	}
	printTable(out, "TAG (LAST REVALIDATION FAILED)\tCAUSE\tANSWERED\tAT", len(fs), statusMaxFailures, func(i int) string {
		f := fs[i]
		answered := "refused"
		if f.ServedStale {
			answered = "stale"
		}
		return fmt.Sprintf("%s\t%s\t%s\t%s", f.Ref, f.Cause, answered, f.At.Format(time.RFC3339))
	})
}

// printTable prints, after a blank line, a table of header and the rows row(i) for i below n
// (their cells separated by tabs), most of them at most, and says how many more `status --json`
// lists.
func printTable(out io.Writer, header string, n, most int, row func(i int) string) {
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for i := range min(n, most) {
		fmt.Fprintln(tw, row(i))
	}
	tw.Flush()
	if more := n - most; more > 0 {
		fmt.Fprintf(out, "... and %d more (status --json lists them all)\n", more)
	}
}

// statusMaxMembers is how many members the text form of status lists.
const statusMaxMembers = 50

// printCluster prints the cluster section: members by state, this node's index, peer traffic,
// and the members themselves, the ones not alive first. Nothing when the tier is off.
func printCluster(out io.Writer, c *admin.ClusterStatus) {
	if c == nil {
		return
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "Cluster")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s\n", c.Node)
	var states []string
	for _, st := range []cluster.MemberState{cluster.Alive, cluster.Suspect, cluster.Dead, cluster.Left} {
		if n := c.MembersByState[st]; n > 0 || st == cluster.Alive {
			states = append(states, fmt.Sprintf("%d %s", n, st))
		}
	}
	fmt.Fprintf(tw, "members\t%s\n", strings.Join(states, ", "))
	fmt.Fprintf(tw, "homed keys\t%d (%d records, %s)", c.HomedKeys, c.IndexEntries, humanBytes(c.IndexBytes))
	if refused := describeRefused(c.IndexRefused); refused != "" {
		fmt.Fprintf(tw, "; records refused: %s", refused)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "peer tags\t%d", len(c.PeerTags))
	if len(c.PeerTags) > 0 {
		fmt.Fprint(tw, " (resolved from the peers' records, not confirmed by the registry since)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "lookups\t%d found, %d not found, %d failed\n", c.LookupsFound, c.LookupsNotFound, c.LookupsFailed)
	fmt.Fprintf(tw, "peer traffic\t%s in, %s out, %d coalesced fills, %d rejected\n", humanBytes(c.PeerBytesIn), humanBytes(c.PeerBytesOut), c.CoalescedFills, c.Rejected)
	tw.Flush()

	printPeerTags(out, c.PeerTags)

	members := slices.Clone(c.Members)
	// Trouble first: dead, suspect, left, then alive; by name within a state.
	rank := map[cluster.MemberState]int{cluster.Dead: 0, cluster.Suspect: 1, cluster.Left: 2, cluster.Alive: 3}
	slices.SortStableFunc(members, func(a, b admin.ClusterMember) int {
		if d := rank[a.State] - rank[b.State]; d != 0 {
			return d
		}
		return strings.Compare(a.Name, b.Name)
	})
	printTable(out, "MEMBER\tSTATE\tPEER ADDRESS", len(members), statusMaxMembers, func(i int) string {
		m := members[i]
		name := m.Name
		if m.Self {
			name += " (this node)"
		}
		return fmt.Sprintf("%s\t%s\t%s", name, m.State, m.Peer)
	})
}

// describeRefused sums up the records a home refused, by reason: "12 past the sender's quota,
// 3 dated ahead"; "" when none was.
func describeRefused(refused map[string]int64) string {
	var parts []string
	for _, r := range []struct{ reason, what string }{
		{"full", "the index full"},
		{"quota", "past the sender's quota"},
		{"shape", "neither digest nor tag"},
		{"not_home", "not this node's keys"},
		{"future", "dated ahead"},
	} {
		if n := refused[r.reason]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, r.what))
		}
	}
	return strings.Join(parts, ", ")
}

// printPeerTags lists the tags answered from the peers' records (statusMaxFailures of them).
func printPeerTags(out io.Writer, tags []admin.PeerTag) {
	if len(tags) == 0 {
		return
	}
	printTable(out, "TAG (FROM PEER RECORDS)\tDIGEST\tREGISTRY DATE", len(tags), statusMaxFailures, func(i int) string {
		return fmt.Sprintf("%s\t%s\t%s", tags[i].Ref, tags[i].Digest, tags[i].Date.Format(time.RFC3339))
	})
}
