package homerelay

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// fakeConn is a relay connection whose health the test sets.
type fakeConn struct {
	region string
	up     atomic.Bool

	mu   sync.Mutex // guards revs
	revs string     // the last revocation list set
}

func (f *fakeConn) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (f *fakeConn) Send(key.Public, []byte) error { return nil }
func (f *fakeConn) SetTicket([]byte)              {}
func (f *fakeConn) SetRevocations(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revs = string(b)
}

func (f *fakeConn) revocations() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.revs
}
func (f *fakeConn) Connected() bool { return f.up.Load() }
func (f *fakeConn) LastError() error {
	if f.up.Load() {
		return nil
	}
	return errors.New("down")
}

// world holds the fake relays: their latency (absent: unreachable) and
// whether a new connection to them comes up.
type world struct {
	mu      sync.Mutex
	latency map[string]time.Duration
	alive   map[string]bool
	conns   []*fakeConn
}

func (w *world) probe(_ context.Context, r Region) (time.Duration, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	d, ok := w.latency[r.Name]
	if !ok {
		return 0, errors.New("unreachable")
	}
	return d, nil
}

func (w *world) dial(r Region, _ []byte) (Conn, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := &fakeConn{region: r.Name}
	c.up.Store(w.alive[r.Name])
	w.conns = append(w.conns, c)
	return c, nil
}

func (w *world) kill(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.latency, name)
	w.alive[name] = false
	for _, c := range w.conns {
		if c.region == name {
			c.up.Store(false)
		}
	}
}

var regions = []Region{{ID: 1, Name: "near", Addr: "a:1"}, {ID: 2, Name: "far", Addr: "b:1"}, {ID: 3, Name: "mid", Addr: "c:1"}}

func run(t *testing.T, w *world, preferred uint32) (*Manager, func()) {
	m := New(Config{Preferred: preferred, Probe: w.probe, Dial: w.dial})
	m.SetRegions(regions)
	m.SetTicket([]byte("ticket"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	return m, func() { cancel(); <-done }
}

func waitHome(t *testing.T, m *Manager, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if st := m.Status(); st.Home == want && st.Connected {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := m.Status()
	t.Fatalf("home: got %q (connected %v), want %q connected", st.Home, st.Connected, want)
}

func TestClosestThenFailover(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond, "far": 80 * time.Millisecond, "mid": 30 * time.Millisecond},
		alive:   map[string]bool{"near": true, "far": true, "mid": true},
	}
	m, stop := run(t, w, 0)
	defer stop()
	waitHome(t, m, "near", 2*time.Second)
	w.kill("near")
	// The next best reachable relay, after failoverAfter.
	waitHome(t, m, "mid", failoverAfter+2*time.Second)
}

// TestRevocationsFollowTheHome: the revocation list reaches the home
// connection, and every later one (after a failover) without being set
// again, so any relay the node uses learns of deleted nodes.
func TestRevocationsFollowTheHome(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond, "mid": 30 * time.Millisecond},
		alive:   map[string]bool{"near": true, "mid": true},
	}
	m, stop := run(t, w, 0)
	defer stop()
	waitHome(t, m, "near", 2*time.Second)
	m.SetRevocations([]byte("list-1"))
	m.SetRevocations([]byte("list-2"))
	home := func() *fakeConn {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.home.client.(*fakeConn)
	}
	if got := home().revocations(); got != "list-2" {
		t.Errorf("home near: got list %q, want list-2", got)
	}
	w.kill("near")
	waitHome(t, m, "mid", failoverAfter+2*time.Second)
	if got := home().revocations(); got != "list-2" {
		t.Errorf("home mid after failover: got list %q, want list-2", got)
	}
}

func TestPreferredWinsAndReturns(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond, "far": 80 * time.Millisecond},
		alive:   map[string]bool{"near": true, "far": true},
	}
	m, stop := run(t, w, 2) // prefer "far" although "near" is closer
	defer stop()
	waitHome(t, m, "far", 2*time.Second)
	w.kill("far")
	waitHome(t, m, "near", failoverAfter+2*time.Second)
	w.mu.Lock()
	w.latency["far"], w.alive["far"] = 80*time.Millisecond, true
	w.mu.Unlock()
	waitHome(t, m, "far", prefInterval+2*time.Second)
}

func TestChooseHysteresis(t *testing.T) {
	m := New(Config{})
	m.regions = regions
	m.ticket = []byte("t")
	c := &fakeConn{region: "mid"}
	c.up.Store(true)
	m.home = &home{region: regions[2], client: c, since: time.Now()}
	for _, tc := range []struct {
		name      string
		near, mid time.Duration
		want      string // "" keeps the home
	}{
		{"slightly faster is not enough", 28 * time.Millisecond, 30 * time.Millisecond, ""},
		{"much faster but under the floor", 1 * time.Millisecond, 8 * time.Millisecond, ""},
		{"much faster", 5 * time.Millisecond, 30 * time.Millisecond, "near"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.latency = map[uint32]time.Duration{1: tc.near, 3: tc.mid}
			r, _ := m.choose(time.Now())
			got := ""
			if r != nil {
				got = r.Name
			}
			if got != tc.want {
				t.Errorf("choose: got %q, want %q", got, tc.want)
			}
		})
	}
}
