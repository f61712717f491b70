//go:build race

package cluster

// raceEnabled: the tests run under the race detector, which makes big allocations slow.
const raceEnabled = true
