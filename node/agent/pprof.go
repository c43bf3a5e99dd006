package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"
)

// servePprof serves Go's runtime profiles (/debug/pprof/heap, goroutine,
// allocs, block, mutex, threadcreate; ?debug=1 for text, ?gc=1 to collect
// first) on a unix socket, 0600, so memory can be looked at on a running
// agent without opening a TCP port. Empty path: off. It uses runtime/pprof
// directly: net/http/pprof would add 0.4 MB of code to every agent's
// resident binary pages.
func servePprof(ctx context.Context, path string, log *slog.Logger) error {
	if path == "" {
		return nil
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("pprof listen %s: %w", path, err)
	}
	defer os.Remove(path)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
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
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	log.Info("pprof listening", "socket", path)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
