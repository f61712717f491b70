package oci

import "testing"

func TestSimulatedOutageIn(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ text, want string }{
		{"lookup registry-1.docker.io: no such host (lifeboat simulated outage: dns)", "lifeboat simulated outage: dns"},
		{`upstream 127.0.0.1:5000: GET /v2/x/manifests/1: 503 Service Unavailable: UNAVAILABLE (lifeboat simulated outage: http-503) (lifeboat simulated outage: http-503)`, "lifeboat simulated outage: http-503"},
		{"every upstream endpoint is down (https://a since 2025: dial tcp 10.0.0.1:443: connect: connection refused (lifeboat simulated outage: flaky/refused))", "lifeboat simulated outage: flaky/refused"},
		{"dial tcp 10.0.0.1:443: connect: connection refused", ""},
		{"lifeboat simulated outage: ", ""},
		{"lifeboat simulated outage: Blackhole", ""},
	} {
		if got := SimulatedOutageIn(tc.text); got != tc.want {
			t.Errorf("SimulatedOutageIn(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}
