package svcsource

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/services"
)

// syncSink records Services and when Synced came.
type syncSink struct {
	mu       sync.Mutex
	svcs     map[string]bool
	synced   int
	atSync   int // Services held at the first Synced
	syncedCh chan struct{}
}

func (s *syncSink) SetService(svc *services.Service) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svcs[svc.Key()] = true
}
func (s *syncSink) DeleteService(k string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.svcs, k)
}
func (s *syncSink) SetKubeNode(string, []netip.Prefix) error { return nil }
func (s *syncSink) DeleteKubeNode(string)                    {}
func (s *syncSink) Synced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synced++
	if s.synced == 1 {
		s.atSync = len(s.svcs)
		close(s.syncedCh)
	}
}

// The file source says it synced once, after its first look at the file,
// with what the file held; a missing or bad file is a first look too (the
// coordinator must not wait on it).
func TestFileSynced(t *testing.T) {
	svc := &services.Service{Namespace: "demo", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}}}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, writeFile(t, []*services.Service{svc}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		want       int
	}{
		{"a file", good, 1},
		{"no file", filepath.Join(dir, "missing.json"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := &syncSink{svcs: map[string]bool{}, syncedCh: make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- (&File{Path: tc.path, Interval: 10 * time.Millisecond}).Run(ctx, sink) }()
			select {
			case <-sink.syncedCh:
			case <-time.After(5 * time.Second):
				t.Fatal("no Synced")
			}
			time.Sleep(50 * time.Millisecond) // a few more looks
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if sink.synced != 1 || sink.atSync != tc.want {
				t.Errorf("Synced %d times, with %d Services at the first; want once, with %d", sink.synced, sink.atSync, tc.want)
			}
		})
	}
}
