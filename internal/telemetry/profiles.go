package telemetry

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/edgewire/edgewire/internal/httpserve"
)

// maxCPUProfile bounds /debug/pprof/profile?seconds=N.
const maxCPUProfile = 60 * time.Second

// ServeProfiles serves Go's runtime profiles on a unix socket at path,
// 0600, until ctx ends, so a daemon can be profiled without opening a
// TCP port. Empty path: off. GET /debug/pprof/profile?seconds=N (1-60,
// default 10) is a CPU profile; /debug/pprof/<name> any other runtime
// profile (heap, goroutine, allocs, block, mutex, threadcreate), with
// ?debug=1 for text and ?gc=1 to collect garbage first. It uses
// runtime/pprof directly: net/http/pprof would add 0.4 MB of code to
// every agent's resident binary pages.
func ServeProfiles(ctx context.Context, path string, log *slog.Logger) error {
	if path == "" {
		return nil
	}
	ln, err := httpserve.ListenUnix(path, 0o700)
	if err != nil {
		return err
	}
	log.Info("profiles listening", "socket", path)
	return httpserve.Serve(ctx, ln, profileHandler())
}

func profileHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/profile", func(w http.ResponseWriter, r *http.Request) {
		d := 10 * time.Second
		if s := r.FormValue("seconds"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || time.Duration(n)*time.Second > maxCPUProfile {
				http.Error(w, "seconds: want 1 to 60", http.StatusBadRequest)
				return
			}
			d = time.Duration(n) * time.Second
		}
		if err := pprof.StartCPUProfile(w); err != nil {
			http.Error(w, err.Error(), http.StatusConflict) // another CPU profile is running
			return
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
		pprof.StopCPUProfile()
	})
	mux.HandleFunc("GET /debug/pprof/{name}", func(w http.ResponseWriter, r *http.Request) {
		p := pprof.Lookup(r.PathValue("name"))
		if p == nil {
			http.Error(w, "no such profile", http.StatusNotFound)
			return
		}
		debug, _ := strconv.Atoi(r.FormValue("debug"))
		if r.FormValue("gc") != "" {
			runtime.GC()
		}
		p.WriteTo(w, debug)
	})
	return mux
}
