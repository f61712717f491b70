#!/usr/bin/env bash
# Runs every `go test -fuzz` target of the module, one after another.
#
#   hack/fuzz.sh short      a fixed number of executions per target (part of make test)
#   hack/fuzz.sh DURATION   each target for DURATION, e.g. 30s or 10m (make fuzz)
#
# The short run counts executions instead of timing them: Go 1.26's fuzz
# coordinator can fail a target with a bare "context deadline exceeded" when a
# -fuzztime duration runs out while a worker is busy (go.dev/issue/75804, fixed
# in Go 1.27). A count has no deadline, so that cannot happen. A duration run
# that ends that way, with no failing input written, is reported and not
# counted as a failure; any other failure, or a written input, is.
set -euo pipefail

mode=${1:?usage: hack/fuzz.sh short|DURATION}
go=${GO:-go}

# Executions per target in the short run. Most targets run thousands per
# second; FuzzEvictWalk opens a bbolt database on disk for every input, and
# FuzzPlanPull a cache and an upstream (a few dozen a second).
short_budget() {
	case $1 in
	FuzzEvictWalk) echo 300x ;;
	FuzzPlanPull) echo 200x ;;
	*) echo 3000x ;;
	esac
}

# The number of inputs saved under a target's corpus directory.
saved() {
	if [ -d "$1" ]; then ls "$1" | wc -l; else echo 0; fi
}

cd "$(dirname "$0")/.."
failed=0
for pkg in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
	for target in $(grep -h '^func Fuzz' "$pkg"/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do
		budget=$mode
		[ "$mode" = short ] && budget=$(short_budget "$target")
		echo "fuzz: $pkg $target ($budget)"
		corpus=$pkg/testdata/fuzz/$target
		before=$(saved "$corpus")
		out=$(mktemp)
		if "$go" test -run '^$' -fuzz "^$target\$" -fuzztime "$budget" -fuzzminimizetime 2s "$pkg" 2>&1 | tee "$out"; then
			rm -f "$out"
			continue
		fi
		after=$(saved "$corpus")
		if [ "$mode" != short ] && [ "$after" = "$before" ] && tail -n 5 "$out" | grep -q '^    context deadline exceeded$'; then
			echo "fuzz: $target: Go's fuzz coordinator ended on its own deadline (go.dev/issue/75804) and wrote no failing input; not counted as a failure"
			rm -f "$out"
			continue
		fi
		rm -f "$out"
		echo "fuzz: $target FAILED (a failing input, if any, is under $corpus)"
		failed=1
	done
done
exit $failed
