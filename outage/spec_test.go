package outage

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec Spec
		want string // part of the error; "" for valid
	}{
		{name: "dns", spec: Spec{Mode: "dns"}},
		{name: "refused scoped", spec: Spec{Mode: "refused", Registries: []string{"docker.io", "localhost:5000"}, Repos: []string{"library/*"}, For: time.Minute}},
		{name: "blackhole", spec: Spec{Mode: "blackhole"}},
		{name: "reset", spec: Spec{Mode: "reset"}},
		{name: "http-429", spec: Spec{Mode: "http-429"}},
		{name: "http-400", spec: Spec{Mode: "http-400"}},
		{name: "http-599", spec: Spec{Mode: "http-599"}},
		{name: "slow default", spec: Spec{Mode: "slow"}},
		{name: "slow latency and rate", spec: Spec{Mode: "slow", Latency: time.Second, Rate: 1000}},
		{name: "flaky default", spec: Spec{Mode: "flaky"}},
		{name: "flaky full", spec: Spec{Mode: "flaky", FailRatio: 1, FailMode: "http-503", Seed: -3}},
		{name: "flaky failing slow", spec: Spec{Mode: "flaky", FailMode: "slow", Latency: time.Second}},
		{name: "target upstream", spec: Spec{Mode: "dns", Target: TargetUpstream}},
		{name: "target peers", spec: Spec{Mode: "blackhole", Target: TargetPeers}},
		{name: "target all", spec: Spec{Mode: "http-503", Target: TargetAll}},
		{name: "bad target", spec: Spec{Mode: "dns", Target: "registry"}, want: `target "registry" is not "upstream", "peers" or "all"`},
		{name: "upper case target", spec: Spec{Mode: "dns", Target: "Peers"}, want: `target "Peers"`},

		{name: "no mode", spec: Spec{}, want: "mode is missing"},
		{name: "bogus", spec: Spec{Mode: "bogus"}, want: `mode "bogus" is not one of`},
		{name: "upper case", spec: Spec{Mode: "DNS"}, want: `mode "DNS"`},
		{name: "http-99", spec: Spec{Mode: "http-99"}, want: "three-digit status"},
		{name: "http-200", spec: Spec{Mode: "http-200"}, want: "from 400 to 599"},
		{name: "http-302", spec: Spec{Mode: "http-302"}, want: "from 400 to 599"},
		{name: "http-600", spec: Spec{Mode: "http-600"}, want: "from 400 to 599"},
		{name: "http-+50", spec: Spec{Mode: "http-+50"}, want: "three-digit status"},
		{name: "http-", spec: Spec{Mode: "http-"}, want: "three-digit status"},
		{name: "http-5034", spec: Spec{Mode: "http-5034"}, want: "three-digit status"},
		{name: "empty registry", spec: Spec{Mode: "dns", Registries: []string{""}}, want: "registry name is empty"},
		{name: "registry URL", spec: Spec{Mode: "dns", Registries: []string{"https://docker.io"}}, want: `registry "https://docker.io"`},
		{name: "registry path", spec: Spec{Mode: "dns", Registries: []string{"docker.io/library"}}, want: `registry "docker.io/library"`},
		{name: "empty repo glob", spec: Spec{Mode: "dns", Repos: []string{""}}, want: "repository glob is empty"},
		{name: "bad repo glob", spec: Spec{Mode: "dns", Repos: []string{"library/[a"}}, want: `repository glob "library/[a"`},
		{name: "negative for", spec: Spec{Mode: "dns", For: -time.Second}, want: "duration (for)"},
		{name: "negative latency", spec: Spec{Mode: "slow", Latency: -time.Second}, want: "latency -1s is negative"},
		{name: "negative rate", spec: Spec{Mode: "slow", Rate: -1}, want: "rate -1 bytes/s is negative"},
		{name: "latency for dns", spec: Spec{Mode: "dns", Latency: time.Second}, want: "latency applies only to the slow mode"},
		{name: "rate for flaky dns", spec: Spec{Mode: "flaky", FailMode: "dns", Rate: 100}, want: "rate applies only to the slow mode"},
		{name: "negative ratio", spec: Spec{Mode: "flaky", FailRatio: -0.1}, want: "fail ratio -0.1 is not between 0 and 1"},
		{name: "ratio above 1", spec: Spec{Mode: "flaky", FailRatio: 1.5}, want: "fail ratio 1.5 is not between 0 and 1"},
		{name: "ratio for reset", spec: Spec{Mode: "reset", FailRatio: 0.5}, want: "fail ratio applies only to the flaky mode"},
		{name: "fail mode for dns", spec: Spec{Mode: "dns", FailMode: "refused"}, want: "fail mode applies only to the flaky mode"},
		{name: "seed for dns", spec: Spec{Mode: "dns", Seed: 4}, want: "seed applies only to the flaky mode"},
		{name: "flaky failing flaky", spec: Spec{Mode: "flaky", FailMode: "flaky"}, want: `fail mode "flaky"`},
		{name: "flaky bad fail mode", spec: Spec{Mode: "flaky", FailMode: "http-200"}, want: `fail mode "http-200"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.spec.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Validate() = %v, want ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "500000", want: 500000},
		{in: "100KiB/s", want: 100 << 10},
		{in: "1MB/s", want: 1_000_000},
		{in: "1MiB/s", want: 1 << 20},
		{in: "1.5 MiB/s", want: 3 << 19},
		{in: "2mib/s", want: 2 << 20},
		{in: "10kB/s", want: 10_000},
		{in: "10k", want: 10_000},
		{in: "64B/s", want: 64},
		{in: "1GiB", want: 1 << 30},
		{in: " 300 /s ", want: 300},
		{in: "", wantErr: true},
		{in: "/s", wantErr: true},
		{in: "fast", wantErr: true},
		{in: "0", wantErr: true},
		{in: "0.5", wantErr: true},
		{in: "-5", wantErr: true},
		{in: "1e3", wantErr: true},
		{in: "1..2MB", wantErr: true},
		{in: "1TB/s", wantErr: true},
		{in: "100Kbit/s", wantErr: true},
		{in: "99999999999GiB/s", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRate(tt.in)
			if tt.wantErr {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("ParseRate(%q) = %d, %v; want ErrInvalidArgument", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRate(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestErrorMessageAndUnwrap(t *testing.T) {
	t.Parallel()
	err := error(&Error{Mode: "dns", Err: &net.DNSError{Err: "no such host", Name: "registry-1.docker.io", IsNotFound: true}})
	if got, want := err.Error(), "lookup registry-1.docker.io: no such host (lifeboat simulated outage: dns)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("errors.As(*net.DNSError) failed for %v", err)
	}
	if !IsSimulated(err) || IsSimulated(syscall.ECONNREFUSED) || IsSimulated(nil) {
		t.Error("IsSimulated is wrong")
	}
}
