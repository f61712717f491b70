package hosts

import (
	"fmt"
	"strings"
)

// diffContext is the number of unchanged lines shown around each change, as diff -u does.
const diffContext = 3

// Diff returns a unified diff (diff -u) that turns oldText, named oldName, into newText, named
// newName, or "" when they are equal. A missing file is passed as empty text named /dev/null.
// It is made for files of a few hundred lines at most, such as hosts.toml: it takes time and
// memory proportional to the product of the two line counts.
func Diff(oldName, newName string, oldText, newText []byte) string {
	a, b := splitLines(string(oldText)), splitLines(string(newText))
	ops := editScript(a, b)
	var out strings.Builder
	for _, h := range hunks(ops) {
		if out.Len() == 0 {
			fmt.Fprintf(&out, "--- %s\n+++ %s\n", oldName, newName)
		}
		fmt.Fprintf(&out, "@@ -%s +%s @@\n", hunkRange(h.oldStart, h.oldLen), hunkRange(h.newStart, h.newLen))
		for _, o := range ops[h.first:h.last] {
			line := o.line
			switch o.kind {
			case opEqual:
				out.WriteByte(' ')
			case opDelete:
				out.WriteByte('-')
			case opInsert:
				out.WriteByte('+')
			}
			out.WriteString(line)
			if !strings.HasSuffix(line, "\n") {
				out.WriteString("\n\\ No newline at end of file\n")
			}
		}
	}
	return out.String()
}

// splitLines splits s into lines that keep their "\n"; the last one lacks it if s does.
func splitLines(s string) []string {
	var lines []string
	for s != "" {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			lines = append(lines, s)
			break
		}
		lines = append(lines, s[:i+1])
		s = s[i+1:]
	}
	return lines
}

type opKind int

const (
	opEqual opKind = iota
	opDelete
	opInsert
)

// op is one line of the edit script; oldLine and newLine are the 0-based positions in the old
// and new text that the line is at (or would be inserted or deleted at).
type op struct {
	kind             opKind
	line             string
	oldLine, newLine int
}

// editScript returns a shortest edit script from a to b, from their longest common subsequence.
// Deletions come before insertions within a change, as diff -u prints them.
func editScript(a, b []string) []op {
	n, m := len(a), len(b)
	// lcs[i][j] is the length of the longest common subsequence of a[i:] and b[j:].
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var ops []op
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			ops = append(ops, op{opEqual, a[i], i, j})
			i++
			j++
		case j == m || i < n && lcs[i+1][j] >= lcs[i][j+1]:
			ops = append(ops, op{opDelete, a[i], i, j})
			i++
		default:
			ops = append(ops, op{opInsert, b[j], i, j})
			j++
		}
	}
	return ops
}

// hunk is ops[first:last] with the line ranges it covers.
type hunk struct {
	first, last      int
	oldStart, oldLen int // 0-based start
	newStart, newLen int
}

// hunks groups the changes of ops with diffContext lines of context around them, merging
// changes whose contexts touch or overlap.
func hunks(ops []op) []hunk {
	var hs []hunk
	for k := 0; k < len(ops); {
		if ops[k].kind == opEqual {
			k++
			continue
		}
		first := max(0, k-diffContext)
		// Extend over changes separated by at most 2*diffContext equal lines.
		last := k
		for last < len(ops) {
			if ops[last].kind != opEqual {
				last++
				continue
			}
			run := last
			for run < len(ops) && ops[run].kind == opEqual {
				run++
			}
			if run == len(ops) || run-last > 2*diffContext {
				last = min(run, last+diffContext)
				break
			}
			last = run
		}
		h := hunk{first: first, last: last, oldStart: ops[first].oldLine, newStart: ops[first].newLine}
		for _, o := range ops[first:last] {
			if o.kind != opInsert {
				h.oldLen++
			}
			if o.kind != opDelete {
				h.newLen++
			}
		}
		hs = append(hs, h)
		k = last
	}
	return hs
}

// hunkRange formats a hunk's range the way diff -u does: 1-based "start,len", "start" alone for
// one line, and for an empty range the line before it ("0,0" at the top of the file).
func hunkRange(start, n int) string {
	switch n {
	case 0:
		return fmt.Sprintf("%d,0", start)
	case 1:
		return fmt.Sprintf("%d", start+1)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}
