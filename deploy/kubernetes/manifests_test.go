// Package kubernetes_test checks lifeboat's Kubernetes manifests against the Kubernetes API: each
// document is decoded strictly into the k8s.io/api type of its kind, so that a misspelt or
// misplaced field, or a value of the wrong type, fails the test, and then checked for what
// the API server would refuse or what the deployment relies on. It needs no cluster and no
// network (the JSON schemas of schema validators such as kubeconform are downloaded at run
// time; the API types are the source those schemas are generated from).
//
// deploy/ is its own Go module, so that lifeboat's module does not depend on k8s.io/api.
// `make lint` runs it. chart_test.go renders the Helm chart these manifests are generated from
// and runs the same checks on what it renders.
package kubernetes_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/lifeboat-dev/lifeboat/config"
)

// namespace is where every namespaced object goes.
const namespace = "lifeboat"

// object is one decoded manifest.
type object struct {
	file string
	kind string
	meta metav1.ObjectMeta
	obj  any
}

// kinds maps apiVersion and kind to a new value of the API type.
var kinds = map[string]func() any{
	"v1/Namespace":      func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount": func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":      func() any { return &corev1.ConfigMap{} },
	"apps/v1/DaemonSet": func() any { return &appsv1.DaemonSet{} },
	kustomizationKind:   func() any { return &kustomization{} },
}

// kustomization is the part of kustomize's Kustomization that kustomization.yaml uses; the
// strict decoding refuses anything else.
type kustomization struct {
	metav1.TypeMeta `json:",inline"`
	Resources       []string `json:"resources"`
}

const kustomizationKind = "kustomize.config.k8s.io/v1beta1/Kustomization"

func load(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no manifests (*.yaml) in deploy/kubernetes")
	}
	var objs []object
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, decodeFile(t, file, b)...)
	}
	return objs
}

// decodeFile decodes each document of one file (a manifest, or a template the chart rendered).
func decodeFile(t *testing.T, file string, b []byte) []object {
	t.Helper()
	var objs []object
	for i, doc := range splitDocuments(b) {
		o, err := decode(doc)
		if err != nil {
			t.Errorf("%s, document %d: %v", file, i+1, err)
			continue
		}
		o.file = file
		objs = append(objs, o)
	}
	return objs
}

// splitDocuments splits a YAML stream at its "---" lines and drops documents that hold only
// comments.
func splitDocuments(b []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		for _, l := range strings.Split(cur.String(), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				docs = append(docs, bytes.Clone(cur.Bytes()))
				break
			}
		}
		cur.Reset()
	}
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if strings.TrimRight(l, " \r\n") == "---" {
			flush()
			continue
		}
		cur.WriteString(l)
	}
	flush()
	return docs
}

// decode reads one manifest into the API type of its kind, refusing unknown and duplicate
// fields.
func decode(doc []byte) (object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return object{}, err
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return object{}, fmt.Errorf("apiVersion %q kind %q: not a kind this test knows; add it to kinds", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return object{}, fmt.Errorf("%s: %v", tm.Kind, err)
	}
	o := object{kind: tm.Kind, obj: obj}
	if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
		o.meta = *m.GetObjectMeta().(*metav1.ObjectMeta)
	}
	return o, nil
}

func find[T any](objs []object) []*T {
	var out []*T
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestManifestsDecodeStrictly(t *testing.T) {
	checkObjects(t, load(t), "Namespace/"+namespace, "ServiceAccount/lifeboat", "ConfigMap/lifeboat", "DaemonSet/lifeboat")
}

// checkObjects: names, namespaces and labels the API server accepts, no object twice, and
// each of want ("Kind/name") present.
func checkObjects(t *testing.T, objs []object, want ...string) {
	t.Helper()
	seen := map[string]string{}
	for _, o := range objs {
		if _, ok := o.obj.(*kustomization); ok {
			continue
		}
		where := fmt.Sprintf("%s: %s %q", o.file, o.kind, o.meta.Name)
		for _, msg := range validation.IsDNS1123Subdomain(o.meta.Name) {
			t.Errorf("%s: name: %s", where, msg)
		}
		if o.kind == "Namespace" {
			if o.meta.Namespace != "" {
				t.Errorf("%s: a Namespace has no namespace", where)
			}
		} else if o.meta.Namespace != namespace {
			t.Errorf("%s: namespace %q, want %q", where, o.meta.Namespace, namespace)
		}
		for k, v := range o.meta.Labels {
			for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
				t.Errorf("%s: label %s=%s: %s", where, k, v, msg)
			}
		}
		key := o.kind + "/" + o.meta.Name
		if prev, ok := seen[key]; ok {
			t.Errorf("%s: also defined in %s", where, prev)
		}
		seen[key] = o.file
	}
	for _, kind := range want {
		if _, ok := seen[kind]; !ok {
			t.Errorf("no %s among the manifests", kind)
		}
	}
}

func TestDaemonSet(t *testing.T) {
	checkDaemonSet(t, load(t))
}

// checkDaemonSet: what the API server requires of the DaemonSet, its references to the other
// objects, and what lifeboat relies on (host network, host paths, probes, resources).
func checkDaemonSet(t *testing.T, objs []object) {
	t.Helper()
	dss := find[appsv1.DaemonSet](objs)
	if len(dss) != 1 {
		t.Fatalf("%d DaemonSets, want 1", len(dss))
	}
	ds := dss[0]
	spec := ds.Spec.Template.Spec

	// What the API server requires of a DaemonSet.
	if ds.Spec.Selector == nil {
		t.Fatal("spec.selector is required")
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatalf("spec.selector: %v", err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("spec.selector %s does not select the template's labels %v", sel, ds.Spec.Template.Labels)
	}
	if spec.RestartPolicy != "" && spec.RestartPolicy != corev1.RestartPolicyAlways {
		t.Errorf("restartPolicy %q: a DaemonSet's pods must restart Always", spec.RestartPolicy)
	}
	if len(spec.Containers) == 0 {
		t.Fatal("no containers")
	}

	// References between the manifests.
	var sas, cms []string
	for _, sa := range find[corev1.ServiceAccount](objs) {
		sas = append(sas, sa.Name)
	}
	for _, cm := range find[corev1.ConfigMap](objs) {
		cms = append(cms, cm.Name)
	}
	if !slices.Contains(sas, spec.ServiceAccountName) {
		t.Errorf("serviceAccountName %q is not among the manifests' ServiceAccounts %v", spec.ServiceAccountName, sas)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		if _, dup := volumes[v.Name]; dup {
			t.Errorf("volume %q is defined twice", v.Name)
		}
		volumes[v.Name] = v
		if v.ConfigMap != nil && !slices.Contains(cms, v.ConfigMap.Name) {
			t.Errorf("volume %q: ConfigMap %q is not among the manifests' ConfigMaps %v", v.Name, v.ConfigMap.Name, cms)
		}
		if v.HostPath != nil && !filepath.IsAbs(v.HostPath.Path) {
			t.Errorf("volume %q: hostPath %q is not absolute", v.Name, v.HostPath.Path)
		}
	}

	// What lifeboat relies on.
	if !spec.HostNetwork {
		t.Error("hostNetwork must be true: containerd reaches the mirror on the node's 127.0.0.1")
	}
	for _, c := range spec.InitContainers {
		where := "init container " + c.Name
		for _, msg := range validation.IsDNS1123Label(c.Name) {
			t.Errorf("%s: name: %s", where, msg)
		}
		for _, m := range c.VolumeMounts {
			if v, ok := volumes[m.Name]; !ok {
				t.Errorf("%s: volumeMount %q names no volume", where, m.Name)
			} else if v.HostPath != nil && v.HostPath.Path != m.MountPath {
				t.Errorf("%s: hostPath %s is mounted at %s; lifeboat's paths must be the host's", where, v.HostPath.Path, m.MountPath)
			}
		}
	}
	for _, c := range spec.Containers {
		where := "container " + c.Name
		for _, msg := range validation.IsDNS1123Label(c.Name) {
			t.Errorf("%s: name: %s", where, msg)
		}
		if c.Image == "" {
			t.Errorf("%s: no image", where)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: no CPU or memory request", where)
		}
		for _, p := range c.Ports {
			for _, msg := range validation.IsValidPortName(p.Name) {
				t.Errorf("%s: port name %q: %s", where, p.Name, msg)
			}
		}
		for name, p := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
			checkProbe(t, where+": "+name, p)
		}
		mounted := map[string]string{}
		for _, m := range c.VolumeMounts {
			v, ok := volumes[m.Name]
			if !ok {
				t.Errorf("%s: volumeMount %q names no volume", where, m.Name)
				continue
			}
			mounted[m.MountPath] = m.Name
			// containerd, on the host, uses the paths lifeboat gives it: a host path must be
			// mounted at the same path.
			if v.HostPath != nil && v.HostPath.Path != m.MountPath {
				t.Errorf("%s: hostPath %s is mounted at %s; lifeboat's paths must be the host's", where, v.HostPath.Path, m.MountPath)
			}
		}
		for _, path := range []string{"/var/lib/lifeboat", "/run/lifeboat", "/etc/lifeboat"} {
			if _, ok := mounted[path]; !ok {
				t.Errorf("%s: nothing is mounted at %s", where, path)
			}
		}
	}
}

// TestDaemonSetMetricsOnNodeIP: one ConfigMap serves every node, so the node's own IP reaches
// lifeboat through the downward API: HOST_IP from status.hostIP, then
// LIFEBOAT_METRICS_ADDRESS (the env override of serve's --metrics-address) built from it, on
// the port the metrics containerPort and the Prometheus annotations name.
func TestDaemonSetMetricsOnNodeIP(t *testing.T) {
	checkMetricsOnNodeIP(t, load(t))
}

func checkMetricsOnNodeIP(t *testing.T, objs []object) {
	t.Helper()
	ds := daemonSet(t, objs)
	c := container(t, ds.Spec.Template.Spec.Containers, "lifeboat")
	hostIP := -1
	var addr *corev1.EnvVar
	for i, e := range c.Env {
		switch e.Name {
		case "HOST_IP":
			hostIP = i
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.hostIP" || e.Value != "" {
				t.Errorf("env HOST_IP: %+v, want valueFrom.fieldRef.fieldPath status.hostIP", e)
			}
		case "LIFEBOAT_METRICS_ADDRESS":
			addr = &c.Env[i]
			// $(HOST_IP) is expanded only if HOST_IP is defined before it.
			if hostIP < 0 {
				t.Error("env LIFEBOAT_METRICS_ADDRESS comes before HOST_IP, so $(HOST_IP) is not expanded")
			}
		}
	}
	if hostIP < 0 || addr == nil {
		t.Fatalf("container lifeboat: env %+v, want HOST_IP and LIFEBOAT_METRICS_ADDRESS", c.Env)
	}
	if addr.Value != "[$(HOST_IP)]:5101" && addr.Value != "$(HOST_IP):5101" {
		t.Errorf("LIFEBOAT_METRICS_ADDRESS = %q, want the node IP and port 5101", addr.Value)
	}
	var port int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			port = p.ContainerPort
		}
	}
	if port != 5101 {
		t.Errorf("metrics containerPort %d, want 5101", port)
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != fmt.Sprint(port) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v, want prometheus.io/scrape \"true\", port %d, path /metrics", ann, port)
	}
}

// TestDaemonSetConfiguresContainerd: an init container runs `lifeboat configure containerd`
// against the node's /etc/containerd/certs.d on every node, so that nodes that join later go
// through lifeboat too, with the image of the lifeboat container.
func TestDaemonSetConfiguresContainerd(t *testing.T) {
	checkConfiguresContainerd(t, load(t))
}

func checkConfiguresContainerd(t *testing.T, objs []object) {
	t.Helper()
	ds := daemonSet(t, objs)
	spec := ds.Spec.Template.Spec
	c := container(t, spec.InitContainers, "configure-containerd")
	if main := container(t, spec.Containers, "lifeboat"); c.Image != main.Image {
		t.Errorf("init container image %q, want the lifeboat container's %q", c.Image, main.Image)
	}
	cmd := append(slices.Clone(c.Command), c.Args...)
	if len(cmd) < 3 || cmd[0] != "/usr/local/bin/lifeboat" || cmd[1] != "configure" || cmd[2] != "containerd" {
		t.Fatalf("init container command %q, want /usr/local/bin/lifeboat configure containerd ...", cmd)
	}
	flags := map[string]string{}
	for i := 3; i < len(cmd); i++ {
		name, value, ok := strings.Cut(cmd[i], "=")
		if !ok && i+1 < len(cmd) && !strings.HasPrefix(cmd[i+1], "--") && name != "--dry-run" && name != "--proxy-plugins" {
			i++
			value = cmd[i]
		}
		flags[name] = value
	}
	const hostsDir = "/etc/containerd/certs.d"
	if flags["--hosts-dir"] != hostsDir {
		t.Errorf("init container --hosts-dir %q, want %s", flags["--hosts-dir"], hostsDir)
	}
	if m, ok := flags["--mirror"]; ok && m != "http://127.0.0.1:5100" && m != "127.0.0.1:5100" {
		t.Errorf("init container --mirror %q, want the mirror's 127.0.0.1:5100", m)
	}
	if _, ok := flags["--dry-run"]; ok {
		t.Error("init container runs with --dry-run: it writes nothing")
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath != hostsDir {
			continue
		}
		mounted = true
		var v *corev1.Volume
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == m.Name {
				v = &spec.Volumes[i]
			}
		}
		if v == nil || v.HostPath == nil || v.HostPath.Path != hostsDir {
			t.Errorf("init container: %s is mounted from %+v, want hostPath %s", hostsDir, v, hostsDir)
		}
		if m.ReadOnly {
			t.Errorf("init container: %s is mounted read-only", hostsDir)
		}
	}
	if !mounted {
		t.Errorf("init container: nothing is mounted at %s", hostsDir)
	}
}

func daemonSet(t *testing.T, objs []object) *appsv1.DaemonSet {
	t.Helper()
	dss := find[appsv1.DaemonSet](objs)
	if len(dss) != 1 {
		t.Fatalf("%d DaemonSets, want 1", len(dss))
	}
	return dss[0]
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// checkProbe: an HTTP GET of the mirror's /v2/ on 127.0.0.1:5100, where the mirror listens
// (not on the pod IP).
func checkProbe(t *testing.T, where string, p *corev1.Probe) {
	t.Helper()
	if p == nil {
		t.Errorf("%s: missing", where)
		return
	}
	g := p.HTTPGet
	if g == nil {
		t.Errorf("%s: not an httpGet probe", where)
		return
	}
	if g.Host != "127.0.0.1" || g.Port != intstr.FromInt32(5100) || g.Path != "/v2/" {
		t.Errorf("%s: GET %s:%s%s, want the mirror's 127.0.0.1:5100/v2/", where, g.Host, g.Port.String(), g.Path)
	}
	if p.FailureThreshold < 0 || p.PeriodSeconds < 0 || p.TimeoutSeconds < 0 {
		t.Errorf("%s: negative timing", where)
	}
}

// TestKustomization: kustomization.yaml lists every manifest, the Namespace first.
func TestKustomization(t *testing.T) {
	objs := load(t)
	ks := find[kustomization](objs)
	if len(ks) != 1 {
		t.Fatalf("%d Kustomizations, want 1 (kustomization.yaml)", len(ks))
	}
	var want []string
	for _, o := range objs {
		if _, ok := o.obj.(*kustomization); !ok && !slices.Contains(want, o.file) {
			want = append(want, o.file)
		}
	}
	got := slices.Sorted(slices.Values(ks[0].Resources))
	if slices.Sort(want); !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources %v, want the manifests %v", ks[0].Resources, want)
	}
	if len(ks[0].Resources) == 0 || ks[0].Resources[0] != "namespace.yaml" {
		t.Errorf("kustomization.yaml should list namespace.yaml first: %v", ks[0].Resources)
	}
}

func TestConfigMapHasConfigFile(t *testing.T) {
	checkConfigMap(t, load(t))
}

// checkConfigMap: the ConfigMap carries a config.toml that lifeboat parses, and it keeps the
// root, mirror and sockets where the DaemonSet's probes and hostPath volumes expect them.
func checkConfigMap(t *testing.T, objs []object) config.Config {
	t.Helper()
	cms := find[corev1.ConfigMap](objs)
	if len(cms) != 1 {
		t.Fatalf("%d ConfigMaps, want 1", len(cms))
	}
	b := cms[0].Data["config.toml"]
	if strings.TrimSpace(b) == "" {
		t.Fatalf("ConfigMap %s has no config.toml (the DaemonSet runs lifeboat serve --config /etc/lifeboat/config.toml)", cms[0].Name)
	}
	cfg := config.Default()
	if err := config.Parse([]byte(b), &cfg); err != nil {
		t.Fatalf("ConfigMap %s: config.toml: %v", cms[0].Name, err)
	}
	def := config.Default()
	if cfg.Mirror.Address != def.Mirror.Address || cfg.Root != def.Root || cfg.Plugin.Address != def.Plugin.Address || cfg.Admin.Address != def.Admin.Address {
		t.Errorf("ConfigMap %s: config.toml moves the mirror, root or sockets; the DaemonSet's probes and volumes assume the defaults", cms[0].Name)
	}
	return cfg
}

func TestSplitDocuments(t *testing.T) {
	in := "# only a comment\n---\na: 1\n---\n\n---\nb: 2\n# trailing\n"
	got := splitDocuments([]byte(in))
	if len(got) != 2 || string(got[0]) != "a: 1\n" || string(got[1]) != "b: 2\n# trailing\n" {
		t.Errorf("splitDocuments: %q", got)
	}
}
