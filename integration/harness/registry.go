package harness

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/internal/launch"
)

// Bounds on starting and stopping the registry.
const (
	registryReadyTimeout = 30 * time.Second
	registryStopGrace    = 10 * time.Second
	registryStartTries   = 5
)

// Registry is a distribution registry (the `registry` binary from ToolsDir) serving plain HTTP
// on a loopback port, with filesystem storage in a temporary directory.
type Registry struct {
	host string
	dir  string
	proc *Process
}

// StartRegistry starts a registry on a free port of 127.0.0.1 and waits until `GET /v2/`
// answers 200. It is stopped in t.Cleanup, with its log attached to the output if the test
// failed.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	bin := Tool(t, ToolRegistry)
	dir := t.TempDir()
	var lastErr error
	for try := range registryStartTries {
		r, err := startRegistry(t, bin, filepath.Join(dir, fmt.Sprint(try)))
		if err == nil {
			return r
		}
		lastErr = err
		// Another process may have taken the port between our probe and the registry's bind.
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("harness: %v", lastErr)
	return nil
}

func startRegistry(t testing.TB, bin, dir string) (*Registry, error) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &Registry{host: fmt.Sprintf("127.0.0.1:%d", port), dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "storage"), 0o755); err != nil {
		return nil, fmt.Errorf("registry storage: %w", err)
	}
	configPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(r.config()), 0o644); err != nil {
		return nil, fmt.Errorf("writing registry config: %w", err)
	}

	cmd := exec.Command(bin, "serve", configPath)
	cmd.Env = registryEnv()
	proc, err := launch.Start("registry", cmd, filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	r.proc = proc

	client := &http.Client{Timeout: 2 * time.Second}
	err = launch.WaitFor(registryReadyTimeout, proc.Exited(), func() error {
		return launch.GetOK(client, r.URL()+"/v2/")
	})
	if err != nil {
		stopErr := proc.Stop(registryStopGrace)
		return nil, fmt.Errorf("registry on %s did not become ready: %v (stop: %v); log:\n%s", r.host, err, stopErr, proc.Log())
	}
	t.Cleanup(func() {
		if err := proc.Stop(registryStopGrace); err != nil {
			t.Errorf("harness: stopping registry: %v", err)
		}
		if t.Failed() {
			proc.AttachLog(t)
		}
	})
	return r, nil
}

// config renders the registry's YAML configuration: filesystem storage, deletes allowed, no
// debug server, no upload purging, no storage health check.
func (r *Registry) config() string {
	return fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: lifeboat-integration-test
health:
  storagedriver:
    enabled: false
`, filepath.Join(r.dir, "storage"), r.host)
}

// registryEnv is the test's environment without REGISTRY_* variables, which would override the
// config file, and with OpenTelemetry export switched off (the registry otherwise tries to
// export traces to localhost:4318).
func registryEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "REGISTRY_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) { return freePortOn("127.0.0.1") }

// freePortOn returns a TCP port on ip that was free a moment ago.
func freePortOn(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Host returns the registry's "127.0.0.1:PORT", the registry part of its image references.
func (r *Registry) Host() string { return r.host }

// URL returns the registry's base URL, "http://127.0.0.1:PORT".
func (r *Registry) URL() string { return "http://" + r.host }

// Ref returns the image reference "127.0.0.1:PORT/repo:tag".
func (r *Registry) Ref(repo, tag string) string { return r.host + "/" + repo + ":" + tag }

// Process returns the registry process (for its log).
func (r *Registry) Process() *Process { return r.proc }

// BlobGets counts the GET requests for repo's blob dgst in the registry's access log, each
// one a download the registry served (or refused).
func (r *Registry) BlobGets(repo, dgst string) int {
	return strings.Count(r.proc.Log(), `"GET /v2/`+repo+`/blobs/`+dgst)
}

// BlobGetsAtLeast is BlobGets once it counts at least n, or after 10 s. The registry writes a
// request's line once it has answered it, a moment after its client may have read the whole
// answer, so a count taken right after a GET can miss that GET.
func (r *Registry) BlobGetsAtLeast(repo, dgst string, n int) int {
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.BlobGets(repo, dgst)
		if got >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}
