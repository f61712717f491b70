// Package harness starts the real processes lifeboat's integration tests run against: a
// containerd with its own root, state and sockets under a temporary directory, a distribution
// registry on a free loopback port, and the lifeboat daemon built from this module. It also
// builds and pushes test images with go-containerregistry and writes containerd hosts.toml
// directories. The processes start through internal/launch, which hack/bench uses too, and
// every hosts.toml comes from hosts.Config, so tests, benchmark and users share one of each.
//
// The binaries come from bin/tools at the module root (installed by `make tools`), or from the
// directory named by LIFEBOAT_TOOLS_DIR. A missing binary fails the test; running as non-root
// skips it, because containerd needs root to mount snapshots and run containers.
//
// Every process is stopped, every mount unmounted and every directory removed in t.Cleanup; when
// the test failed, the processes' logs are attached to its output.
package harness
