package config_test

import (
	"bufio"
	"encoding"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/lifeboat-dev/lifeboat/config"
)

// The example configuration shipped for /etc/lifeboat/config.toml, and the Kubernetes
// ConfigMap that carries a configuration file.
const (
	examplePath   = "../deploy/config.toml"
	configMapPath = "../deploy/kubernetes/configmap.yaml"
)

// setting matches a commented-out setting of the example: "#key = value" or "#[table]", with
// no space after the "#". Prose comments start with "# ".
var setting = regexp.MustCompile(`^#(\[|[a-z][a-z0-9_]* = )`)

// uncomment turns every commented-out setting of the example into a setting.
func uncomment(t *testing.T, example []byte) []byte {
	t.Helper()
	var b strings.Builder
	n := 0
	sc := bufio.NewScanner(strings.NewReader(string(example)))
	for sc.Scan() {
		line := sc.Text()
		if setting.MatchString(line) {
			line = strings.TrimPrefix(line, "#")
			n++
		}
		b.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("%s has no commented-out setting (#key = value)", examplePath)
	}
	return []byte(b.String())
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestExampleAsShipped: the example, copied as it is, sets nothing.
func TestExampleAsShipped(t *testing.T) {
	cfg := config.Default()
	if err := config.Parse(readFile(t, examplePath), &cfg); err != nil {
		t.Fatalf("%s as shipped: %v", examplePath, err)
	}
	if !reflect.DeepEqual(cfg, config.Default()) {
		t.Errorf("%s as shipped changes the defaults: got %+v, want %+v", examplePath, cfg, config.Default())
	}
}

// TestExampleSettings: with every setting uncommented, the example parses strictly (so it
// names no key lifeboat does not know), it names every key lifeboat knows, and the values it
// shows for keys that have a default are the defaults.
func TestExampleSettings(t *testing.T) {
	b := uncomment(t, readFile(t, examplePath))
	// Validate reads the CA bundle the example names: point it at one that exists.
	caFile := regexp.MustCompile(`(?m)^ca_file = ".*"$`)
	if !caFile.Match(b) {
		t.Fatalf("%s shows no ca_file", examplePath)
	}
	b = caFile.ReplaceAll(b, []byte(`ca_file = "testdata/ca.pem"`))
	cfg := config.Default()
	if err := config.Parse(b, &cfg); err != nil {
		t.Fatalf("%s with every setting uncommented: %v", examplePath, err)
	}

	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, key := range missingKeys(reflect.TypeFor[config.Config](), doc, "") {
		t.Errorf("%s does not show the key %s", examplePath, key)
	}

	def := config.Default()
	compareDefaults(t, reflect.ValueOf(def), reflect.ValueOf(cfg), "")
}

// missingKeys lists the keys of the struct type typ (by their toml tags, dotted) that doc does
// not have. A map of structs ([registry."docker.io"]) must have one entry with every field.
func missingKeys(typ reflect.Type, doc map[string]any, prefix string) []string {
	var missing []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		name := tomlName(f)
		if name == "" {
			continue
		}
		key := prefix + name
		v, ok := doc[name]
		if !ok {
			missing = append(missing, key)
			continue
		}
		switch {
		case f.Type.Kind() == reflect.Struct && !implementsText(f.Type):
			sub, _ := v.(map[string]any)
			missing = append(missing, missingKeys(f.Type, sub, key+".")...)
		case f.Type.Kind() == reflect.Map && f.Type.Elem().Kind() == reflect.Struct:
			entries, _ := v.(map[string]any)
			best := []string{key + ".<name>"} // no entry at all
			for entry, ev := range entries {
				sub, _ := ev.(map[string]any)
				m := missingKeys(f.Type.Elem(), sub, key+"."+entry+".")
				if best[0] == key+".<name>" || len(m) < len(best) {
					best = m
				}
				if len(best) == 0 {
					break
				}
			}
			missing = append(missing, best...)
		}
	}
	return missing
}

// compareDefaults checks that every leaf of got equals the same leaf of def where def's is not
// the zero value: the example shows the real default of every key that has one.
func compareDefaults(t *testing.T, def, got reflect.Value, prefix string) {
	t.Helper()
	for i := range def.NumField() {
		f := def.Type().Field(i)
		name := tomlName(f)
		if name == "" {
			continue
		}
		key := prefix + name
		dv, gv := def.Field(i), got.Field(i)
		switch {
		case f.Type.Kind() == reflect.Struct && !implementsText(f.Type):
			compareDefaults(t, dv, gv, key+".")
		case dv.IsZero():
			// No default: the example shows an example value.
		case !reflect.DeepEqual(dv.Interface(), gv.Interface()):
			t.Errorf("%s shows %s = %s, but its default is %s", examplePath, key, show(gv), show(dv))
		}
	}
}

// show prints a value as the configuration file writes it.
func show(v reflect.Value) string {
	if m, ok := v.Interface().(encoding.TextMarshaler); ok {
		if b, err := m.MarshalText(); err == nil {
			return strconv.Quote(string(b))
		}
	}
	return fmt.Sprintf("%#v", v.Interface())
}

func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

func implementsText(t reflect.Type) bool {
	type unmarshaler interface{ UnmarshalText([]byte) error }
	return reflect.PointerTo(t).Implements(reflect.TypeFor[unmarshaler]())
}

// TestUncomment: the marker convention tells settings from prose.
func TestUncomment(t *testing.T) {
	in := "# prose = not a setting\n#root = \"/x\"\n#[registry.\"docker.io\"]\n#endpoints = [\"https://a\"]\n#  indented = 1\n[mirror]\n"
	want := "# prose = not a setting\nroot = \"/x\"\n[registry.\"docker.io\"]\nendpoints = [\"https://a\"]\n#  indented = 1\n[mirror]\n"
	if got := string(uncomment(t, []byte(in))); got != want {
		t.Errorf("uncomment:\n%s\nwant:\n%s", got, want)
	}
}

// TestKubernetesConfigMap: the configuration file the DaemonSet mounts parses as lifeboat
// parses it.
func TestKubernetesConfigMap(t *testing.T) {
	b := configMapFile(t, readFile(t, configMapPath), "config.toml")
	cfg := config.Default()
	if err := config.Parse(b, &cfg); err != nil {
		t.Fatalf("%s: config.toml: %v", configMapPath, err)
	}
	// The DaemonSet's probes and hostPath volumes assume these.
	def := config.Default()
	if cfg.Mirror.Address != def.Mirror.Address || cfg.Root != def.Root || cfg.Plugin.Address != def.Plugin.Address || cfg.Admin.Address != def.Admin.Address {
		t.Errorf("%s: config.toml moves the mirror, root or sockets; the DaemonSet's probes and volumes assume the defaults", configMapPath)
	}
}

// configMapFile returns the block scalar "key: |" of a ConfigMap's data, with its indentation
// removed. (The manifests themselves are checked against the Kubernetes API types in
// deploy/kubernetes.)
func configMapFile(t *testing.T, yaml []byte, key string) []byte {
	t.Helper()
	lines := strings.Split(string(yaml), "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != key+": |" {
			continue
		}
		keyIndent := len(l) - len(strings.TrimLeft(l, " "))
		var b strings.Builder
		indent := -1
		for _, c := range lines[i+1:] {
			if strings.TrimSpace(c) == "" {
				b.WriteString("\n")
				continue
			}
			n := len(c) - len(strings.TrimLeft(c, " "))
			if n <= keyIndent {
				break
			}
			if indent < 0 {
				indent = n
			}
			if n < indent {
				t.Fatalf("%s: %s: line %q is indented less than the block", configMapPath, key, c)
			}
			b.WriteString(c[indent:] + "\n")
		}
		if b.Len() == 0 {
			t.Fatalf("%s: %s is empty", configMapPath, key)
		}
		return []byte(b.String())
	}
	t.Fatalf("%s has no %q block (%s: |)", configMapPath, key, key)
	return nil
}
