package telemetry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgewire/edgewire/internal/buildinfo"
)

func TestReadyz(t *testing.T) {
	tests := []struct {
		name     string
		ready    Ready
		wantCode int
		wantBody string
	}{
		{"no check", nil, 200, "ok"},
		{"ready", func() error { return nil }, 200, "ok"},
		{"not ready", func() error { return errors.New("standby") }, 503, "not ready: standby"},
		{"degraded", func() error { return &Degraded{Reason: "API server unreachable"} }, 200, "ok (degraded: API server unreachable)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Serve(ctx, addr, NewRegistry(), tt.ready, slog.New(slog.DiscardHandler)) }()
			defer func() { cancel(); <-done }()
			var resp *http.Response
			for i := 0; i < 100; i++ {
				if resp, err = http.Get("http://" + addr + "/readyz"); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode || strings.TrimSpace(string(body)) != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

// The ready gauge says what /readyz says: degraded is ready.
func TestReadyGauge(t *testing.T) {
	for _, tt := range []struct {
		name  string
		ready Ready
		want  float64
	}{
		{"no check", nil, 1},
		{"ready", func() error { return nil }, 1},
		{"not ready", func() error { return errors.New("standby") }, 0},
		{"degraded", func() error { return &Degraded{Reason: "API server unreachable"} }, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			ReadyGauge(reg, "x_ready", "test", tt.ready)
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			if len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
				t.Fatalf("gathered %v, want one x_ready sample", mfs)
			}
			if got := mfs[0].GetMetric()[0].GetGauge().GetValue(); got != tt.want {
				t.Errorf("x_ready: got %v, want %v", got, tt.want)
			}
		})
	}
}

// Every daemon's registry says which build runs.
func TestBuildInfoMetric(t *testing.T) {
	mfs, err := NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	bi := buildinfo.Get()
	for _, mf := range mfs {
		if mf.GetName() != "edgewire_build_info" {
			continue
		}
		m := mf.GetMetric()
		if len(m) != 1 || m[0].GetGauge().GetValue() != 1 {
			t.Fatalf("edgewire_build_info: %v", m)
		}
		labels := map[string]string{}
		for _, l := range m[0].GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["version"] != bi.Version || labels["goversion"] != bi.GoVersion || labels["revision"] != bi.Revision {
			t.Errorf("labels %v, want the build's %+v", labels, bi)
		}
		return
	}
	t.Fatal("no edgewire_build_info")
}

// TestHandle: Serve serves what Handle adds beside its own paths.
func TestHandle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "the page") })
	go func() {
		done <- Serve(ctx, addr, NewRegistry(), nil, slog.New(slog.DiscardHandler), Handle("GET /page", page))
	}()
	defer func() { cancel(); <-done }()
	get := func(path string) (int, string) {
		t.Helper()
		var resp *http.Response
		for range 100 {
			if resp, err = http.Get("http://" + addr + path); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	for _, tc := range []struct {
		path     string
		wantCode int
		wantBody string
	}{
		{"/page", 200, "the page"},
		{"/healthz", 200, "ok"},
		{"/other", 404, "404 page not found"},
	} {
		if code, body := get(tc.path); code != tc.wantCode || body != tc.wantBody {
			t.Errorf("GET %s: got %d %q, want %d %q", tc.path, code, body, tc.wantCode, tc.wantBody)
		}
	}
}
