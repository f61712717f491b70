package hosts

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestHostsDiff(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		old, new string
		want     string
	}{
		{name: "equal", old: "a\nb\n", new: "a\nb\n", want: ""},
		{name: "both empty", old: "", new: "", want: ""},
		{
			name: "new file", old: "", new: "a\nb\n",
			want: "--- old\n+++ new\n@@ -0,0 +1,2 @@\n+a\n+b\n",
		},
		{
			name: "removed file", old: "a\n", new: "",
			want: "--- old\n+++ new\n@@ -1 +0,0 @@\n-a\n",
		},
		{
			name: "one line changed in the middle",
			old:  "1\n2\n3\n4\n5\n6\n7\n8\n9\n",
			new:  "1\n2\n3\n4\nfive\n6\n7\n8\n9\n",
			want: "--- old\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n",
		},
		{
			name: "two changes far apart make two hunks",
			old:  "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n",
			new:  "one\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\ntwelve\n",
			want: "--- old\n+++ new\n@@ -1,4 +1,4 @@\n-1\n+one\n 2\n 3\n 4\n@@ -9,4 +9,4 @@\n 9\n 10\n 11\n-12\n+twelve\n",
		},
		{
			name: "two changes six lines apart make one hunk",
			old:  "1\n2\n3\n4\n5\n6\n7\n8\n",
			new:  "one\n2\n3\n4\n5\n6\n7\neight\n",
			want: "--- old\n+++ new\n@@ -1,8 +1,8 @@\n-1\n+one\n 2\n 3\n 4\n 5\n 6\n 7\n-8\n+eight\n",
		},
		{
			name: "insertion at the end",
			old:  "a\nb\n", new: "a\nb\nc\n",
			want: "--- old\n+++ new\n@@ -1,2 +1,3 @@\n a\n b\n+c\n",
		},
		{
			name: "missing final newline",
			old:  "a\nb", new: "a\nb\n",
			want: "--- old\n+++ new\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Diff("old", "new", []byte(tt.old), []byte(tt.new))
			if got != tt.want {
				t.Errorf("Diff:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestHostsDiffApplies checks on random texts that applying the diff to the old text gives the new
// one, that every hunk header counts its lines right, and that no more than diffContext
// unchanged lines start or end a hunk.
func TestHostsDiffApplies(t *testing.T) {
	t.Parallel()
	rnd := rand.New(rand.NewPCG(1, 2))
	text := func() string {
		var b strings.Builder
		n := rnd.IntN(40)
		for range n {
			fmt.Fprintf(&b, "%d\n", rnd.IntN(5))
		}
		s := b.String()
		if s != "" && rnd.IntN(4) == 0 {
			s = strings.TrimSuffix(s, "\n")
		}
		return s
	}
	// edit changes a few lines of s, so that changes are separated by runs of equal lines.
	edit := func(s string) string {
		var b strings.Builder
		for _, l := range splitLines(s) {
			switch rnd.IntN(12) {
			case 0: // deleted
			case 1:
				b.WriteString("x\n")
			case 2:
				b.WriteString("y\n" + l)
			default:
				b.WriteString(l)
			}
		}
		return b.String()
	}
	for i := range 3000 {
		old, new := text(), text()
		if i%2 == 0 {
			new = edit(old)
		}
		d := Diff("old", "new", []byte(old), []byte(new))
		if (d == "") != (old == new) {
			t.Fatalf("case %d: diff %q for %q -> %q", i, d, old, new)
		}
		if d == "" {
			continue
		}
		got, err := applyUnified(old, d)
		if err != nil {
			t.Fatalf("case %d: %v\nold %q\nnew %q\ndiff:\n%s", i, err, old, new, d)
		}
		if got != new {
			t.Fatalf("case %d: patched to %q, want %q\ndiff:\n%s", i, got, new, d)
		}
	}
}

var hunkHeader = regexp.MustCompile(`^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@$`)

// applyUnified applies a unified diff to old, checking it strictly as it goes.
func applyUnified(old, diff string) (string, error) {
	a := splitLines(old)
	lines := strings.SplitAfter(diff, "\n")
	if len(lines) < 3 || lines[0] != "--- old\n" || lines[1] != "+++ new\n" {
		return "", fmt.Errorf("bad file header")
	}
	lines = lines[2:]
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var out []string
	next := 0 // next line of a not yet copied
	for k := 0; k < len(lines); {
		m := hunkHeader.FindStringSubmatch(strings.TrimSuffix(lines[k], "\n"))
		if m == nil {
			return "", fmt.Errorf("line %q: want a hunk header", lines[k])
		}
		k++
		count := func(s string) int {
			if s == "" {
				return 1
			}
			n, _ := strconv.Atoi(s)
			return n
		}
		oldStart, oldLen, newLen := atoi(m[1]), count(m[2]), count(m[4])
		if oldLen > 0 {
			oldStart-- // 1-based; an empty range names the line before it
		}
		if oldStart < next || next > 0 && oldStart == next {
			return "", fmt.Errorf("hunk at %d overlaps or touches the previous one, ending at %d", oldStart, next)
		}
		out = append(out, a[next:oldStart]...)
		next = oldStart
		var gotOld, gotNew, lead, trail int
		changed := false
		for k < len(lines) && !strings.HasPrefix(lines[k], "@@") {
			l := lines[k]
			k++
			body := l[1:]
			if k < len(lines) && lines[k] == "\\ No newline at end of file\n" {
				body = strings.TrimSuffix(body, "\n")
				k++
			}
			if l[0] != ' ' && changed && trail > 2*diffContext {
				return "", fmt.Errorf("%d unchanged lines inside a hunk", trail)
			}
			switch l[0] {
			case ' ':
				if next >= len(a) || a[next] != body {
					return "", fmt.Errorf("context %q does not match line %d", body, next+1)
				}
				out = append(out, body)
				next++
				gotOld++
				gotNew++
				if changed {
					trail++
				} else {
					lead++
				}
			case '-':
				if next >= len(a) || a[next] != body {
					return "", fmt.Errorf("deleted %q does not match line %d", body, next+1)
				}
				next++
				gotOld++
				changed, trail = true, 0
			case '+':
				out = append(out, body)
				gotNew++
				changed, trail = true, 0
			default:
				return "", fmt.Errorf("bad line %q", l)
			}
		}
		if gotOld != oldLen || gotNew != newLen {
			return "", fmt.Errorf("hunk counts -%d +%d, header says -%d +%d", gotOld, gotNew, oldLen, newLen)
		}
		if !changed || lead > diffContext || trail > diffContext {
			return "", fmt.Errorf("hunk with %d leading and %d trailing context lines, changed %v", lead, trail, changed)
		}
	}
	out = append(out, a[next:]...)
	return strings.Join(out, ""), nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
