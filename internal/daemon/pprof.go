package daemon

import (
	"net/http"
	"net/http/pprof"
)

// handlePprof adds Go's runtime profiles to mux under /debug/pprof/ ([metrics] pprof). (The
// package registers them on http.DefaultServeMux as well, which no listener of the daemon
// serves.)
func handlePprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
