package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/integration/harness"
	"github.com/lifeboat-dev/lifeboat/outage"
)

// TestOutageFromStartUp starts `lifeboat serve` with an outage already in force, once from
// --simulate-outage and once from the config file's [outage] table: before any request, the
// daemon reports the outage (`lifeboat outage status --json`) and an image it never cached
// fails with the outage's reason; `lifeboat outage stop --json` ends it and the image comes
// through from the upstream.
func TestOutageFromStartUp(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	reg := harness.StartRegistry(t)
	for i, tc := range []struct {
		name       string
		opts       harness.LifeboatOptions
		mode       string
		registries []string
		lasts      time.Duration // [outage] for; 0: until stopped
	}{
		{
			name: "flag",
			opts: harness.LifeboatOptions{Args: []string{"--simulate-outage", "http-503"}},
			mode: "http-503",
		},
		{
			name:       "config",
			opts:       harness.LifeboatOptions{ExtraConfig: fmt.Sprintf("[outage]\nmode = \"refused\"\nregistries = [%q]\nfor = \"1h\"\n", reg.Host())},
			mode:       "refused",
			registries: []string{reg.Host()},
			lasts:      time.Hour,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			repo := fmt.Sprintf("library/startup%d", i)
			reg.PushRandom(t, repo, "1", 1, 4096)
			opts := tc.opts
			opts.Upstreams = map[string][]string{reg.Host(): {reg.URL()}}
			lb := harness.StartLifeboat(t, opts)

			var st outage.Status
			cliJSON(t, lb, &st, "outage", "status", "--json")
			if !st.Active || st.Spec.Mode != tc.mode || strings.Join(st.Spec.Registries, ",") != strings.Join(tc.registries, ",") {
				t.Fatalf("outage status --json after start-up: %+v, want active %s for registries %v", st, tc.mode, tc.registries)
			}
			if got := st.Until.Sub(st.Since); (tc.lasts == 0) != st.Until.IsZero() || (tc.lasts != 0 && got != tc.lasts) {
				t.Errorf("outage status --json: from %s until %s, want it to last %v (0: until stopped)", st.Since, st.Until, tc.lasts)
			}

			path := "/v2/" + repo + "/manifests/1?ns=" + reg.Host()
			if body := mirrorGET(t, lb, path, http.StatusNotFound); !strings.Contains(body, "simulated outage") {
				t.Errorf("a never-cached image during the start-up outage: %s, want the outage named", body)
			}
			cliJSON(t, lb, &st, "outage", "status", "--json")
			if st.Affected < 1 || st.Faults[tc.mode] < 1 {
				t.Errorf("outage status --json after a request: affected %d, faults %v; want the request counted as %s", st.Affected, st.Faults, tc.mode)
			}

			var stopped admin.OutageResult
			cliJSON(t, lb, &stopped, "outage", "stop", "--json")
			if stopped.Previous.Spec.Mode != tc.mode || stopped.Previous.Ended.IsZero() || stopped.Current.Active {
				t.Errorf("outage stop --json: %+v, want the %s outage ended and none in force", stopped, tc.mode)
			}
			harness.WaitFor(t, "the image to come through from the upstream", 10*time.Second, nil, func() error {
				_, err := mirrorHead(t, lb, path)
				return err
			})
		})
	}
}

// TestOutageJSON checks what `lifeboat outage start|status|stop --json` print, which scripts
// parse: the outage started with its settings, its state while in force, and what stop ended.
func TestOutageJSON(t *testing.T) {
	harness.RequireRoot(t)
	t.Parallel()
	reg := harness.StartRegistry(t)
	lb := harness.StartLifeboat(t, harness.LifeboatOptions{Upstreams: map[string][]string{reg.Host(): {reg.URL()}}})

	var st outage.Status
	cliJSON(t, lb, &st, "outage", "status", "--json")
	if st.Active || st.Spec.Mode != "" {
		t.Fatalf("outage status --json before any outage: %+v, want none", st)
	}

	var started admin.OutageResult
	cliJSON(t, lb, &started, "outage", "start", "--json", "--mode", "slow", "--latency", "2s", "--rate", "1MiB/s", "--registry", reg.Host(), "--for", "10m")
	want := outage.Spec{Mode: "slow", Latency: 2 * time.Second, Rate: 1 << 20, Registries: []string{reg.Host()}, For: 10 * time.Minute}
	if cur := started.Current; !cur.Active || !sameSpec(cur.Spec, want) || cur.Since.IsZero() || cur.Until.Sub(cur.Since) != want.For || started.Previous.Active {
		t.Fatalf("outage start --json: %+v, want the slow outage %+v in force for 10m and none before", started, want)
	}

	var replaced admin.OutageResult
	cliJSON(t, lb, &replaced, "outage", "start", "--json", "--mode", "blackhole")
	if !replaced.Previous.Active || replaced.Previous.Spec.Mode != "slow" || !replaced.Current.Active || replaced.Current.Spec.Mode != "blackhole" {
		t.Errorf("outage start --json over a running outage: %+v, want slow replaced by blackhole", replaced)
	}

	cliJSON(t, lb, &st, "outage", "status", "--json")
	if !st.Active || st.Spec.Mode != "blackhole" || !st.Since.Equal(replaced.Current.Since) {
		t.Errorf("outage status --json: %+v, want the blackhole outage started at %s", st, replaced.Current.Since)
	}

	var stopped admin.OutageResult
	cliJSON(t, lb, &stopped, "outage", "stop", "--json")
	if stopped.Previous.Spec.Mode != "blackhole" || stopped.Previous.Ended.IsZero() || stopped.Current.Active {
		t.Errorf("outage stop --json: %+v, want the blackhole outage ended and none in force", stopped)
	}
	cliJSON(t, lb, &st, "outage", "status", "--json")
	if st.Active {
		t.Errorf("outage status --json after stop: %+v, want none in force", st)
	}
}

// cliJSON runs a lifeboat subcommand against lb and decodes its standard output, which must
// be one JSON document and nothing else, into v.
func cliJSON(t *testing.T, lb *harness.Lifeboat, v any, args ...string) {
	t.Helper()
	out, err := lb.CLI(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("lifeboat %s printed no JSON of the documented shape: %v\n%s", strings.Join(args, " "), err, out)
	}
	if dec.More() {
		t.Fatalf("lifeboat %s printed more than one JSON document:\n%s", strings.Join(args, " "), out)
	}
}

// sameSpec compares the settings `outage start` flags set.
func sameSpec(a, b outage.Spec) bool {
	return a.Mode == b.Mode && a.Latency == b.Latency && a.Rate == b.Rate && a.For == b.For &&
		strings.Join(a.Registries, ",") == strings.Join(b.Registries, ",")
}
