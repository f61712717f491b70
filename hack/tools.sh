#!/usr/bin/env bash
# Installs the pinned binaries the tests and benchmarks use into bin/tools/, from the Go module
# proxy. A binary already present at the pinned module version is left alone.
set -euo pipefail

cd "$(dirname "$0")/.."
dest="$PWD/bin/tools"
mkdir -p "$dest"

# name  package@version  (the module version is what `go version -m` reports for the binary)
tools=(
  "containerd github.com/containerd/containerd/v2/cmd/containerd@v2.4.2"
  "ctr github.com/containerd/containerd/v2/cmd/ctr@v2.4.2"
  "containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v2.4.2"
  "crane github.com/google/go-containerregistry/cmd/crane@v0.22.1"
  "registry github.com/distribution/distribution/v3/cmd/registry@v3.1.2"
  "staticcheck honnef.co/go/tools/cmd/staticcheck@v0.8.2"
  # Checks the Prometheus alerts and runs their unit tests (make lint). Prometheus' Go module
  # versions are v0.<3-digit minor>: v0.316.0 is Prometheus 3.16.0. It takes minutes to build;
  # like the others, it is built again only when this version changes.
  "promtool github.com/prometheus/prometheus/cmd/promtool@v0.316.0"
  # The OCI distribution-spec conformance program, pinned to a commit (pseudo-version). It is a
  # main package: built with go install like the others, not as a test binary (which upstream
  # deprecates).
  "conformance github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111"
)

installed_version() { # binary -> module version, or nothing
  go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

for entry in "${tools[@]}"; do
  read -r name pkg <<<"$entry"
  want="${pkg##*@}"
  if [ -x "$dest/$name" ] && [ "$(installed_version "$dest/$name")" = "$want" ]; then
    continue
  fi
  echo "tools: installing $name $want"
  # Build outside the project's module so its go.mod does not constrain the tool's dependencies.
  (cd / && GOBIN="$dest" GOFLAGS= CGO_ENABLED="${CGO_ENABLED_TOOLS:-0}" go install "$pkg")
done
