package config

import (
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Error is a value of the configuration that lifeboat does not accept. It names the key, and,
// when the value is the one a configuration file set, the file and the value's line and
// column. A value set after the file was read (by a flag, an environment variable) or left at
// its default claims no file or line.
//
// errors.Is(err, errdefs.ErrInvalidArgument) holds for an *Error.
type Error struct {
	// File is the configuration file the value came from: the path given to Load, or "" for
	// Parse or a value that did not come from a file.
	File string
	// Line and Column locate the value in the file, from 1; 0 when it did not come from one.
	Line, Column int
	// Key names the setting as the file writes it: "resolve.policy",
	// `registry."docker.io".ca_file`.
	Key string
	// Err says what is wrong with the value.
	Err error
}

// Error reads "config file F: line L, column C: KEY: WHAT", without the parts that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		fmt.Fprintf(&b, "config file %s: ", e.File)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d, column %d: ", e.Line, e.Column)
	}
	fmt.Fprintf(&b, "%s: %v", e.Key, e.Err)
	return b.String()
}

// Unwrap returns Err and errdefs.ErrInvalidArgument.
func (e *Error) Unwrap() []error { return []error{e.Err, errdefs.ErrInvalidArgument} }

// origin is where the values of a configuration came from: the position of every value one
// configuration file set, and the configuration as that file left it. A value still equal to
// the file's is the file's; one that differs was set later and has no line.
type origin struct {
	file    string         // the path given to Load; "" for Parse
	pos     map[string]pos // by keyName; array elements as key[i]
	decoded Config         // a deep copy, as the file left it
}

// pos is a position in the file, from 1.
type pos struct{ line, col int }

// invalid returns the error for the value at key, which get reads from a Config. elem is the
// index of the array element at fault, or -1 for the whole value. The error has the value's
// position when c's value is still the one its file set.
func (c Config) invalid(key string, elem int, get func(Config) any, err error) *Error {
	e := &Error{Key: key, Err: err}
	o := c.origin
	if o == nil || !reflect.DeepEqual(get(c), get(o.decoded)) {
		return e
	}
	p, ok := o.pos[key]
	if elem >= 0 {
		if ep, eok := o.pos[fmt.Sprintf("%s[%d]", key, elem)]; eok {
			p, ok = ep, true
		}
	}
	if ok {
		e.File, e.Line, e.Column = o.file, p.line, p.col
	}
	return e
}

// withOrigin returns a deep copy of c as the file at path (b) left it, with the positions of
// the values b sets. b has already been decoded without error. When b sets nothing, c is
// returned unchanged: no value can point into it.
func withOrigin(c Config, path string, b []byte) Config {
	pos := positions(b)
	if len(pos) == 0 {
		return c
	}
	tablePositions(b, pos)
	c.origin = nil
	c.origin = &origin{file: path, pos: pos, decoded: c.clone()}
	return c
}

// clone copies c and the maps and slices it holds.
func (c Config) clone() Config {
	if c.Registry != nil {
		c.Registry = maps.Clone(c.Registry)
		for host, r := range c.Registry {
			r.Endpoints = slices.Clone(r.Endpoints)
			if r.ShareWithPeers != nil {
				v := *r.ShareWithPeers
				r.ShareWithPeers = &v
			}
			c.Registry[host] = r
		}
	}
	c.Outage.Registries = slices.Clone(c.Outage.Registries)
	c.Cluster.Join = slices.Clone(c.Cluster.Join)
	c.Mirror.Registries = slices.Clone(c.Mirror.Registries)
	return c
}

// positions returns the position of every value that the TOML document b sets, by keyName,
// and of the elements of arrays as "key[i]". A value's position is that of its first
// character; an array's is that of its key. A document with a syntax error gives the positions
// found before it.
func positions(b []byte) map[string]pos {
	out := map[string]pos{}
	eachKeyValue(b, func(p *unstable.Parser, table []string, kv *unstable.Node) bool {
		keyValuePositions(p, out, table, kv)
		return true
	})
	return out
}

// tablePositions records the position of every table the TOML document b names (by a header
// or a dotted key), at its name's first appearance, so that an error about the name of a
// table (`registry."../x"`) can point at it.
func tablePositions(b []byte, out map[string]pos) {
	var p unstable.Parser
	p.Reset(b)
	var table []string
	for p.NextExpression() {
		e := p.Expression()
		var parts []string
		var nodes []*unstable.Node
		for it := e.Key(); it.Next(); {
			parts = append(parts, string(it.Node().Data))
			nodes = append(nodes, it.Node())
		}
		prefix := []string{}
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = parts
		case unstable.KeyValue:
			prefix, parts, nodes = table, parts[:len(parts)-1], nodes[:len(nodes)-1]
		default:
			continue
		}
		for i := range parts {
			key := keyName(append(slices.Clone(prefix), parts[:i+1]...)...)
			if _, ok := out[key]; !ok {
				out[key] = shapeOf(&p, nodes[i])
			}
		}
	}
}

// eachKeyValue calls f with every top-level key/value of the TOML document b and the table it
// is in, until f returns false or a syntax error ends the document.
func eachKeyValue(b []byte, f func(p *unstable.Parser, table []string, kv *unstable.Node) bool) {
	var p unstable.Parser
	p.Reset(b)
	var table []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e.Key())
		case unstable.KeyValue:
			if !f(&p, table, e) {
				return
			}
		}
	}
}

// durationKeys are the keys whose values are Durations.
var durationKeys = []string{"resolve.tag_max_age", "resolve.upstream_timeout", "outage.for"}

// numericDuration returns an error for the first duration in the TOML document b that is
// written as a number: TOML decodes `upstream_timeout = 1` as 1ns, which nobody means.
func numericDuration(b []byte) (err error) {
	eachKeyValue(b, func(p *unstable.Parser, table []string, kv *unstable.Node) bool {
		key := keyName(append(slices.Clone(table), keyParts(kv.Key())...)...)
		if v := kv.Value(); slices.Contains(durationKeys, key) && (v.Kind == unstable.Integer || v.Kind == unstable.Float) {
			at := shapeOf(p, v)
			err = fmt.Errorf("line %d, column %d: %s: %s is not a duration: write a number with a unit, in quotes, such as \"1s\" or \"10m\"",
				at.line, at.col, key, v.Data)
			return false
		}
		return true
	})
	return err
}

// keyValuePositions records the position of the value of kv, a key/value under the table
// prefix, and of what it holds.
func keyValuePositions(p *unstable.Parser, out map[string]pos, prefix []string, kv *unstable.Node) {
	it := kv.Key()
	if !it.Next() {
		return
	}
	keyNode := it.Node()
	path := append(slices.Clone(prefix), keyParts(kv.Key())...)
	key := keyName(path...)
	v := kv.Value()
	at := shapeOf(p, v)
	if v.Raw.Length == 0 { // arrays and inline tables: their key
		at = shapeOf(p, keyNode)
	}
	out[key] = at
	switch v.Kind {
	case unstable.Array:
		i := 0
		for c := v.Children(); c.Next(); {
			n := c.Node()
			if n.Kind == unstable.Comment {
				continue
			}
			if n.Raw.Length > 0 {
				out[fmt.Sprintf("%s[%d]", key, i)] = shapeOf(p, n)
			}
			i++
		}
	case unstable.InlineTable:
		for c := v.Children(); c.Next(); {
			if n := c.Node(); n.Kind == unstable.KeyValue {
				keyValuePositions(p, out, path, n)
			}
		}
	}
}

func shapeOf(p *unstable.Parser, n *unstable.Node) pos {
	s := p.Shape(n.Raw).Start
	return pos{line: s.Line, col: s.Column}
}

func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// keyName writes a dotted key as TOML does, quoting the parts that need it:
// registry."docker.io".endpoints.
func keyName(parts ...string) string {
	quoted := make([]string, len(parts))
	for i, k := range parts {
		if bareKey.MatchString(k) {
			quoted[i] = k
		} else {
			quoted[i] = strconv.Quote(k)
		}
	}
	return strings.Join(quoted, ".")
}

// typeMismatch matches go-toml's message for a value of the wrong TOML type.
var typeMismatch = regexp.MustCompile(`^cannot decode TOML (.+?) into (?:struct field \S+ of type )?(\S+)$`)

// expected describes the Go types of the configuration as a user would write them.
var expected = map[string]string{
	"string":                     "a string",
	"[]string":                   "an array of strings",
	"bool":                       "true or false",
	"*bool":                      "true or false",
	"int":                        "an integer",
	"config.Size":                `a size such as "20GiB"`,
	"config.Duration":            `a duration such as "1s"`,
	"map[string]config.Registry": "a table",
}

// decodeMessage rewrites a go-toml decode message for a user: without the "toml: " prefix,
// and with a value of the wrong type named by what was expected rather than by Go types.
func decodeMessage(msg string) string {
	msg = strings.TrimPrefix(msg, "toml: ")
	m := typeMismatch.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	want, ok := expected[m[2]]
	if !ok && strings.HasPrefix(m[2], "config.") {
		want, ok = "a table", true // the sections: [mirror], [cache], ...
	}
	if !ok {
		return msg
	}
	return fmt.Sprintf("expected %s, not a TOML %s", want, m[1])
}
