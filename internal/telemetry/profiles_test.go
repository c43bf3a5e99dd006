package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestServeProfiles(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "pprof.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeProfiles(ctx, sock, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeProfiles: %v", err)
		}
	}()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	tests := []struct {
		path       string
		status     int
		wantPrefix string
	}{
		{"/debug/pprof/goroutine?debug=1", http.StatusOK, "goroutine profile: total "},
		{"/debug/pprof/heap?debug=1&gc=1", http.StatusOK, "heap profile: "},
		{"/debug/pprof/nosuch", http.StatusNotFound, "no such profile"},
		{"/debug/pprof/profile?seconds=0", http.StatusBadRequest, "seconds: want 1 to 60"},
		{"/debug/pprof/profile?seconds=1", http.StatusOK, "\x1f\x8b"}, // a gzipped profile
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			var resp *http.Response
			var err error
			for range 50 { // the listener may not be up yet
				if resp, err = c.Get("http://agent" + tc.path); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.HasPrefix(string(b), tc.wantPrefix) {
				t.Fatalf("got %d %.40q, want %d %q...", resp.StatusCode, b, tc.status, tc.wantPrefix)
			}
		})
	}
}
