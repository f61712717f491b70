package kubernetes_test

import (
	"flag"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"

	"github.com/lifeboat-dev/lifeboat/deploy/internal/rulefile"
)

// update rewrites this directory's generated manifests from the chart: `make manifests`.
var update = flag.Bool("update", false, "rewrite deploy/kubernetes from the Helm chart rendered with its default values")

const (
	chartDir = "../helm/lifeboat"
	// The rules the chart's PrometheusRule carries.
	rulesFile = "../prometheus/lifeboat-rules.yaml"
	// The release the plain manifests are rendered as: its name makes the objects' names.
	release = "lifeboat"
	// generatedHeader starts each manifest rendered from the chart.
	generatedHeader = "# Generated from deploy/helm/lifeboat with its default values by `make manifests`:\n# edit the chart, not this file.\n"
)

// handKept are this directory's manifests that are not rendered from the chart: the Namespace
// (Helm keeps its release record in the release's namespace, so the chart cannot create that
// namespace) and the Kustomization that applies them all.
var handKept = []string{"namespace.yaml", "kustomization.yaml"}

// The Prometheus Operator's kinds, as far as the chart uses them; the strict decoding refuses
// any other field. (Their Go types live in the operator's module, which is not needed for this.)
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              rulefile.File `json:"spec"`
}

func init() {
	kinds["v1/Service"] = func() any { return &corev1.Service{} }
	kinds["monitoring.coreos.com/v1/ServiceMonitor"] = func() any { return &serviceMonitor{} }
	kinds["monitoring.coreos.com/v1/PrometheusRule"] = func() any { return &prometheusRule{} }
}

// render renders the chart as `helm template lifeboat deploy/helm/lifeboat -n lifeboat -f
// valuesFile` would, with Helm's own packages (strict: a value the templates name but the
// values lack is an error). It returns each template's output by file name, empty ones left out.
func render(t *testing.T, valuesFile string) map[string]string {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals := chartutil.Values{}
	if valuesFile != "" {
		if vals, err = chartutil.ReadValuesFile(valuesFile); err != nil {
			t.Fatal(err)
		}
	}
	opts := chartutil.ReleaseOptions{Name: release, Namespace: namespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValues(ch, vals, opts, nil)
	if err != nil {
		t.Fatalf("%s: %v", valuesFile, err)
	}
	out, err := engine.Engine{Strict: true}.Render(ch, rv)
	if err != nil {
		t.Fatalf("%s: %v", valuesFile, err)
	}
	files := map[string]string{}
	for name, s := range out {
		if s = strings.TrimLeft(s, "\n"); strings.TrimSpace(s) == "" || path.Ext(name) != ".yaml" {
			continue
		}
		files[path.Base(name)] = strings.TrimRight(s, "\n") + "\n"
	}
	return files
}

func renderObjects(t *testing.T, valuesFile string) []object {
	t.Helper()
	var objs []object
	files := render(t, valuesFile)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for name := range files {
			if !yield(name) {
				return
			}
		}
	}) {
		objs = append(objs, decodeFile(t, "templates/"+name, []byte(files[name]))...)
	}
	return objs
}

// TestChartLint: `helm lint` of the chart with each values file finds nothing to warn about.
func TestChartLint(t *testing.T) {
	for _, valuesFile := range valuesFiles(t) {
		vals := map[string]any{}
		if valuesFile != "" {
			v, err := chartutil.ReadValuesFile(valuesFile)
			if err != nil {
				t.Fatal(err)
			}
			vals = v.AsMap()
		}
		for _, m := range lint.All(chartDir, vals, namespace, false).Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint -f %s: %s", valuesFile, m)
			} else {
				t.Logf("helm lint -f %s: %s", valuesFile, m)
			}
		}
	}
}

// valuesFiles are the chart's test values, ci/*-values.yaml as chart-testing names them, and
// "" for the defaults alone.
func valuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) < 2 {
		t.Fatalf("chart test values %v (%v), want at least two ci/*-values.yaml", files, err)
	}
	return append([]string{""}, files...)
}

// TestChartRenders: with each values file, every object the chart renders decodes strictly into
// its API type and passes the checks the plain manifests pass; then what each file is for.
func TestChartRenders(t *testing.T) {
	extra := map[string]func(t *testing.T, objs []object){
		"private-registry-values.yaml": checkPrivateRegistry,
		"monitoring-values.yaml":       checkMonitoring,
		"cluster-values.yaml":          checkCluster,
	}
	for _, valuesFile := range valuesFiles(t) {
		name := filepath.Base(valuesFile)
		if valuesFile == "" {
			name = "defaults"
		}
		t.Run(name, func(t *testing.T) {
			objs := renderObjects(t, valuesFile)
			checkObjects(t, objs, "ServiceAccount/lifeboat", "ConfigMap/lifeboat", "DaemonSet/lifeboat")
			checkDaemonSet(t, objs)
			checkMetricsOnNodeIP(t, objs)
			checkConfiguresContainerd(t, objs)
			checkConfigMap(t, objs)
			if f := extra[name]; f != nil {
				f(t, objs)
			} else if valuesFile != "" {
				t.Errorf("%s: no check says what this values file is for", valuesFile)
			}
		})
	}
}

// checkPrivateRegistry: the registry's endpoints reach lifeboat's configuration, its
// credentials come from the existing Secret, mounted where [auth] docker_config points, and
// the init container configures containerd for the registries named.
func checkPrivateRegistry(t *testing.T, objs []object) {
	cfg := checkConfigMap(t, objs)
	reg, ok := cfg.Registry["registry.example.com"]
	if !ok || !slices.Equal(reg.Endpoints, []string{"https://registry.example.com", "https://mirror.example.com"}) {
		t.Errorf("config: registry.example.com %+v, want its two endpoints", reg)
	}
	ds := daemonSet(t, objs)
	spec := ds.Spec.Template.Spec
	var secret *corev1.Volume
	for i, v := range spec.Volumes {
		if v.Secret != nil {
			secret = &spec.Volumes[i]
		}
	}
	if secret == nil || secret.Secret.SecretName != "registry-example-com" || len(secret.Secret.Items) != 1 || secret.Secret.Items[0].Path != "config.json" {
		t.Fatalf("volumes %+v, want the Secret registry-example-com's docker config as config.json", spec.Volumes)
	}
	c := container(t, spec.Containers, "lifeboat")
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == secret.Name {
			mounted = m.ReadOnly && path.Join(m.MountPath, "config.json") == cfg.Auth.DockerConfig
		}
	}
	if !mounted {
		t.Errorf("[auth] docker_config %q is not the read-only Secret's config.json (mounts %+v)", cfg.Auth.DockerConfig, c.VolumeMounts)
	}
	init := container(t, spec.InitContainers, "configure-containerd")
	if !strings.Contains(strings.Join(init.Command, " "), "--registry registry.example.com") {
		t.Errorf("init container %q does not configure registry.example.com", init.Command)
	}
	if main := container(t, spec.Containers, "lifeboat"); *main.SecurityContext.Privileged {
		t.Error("proxyPlugins.enabled=false, and lifeboat still runs privileged")
	}
}

// checkMonitoring: the ServiceMonitor selects the headless Service, which selects the pods on
// their metrics port; the scrape job is "lifeboat", which the alerts select; the
// PrometheusRule's spec is deploy/prometheus/lifeboat-rules.yaml.
func checkMonitoring(t *testing.T, objs []object) {
	sms, svcs, rules := find[serviceMonitor](objs), find[corev1.Service](objs), find[prometheusRule](objs)
	if len(sms) != 1 || len(svcs) != 1 || len(rules) != 1 {
		t.Fatalf("%d ServiceMonitors, %d Services, %d PrometheusRules; want one each", len(sms), len(svcs), len(rules))
	}
	sm, svc := sms[0], svcs[0]
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not select the Service's labels %v", sm.Spec.Selector, svc.Labels)
	}
	if !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, svc.Namespace) {
		t.Errorf("ServiceMonitor looks in %v, not in the Service's namespace %s", sm.Spec.NamespaceSelector.MatchNames, svc.Namespace)
	}
	if job := svc.Labels[sm.Spec.JobLabel]; job != "lifeboat" {
		t.Errorf("scrape job %q (the Service's label %q), want lifeboat, which the alerts select", job, sm.Spec.JobLabel)
	}
	ds := daemonSet(t, objs)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("Service: clusterIP %q, selector %v; want a headless Service selecting the pods %v", svc.Spec.ClusterIP, svc.Spec.Selector, ds.Spec.Template.Labels)
	}
	c := container(t, ds.Spec.Template.Spec.Containers, "lifeboat")
	for _, e := range sm.Spec.Endpoints {
		found := false
		for _, p := range svc.Spec.Ports {
			found = found || (p.Name == e.Port && slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool {
				return cp.Name == p.TargetPort.String() && cp.ContainerPort == p.Port
			}))
		}
		if !found || e.Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoint %+v: not the Service's port of the metrics containerPort, at /metrics", e)
		}
	}
	want, err := rulefile.Load(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rules[0].Spec, want) {
		t.Errorf("the PrometheusRule's spec is not %s", rulesFile)
	}
}

// checkCluster: the headless Service lifeboat-peers publishes every pod, ready or not, on the
// gossip (TCP and UDP) and peer ports the container declares; the DaemonSet joins through its
// name, names each node after the Kubernetes node and advertises the pod's IP; the key is the
// Secret's, beside config.toml at the path [cluster] secret_file names, mode 0400; config.toml
// carries the rest of [cluster]. The tier is on only here: no other values file has the Service.
func checkCluster(t *testing.T, objs []object) {
	var svc *corev1.Service
	for _, s := range find[corev1.Service](objs) {
		if s.Name == "lifeboat-peers" {
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("no Service lifeboat-peers")
	}
	ds := daemonSet(t, objs)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("Service lifeboat-peers: clusterIP %q, publishNotReadyAddresses %v, selector %v; want headless, true, selecting the pods",
			svc.Spec.ClusterIP, svc.Spec.PublishNotReadyAddresses, svc.Spec.Selector)
	}
	spec := ds.Spec.Template.Spec
	c := container(t, spec.Containers, "lifeboat")
	want := map[string]corev1.ContainerPort{
		"gossip":     {Name: "gossip", ContainerPort: 7946, Protocol: corev1.ProtocolTCP},
		"gossip-udp": {Name: "gossip-udp", ContainerPort: 7946, Protocol: corev1.ProtocolUDP},
		"peer":       {Name: "peer", ContainerPort: 5102, Protocol: corev1.ProtocolTCP},
	}
	for _, p := range svc.Spec.Ports {
		w, ok := want[p.Name]
		if !ok || p.TargetPort.String() != w.Name || p.Port != w.ContainerPort || p.Protocol != w.Protocol || !slices.Contains(c.Ports, w) {
			t.Errorf("Service port %+v is not one of the container's ports %+v", p, c.Ports)
		}
		delete(want, p.Name)
	}
	if len(want) > 0 {
		t.Errorf("the Service lacks the ports %v", want)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	field := func(name string) string {
		if e, ok := env[name]; ok && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
		return ""
	}
	if got := env["LIFEBOAT_CLUSTER_JOIN"].Value; got != "lifeboat-peers."+namespace+".svc.cluster.local:7946" {
		t.Errorf("LIFEBOAT_CLUSTER_JOIN = %q, want the headless Service's name and gossip port", got)
	}
	if field("LIFEBOAT_CLUSTER_NODE_NAME") != "spec.nodeName" || field("POD_IP") != "status.podIP" || env["LIFEBOAT_CLUSTER_ADVERTISE_ADDRESS"].Value != "$(POD_IP)" {
		t.Errorf("node name, pod IP or advertise address not from the downward API: %+v", c.Env)
	}
	if env["LIFEBOAT_CLUSTER_GOSSIP_ADDRESS"].Value != "[$(POD_IP)]:7946" || env["LIFEBOAT_CLUSTER_PEER_ADDRESS"].Value != "[$(POD_IP)]:5102" {
		t.Errorf("gossip and peer addresses %+v, want the pod's IP on the ports", c.Env)
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q: the pods must resolve the Service's name", spec.DNSPolicy)
	}
	cfg := checkConfigMap(t, objs)
	if cfg.Cluster.SecretFile != "/etc/lifeboat/cluster.key" || cfg.Cluster.Replicas != 2 || !cfg.Cluster.Coalesce {
		t.Errorf("config.toml [cluster] %+v", cfg.Cluster)
	}
	var keyMode int32
	for _, v := range spec.Volumes {
		if v.Name != "config" || v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.Secret != nil && src.Secret.Name == "lifeboat-cluster-key" {
				for _, it := range src.Secret.Items {
					if it.Key == "cluster.key" && it.Path == "cluster.key" && it.Mode != nil {
						keyMode = *it.Mode
					}
				}
			}
		}
	}
	if keyMode != 0o400 {
		t.Errorf("the key is not the Secret's cluster.key at cluster.key with mode 0400 in the config volume (mode %o): %+v", keyMode, spec.Volumes)
	}
	for _, m := range c.VolumeMounts {
		if m.Name == "config" && (m.MountPath != path.Dir(cfg.Cluster.SecretFile) || !m.ReadOnly) {
			t.Errorf("config volume mounted at %s (read-only %v), want %s read-only", m.MountPath, m.ReadOnly, path.Dir(cfg.Cluster.SecretFile))
		}
	}
}

// TestChartRefuses: values the chart cannot honour stop the install with a message that says
// why (values.schema.json, or the templates' own checks).
func TestChartRefuses(t *testing.T) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, values, want string
	}{
		{"misspelt key", "cache: {max_size: 20GiB}", "max_size"},
		{"unknown tag policy", "resolve: {policy: cache-only}", "policy"},
		{"fallback", "containerd: {fallback: never}", "fallback"},
		{"password in values", "registries: {r.example.com: {password: s3cret}}", "registryCredentials"},
		{"ServiceMonitor without metrics on the node IP", "serviceMonitor: {enabled: true}\nmetrics: {onNodeIP: false}", "onNodeIP"},
		{"cluster replicas", "cluster: {enabled: true, replicas: 17}", "replicas"},
		{"cluster misspelt key", "cluster: {enable: true}", "enable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(tc.values))
			if err != nil {
				t.Fatal(err)
			}
			opts := chartutil.ReleaseOptions{Name: release, Namespace: namespace, Revision: 1, IsInstall: true}
			rv, err := chartutil.ToRenderValues(ch, vals, opts, nil)
			if err == nil {
				_, err = engine.Engine{Strict: true}.Render(ch, rv)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("values %q: error %v, want one that mentions %q", tc.values, err, tc.want)
			}
		})
	}
}

// TestPlainManifests: this directory's manifests are the chart rendered with its default values
// (`make manifests` writes them), besides the hand-kept Namespace and Kustomization.
func TestPlainManifests(t *testing.T) {
	files := render(t, "")
	existing, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range files {
		want := generatedHeader + s
		if *update {
			if err := os.WriteFile(name, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(name)
		if err != nil || string(got) != want {
			t.Errorf("deploy/kubernetes/%s is not the chart's templates/%s rendered with the default values: run `make manifests`", name, name)
		}
	}
	for _, name := range existing {
		if _, ok := files[name]; !ok && !slices.Contains(handKept, name) {
			if *update {
				if err := os.Remove(name); err != nil {
					t.Fatal(err)
				}
				continue
			}
			t.Errorf("deploy/kubernetes/%s is neither rendered from the chart nor kept by hand (%v): run `make manifests`", name, handKept)
		}
	}
}
