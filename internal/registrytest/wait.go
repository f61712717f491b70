package registrytest

import (
	"runtime"
	"testing"
	"time"
)

// Wait polls cond until it holds, failing the test after a generous deadline (10 seconds:
// tests run in parallel under -race on small machines).
func Wait(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitGoroutines waits until no more goroutines run than want, failing the test with every
// goroutine's stack after the same deadline as Wait.
func WaitGoroutines(t testing.TB, what string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%s: %d goroutines, want at most %d:\n%s", what, runtime.NumGoroutine(), want, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}
