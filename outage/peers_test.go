package outage

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// peerClient returns a client whose transport is a fresh base wrapped by sim for peer traffic.
func (u *upstream) peerClient(t *testing.T, sim *Simulator) *http.Client {
	t.Helper()
	base := u.srv.Client().Transport.(*http.Transport).Clone()
	t.Cleanup(base.CloseIdleConnections)
	return &http.Client{Transport: sim.WrapPeers(base)}
}

// TestTargets: an outage cuts the traffic its target names, and lets the rest through to the
// real servers: a registry's through Wrap, the cluster's through WrapPeers.
func TestTargets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		target             string
		upstreamCut, peers bool
	}{
		{target: "", upstreamCut: true},
		{target: TargetUpstream, upstreamCut: true},
		{target: TargetPeers, peers: true},
		{target: TargetAll, upstreamCut: true, peers: true},
	}
	for _, tt := range tests {
		t.Run("target="+tt.target, func(t *testing.T) {
			t.Parallel()
			reg, peer := newUpstream(t), newUpstream(t)
			sim := start(t, Spec{Mode: ModeDNS, Target: tt.target})
			regClient, peerClient := reg.client(t, sim, "docker.io"), peer.peerClient(t, sim)

			check := func(name string, c *http.Client, u *upstream, path string, cut bool) {
				t.Helper()
				resp, err := do(t.Context(), c, http.MethodGet, u.url(path))
				if cut {
					var dnsErr *net.DNSError
					if !errors.As(err, &dnsErr) || !IsSimulated(err) {
						t.Errorf("%s: err = %v, want a simulated *net.DNSError", name, err)
					}
					if u.hits.Load() != 0 {
						t.Errorf("%s: the server got %d requests, want none", name, u.hits.Load())
					}
					return
				}
				if err != nil {
					t.Fatalf("%s: %v, want the real answer", name, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || u.hits.Load() != 1 {
					t.Errorf("%s: %s with %d requests at the server, want 200 with 1", name, resp.Status, u.hits.Load())
				}
			}
			check("registry", regClient, reg, "/v2/library/alpine/manifests/3.20", tt.upstreamCut)
			check("peer", peerClient, peer, "/v2/library/alpine/blobs/sha256:aa?ns=docker.io", tt.peers)
		})
	}
}

// TestPeersSimulatedAnswer: a synthesized answer to a peer request says it is simulated, as
// one to a registry request does, and nothing reaches the peer.
func TestPeersSimulatedAnswer(t *testing.T) {
	t.Parallel()
	peer := newUpstream(t)
	sim := start(t, Spec{Mode: "http-503", Target: TargetPeers})
	resp, err := do(t.Context(), peer.peerClient(t, sim), http.MethodPost, peer.url("/lifeboat/v1/lookup"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderSimulated) != "http-503" {
		t.Errorf("answer %s with %s = %q, want 503 marked http-503", resp.Status, HeaderSimulated, resp.Header.Get(HeaderSimulated))
	}
	if want := "lifeboat simulated outage: http-503"; !strings.Contains(string(body), want) {
		t.Errorf("body %q does not say %q", body, want)
	}
	if peer.hits.Load() != 0 {
		t.Errorf("the peer got %d requests, want none", peer.hits.Load())
	}
	if st := sim.Status(); st.Affected != 1 {
		t.Errorf("affected = %d, want 1", st.Affected)
	}
}

// TestPeersScope: a registry-scoped outage cuts the transfers of that registry (named by the
// "ns" query parameter) and nothing else: not other registries' transfers, not index requests,
// which name no registry.
func TestPeersScope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec Spec
		path string
		cut  bool
	}{
		{name: "registry in scope", spec: Spec{Registries: []string{"docker.io"}}, path: "/v2/library/alpine/blobs/sha256:aa?ns=docker.io", cut: true},
		{name: "registry out of scope", spec: Spec{Registries: []string{"ghcr.io"}}, path: "/v2/library/alpine/blobs/sha256:aa?ns=docker.io"},
		{name: "index request, registry scope", spec: Spec{Registries: []string{"docker.io"}}, path: "/lifeboat/v1/lookup"},
		{name: "index request, no scope", path: "/lifeboat/v1/announce", cut: true},
		{name: "repository in scope", spec: Spec{Repos: []string{"library/*"}}, path: "/v2/library/alpine/manifests/sha256:aa?ns=docker.io", cut: true},
		{name: "repository out of scope", spec: Spec{Repos: []string{"team/*"}}, path: "/v2/library/alpine/manifests/sha256:aa?ns=docker.io"},
		{name: "index request, repository scope", spec: Spec{Repos: []string{"library/*"}}, path: "/lifeboat/v1/lookup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			peer := newUpstream(t)
			tt.spec.Mode, tt.spec.Target = ModeRefused, TargetAll
			sim := start(t, tt.spec)
			resp, err := do(t.Context(), peer.peerClient(t, sim), http.MethodGet, peer.url(tt.path))
			if resp != nil {
				resp.Body.Close()
			}
			if got := err != nil && IsSimulated(err); got != tt.cut {
				t.Errorf("cut = %v (err %v), want %v", got, err, tt.cut)
			}
			if want := int64(map[bool]int{true: 0, false: 1}[tt.cut]); peer.hits.Load() != want {
				t.Errorf("the peer got %d requests, want %d", peer.hits.Load(), want)
			}
		})
	}
}
