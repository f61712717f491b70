package admin

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lifeboat-dev/lifeboat/cache"
	"github.com/lifeboat-dev/lifeboat/endpoints"
	"github.com/lifeboat-dev/lifeboat/hosts"
	"github.com/lifeboat-dev/lifeboat/internal/serving"
	"github.com/lifeboat-dev/lifeboat/outage"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

func TestClientWithoutDaemon(t *testing.T) {
	t.Parallel()
	_, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(t.Context())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("error %v: want one sentence saying the daemon is not running at that socket", err)
	}
}

// newService serves a Service on a socket and returns a client of it.
func newService(t *testing.T, beforeStart ...func(root string)) (*Service, *Client) {
	t.Helper()
	store, err := cache.Open(t.Context(), t.TempDir(), cache.Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range beforeStart {
		fn(store.Root())
	}
	sim := outage.New()
	res, err := resolver.New(t.Context(), store, resolver.Options{NewClient: func(string, string) (endpoints.Client, error) {
		return nil, errdefs.ErrNotImplemented
	}})
	if err != nil {
		t.Fatal(err)
	}
	svc := &Service{Version: "test", StartedAt: time.Now(), Store: store, Resolver: res, Outage: sim, MirrorURL: "http://127.0.0.1:5100"}
	ctx, cancel := context.WithCancel(context.Background())
	if err := svc.Init(ctx); err != nil {
		t.Fatal(err)
	}
	dir, _ := os.MkdirTemp("", "lbadm")
	sock := filepath.Join(dir, "a.sock")
	l, err := serving.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { serving.HTTP(ctx, l, Handler(svc), time.Minute); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		res.Close()
		store.Close()
		os.RemoveAll(dir)
	})
	return svc, NewClient(sock)
}

func TestOutageLifecycleSwitchesHosts(t *testing.T) {
	t.Parallel()
	svc, c := newService(t)
	ctx := t.Context()
	hostsDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostsDir, "docker.io"), 0o755)
	original := hosts.Render("docker.io", svc.MirrorURL, true)
	file := filepath.Join(hostsDir, "docker.io", hosts.FileName)
	os.WriteFile(file, original, 0o644)

	res, err := c.StartOutage(ctx, OutageRequest{Spec: outage.Spec{Mode: "blackhole"}, HostsDir: hostsDir})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Current.Active || res.Current.Spec.Mode != "blackhole" || res.Previous.Active {
		t.Fatalf("start: %+v", res)
	}
	if b, _ := os.ReadFile(file); string(b) != string(hosts.Config{Registry: "docker.io", Mirror: svc.MirrorURL, Drill: true}.Render()) {
		t.Fatalf("hosts.toml not switched:\n%s", b)
	}
	// A second start replaces the first and says so.
	res, err = c.StartOutage(ctx, OutageRequest{Spec: outage.Spec{Mode: "http-503"}, HostsDir: hostsDir})
	if err != nil || !res.Previous.Active || res.Previous.Spec.Mode != "blackhole" || res.Current.Spec.Mode != "http-503" {
		t.Fatalf("replace: %+v %v", res, err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Outage.Spec.Mode != "http-503" || st.Version != "test" {
		t.Fatalf("status: %+v %v", st, err)
	}
	res, err = c.StopOutage(ctx)
	if err != nil || res.Current.Active || len(res.HostsRestored) != 1 {
		t.Fatalf("stop: %+v %v", res, err)
	}
	if b, _ := os.ReadFile(file); string(b) != string(original) {
		t.Fatalf("hosts.toml not restored:\n%s", b)
	}
	if _, err := c.StopOutage(ctx); !errdefs.IsNotFound(err) {
		t.Fatalf("stop with no outage: %v, want not found", err)
	}
	if _, err := c.StartOutage(ctx, OutageRequest{Spec: outage.Spec{Mode: "bogus"}}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad mode: %v, want invalid argument", err)
	}
}

func TestOutageExpiryRestoresHosts(t *testing.T) {
	t.Parallel()
	svc, c := newService(t)
	hostsDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostsDir, "docker.io"), 0o755)
	original := hosts.Render("docker.io", svc.MirrorURL, true)
	file := filepath.Join(hostsDir, "docker.io", hosts.FileName)
	os.WriteFile(file, original, 0o644)
	if _, err := c.StartOutage(t.Context(), OutageRequest{Spec: outage.Spec{Mode: "refused", For: 100 * time.Millisecond}, HostsDir: hostsDir}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, _ := os.ReadFile(file); string(b) == string(original) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hosts.toml not restored when the outage expired")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartAfterCrashRestoresHosts(t *testing.T) {
	t.Parallel()
	const mirrorURL = "http://127.0.0.1:5100"
	hostsDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostsDir, "docker.io"), 0o755)
	original := hosts.Render("docker.io", mirrorURL, true)
	file := filepath.Join(hostsDir, "docker.io", hosts.FileName)
	os.WriteFile(file, original, 0o644)
	// A daemon switched the files for a drill and was killed before the drill ended.
	newService(t, func(root string) {
		if _, err := hosts.Switch(hostsDir, filepath.Join(root, "outage-hosts"), mirrorURL, nil); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(file); string(b) == string(original) {
			t.Fatal("setup: not switched")
		}
	})
	if b, _ := os.ReadFile(file); string(b) != string(original) {
		t.Fatalf("hosts.toml not restored by the next start:\n%s", b)
	}
}

func TestHitRatio(t *testing.T) {
	for _, tc := range []struct {
		answers map[string]int64
		want    float64
	}{
		{nil, 0},
		{map[string]int64{"none": 3, "error": 2}, 0},
		{map[string]int64{"hit": 3, "miss": 1}, 0.75},
		{map[string]int64{"stale": 1, "revalidated": 1, "miss": 2, "error": 9}, 0.5},
		{map[string]int64{"peer": 3, "miss": 1}, 0.75},
	} {
		if got := newRequestStatus(tc.answers); got.HitRatio != tc.want || got.Answers == nil {
			t.Errorf("%v: hit ratio %v (answers %v), want %v", tc.answers, got.HitRatio, got.Answers, tc.want)
		}
	}
}

// TestStatusJSON checks the shape `lifeboat status --json` prints: endpoints a list with the
// configured registries before any request, and no zero times for an outage never started.
func TestStatusJSON(t *testing.T) {
	t.Parallel()
	served, c := newService(t)
	// A Service over the same parts, configured as the daemon does.
	svc := &Service{
		StartedAt: served.StartedAt, Store: served.Store, Resolver: served.Resolver, Outage: served.Outage,
		Upstreams: map[string][]string{
			"docker.io": {"https://registry-1.docker.io"},
			"ghcr.io":   {"https://ghcr.example", "https://ghcr.io"},
		},
		Listeners: map[string]string{"mirror": "127.0.0.1:5100", "plugin": "/run/lifeboat/lifeboat.sock"},
	}

	st := svc.Status(t.Context())
	var got []string
	for _, e := range st.Endpoints {
		if !e.Up || !e.Since.Equal(svc.StartedAt) {
			t.Errorf("endpoint %+v not contacted yet: want it up since the start", e)
		}
		got = append(got, e.Registry+" "+e.Endpoint)
	}
	if want := "docker.io https://registry-1.docker.io,ghcr.io https://ghcr.example,ghcr.io https://ghcr.io"; strings.Join(got, ",") != want {
		t.Errorf("endpoints %q, want %q", got, want)
	}

	b, err := json.Marshal(svc.Status(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Endpoints json.RawMessage            `json:"endpoints"`
		Outage    map[string]json.RawMessage `json:"outage"`
		Listeners map[string]string          `json:"listeners"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"since", "until", "ended"} {
		if v, ok := raw.Outage[k]; ok {
			t.Errorf("outage never started has %s %s, want none", k, v)
		}
	}
	if raw.Listeners["plugin"] == "" {
		t.Errorf("listeners %v without the plugin socket", raw.Listeners)
	}

	// Without a configured registry (the CLI's own Service) endpoints is still a list.
	svc.Upstreams = nil
	b, _ = json.Marshal(svc.Status(t.Context()))
	json.Unmarshal(b, &raw)
	if string(raw.Endpoints) != "[]" {
		t.Errorf("endpoints with none in use: %s, want []", raw.Endpoints)
	}

	// An outage started has its since, and reads back whole.
	if _, err := c.StartOutage(t.Context(), OutageRequest{Spec: outage.Spec{Mode: "dns"}}); err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(svc.Status(t.Context()))
	raw.Outage = nil
	json.Unmarshal(b, &raw)
	if _, ok := raw.Outage["since"]; !ok {
		t.Errorf("outage in force without its since: %s", b)
	}
	if _, ok := raw.Outage["until"]; ok {
		t.Errorf("outage until stopped has an until: %s", b)
	}
	st, err = c.Status(t.Context())
	if err != nil || !st.Outage.Active || st.Outage.Since.IsZero() || st.Outage.Spec.Mode != "dns" {
		t.Errorf("status read back: %+v, %v", st.Outage, err)
	}
}

// TestClientErrorsKeepTheirClass checks that an error answer reaches the client with the
// daemon's message, its class named once, and the class for errors.Is.
func TestClientErrorsKeepTheirClass(t *testing.T) {
	t.Parallel()
	_, c := newService(t)
	_, err := c.StopOutage(t.Context())
	if !errdefs.IsNotFound(err) || err.Error() != "no outage is being simulated: not found" {
		t.Errorf("stop without an outage: %q (not found: %v), want the daemon's message, not found", err, errdefs.IsNotFound(err))
	}
	_, err = c.StartOutage(t.Context(), OutageRequest{Spec: outage.Spec{Mode: "bogus"}})
	if !errdefs.IsInvalidArgument(err) || strings.Count(err.Error(), "invalid argument") != 1 {
		t.Errorf("start with a bad mode: %q, want one invalid argument", err)
	}
}
