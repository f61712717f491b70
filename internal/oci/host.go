package oci

import (
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// DockerHub is the registry of a name without one ("alpine" is docker.io/library/alpine).
const DockerHub = "docker.io"

// maxHostLength bounds a registry host[:port].
const maxHostLength = 255

// domainName is a registry host name without its port: distribution/reference's domain-name,
// anchored (its exported DomainRegexp also takes a port and bracketed IPv6, checked here more
// strictly with netip and strconv).
var domainName = regexp.MustCompile(`^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*$`)

// NormalizeHost validates a registry host[:port] ("ghcr.io", "localhost:5000", "[::1]:5000")
// and returns it in lower case, an IPv6 address in its canonical form, and DockerHub's
// aliases spelled DockerHub. A port is 1 to 65535 without leading zeros.
func NormalizeHost(s string) (string, bool) {
	if len(s) > maxHostLength {
		return "", false
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", false
		}
		addr, err := netip.ParseAddr(s[1:end])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", false
		}
		host, port = "["+addr.String()+"]", s[end+1:]
		if port != "" && !strings.HasPrefix(port, ":") {
			return "", false
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i:]
		}
		if !domainName.MatchString(host) {
			return "", false
		}
		host = strings.ToLower(host)
	}
	if port != "" {
		p, err := strconv.ParseUint(port[1:], 10, 16)
		if err != nil || p == 0 || strconv.FormatUint(p, 10) != port[1:] {
			return "", false
		}
	}
	if host == "index.docker.io" && port == "" {
		return DockerHub, true
	}
	return host + port, true
}

// ValidHost reports whether s is a registry host[:port], in any case: NormalizeHost accepts it.
func ValidHost(s string) bool {
	_, ok := NormalizeHost(s)
	return ok
}

// LooksLikeHost says whether the first component of a name is a registry rather than part of
// the repository, as distribution/reference decides: it has a dot or a colon, or is localhost.
func LooksLikeHost(component string) bool {
	return strings.ContainsAny(component, ".:") || component == "localhost"
}

// IsLoopback reports whether registry is on the loopback interface: localhost or a loopback
// address, with or without a port; exactly containerd's docker.IsLocalhost (so "[::1]" without a
// port is not, as net.SplitHostPort does not take its brackets off).
func IsLoopback(registry string) bool {
	host := registry
	if h, _, err := net.SplitHostPort(registry); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DefaultEndpoints are the endpoints containerd pulls registry from, in the order it tries
// them, when no hosts.toml configures it (core/remotes/docker/config/hosts.go):
//   - docker.io: https://registry-1.docker.io;
//   - a loopback registry (IsLoopback): https://<registry>, then plain http://<registry>,
//     except on port 443 or with no port (https only) and on port 80 (http only). containerd
//     does not verify the certificate of such a registry, which an endpoint URL cannot say;
//   - any other registry: https://<registry>.
func DefaultEndpoints(registry string) []string {
	if registry == DockerHub {
		return []string{"https://registry-1.docker.io"}
	}
	if !IsLoopback(registry) {
		return []string{"https://" + registry}
	}
	_, port, _ := net.SplitHostPort(registry)
	switch port {
	case "", "443":
		return []string{"https://" + registry}
	case "80":
		return []string{"http://" + registry}
	}
	return []string{"https://" + registry, "http://" + registry}
}
