package homerelay

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/types/key"
)

// fakeConn is a relay connection whose health the test sets.
type fakeConn struct {
	region string
	up     atomic.Bool
	onUp   func() // Dial's up: called when the test brings the connection up

	mu   sync.Mutex // guards revs
	revs string     // the last revocation list set
}

func (f *fakeConn) Run(ctx context.Context) error        { <-ctx.Done(); return nil }
func (f *fakeConn) SendBatch(key.Public, [][]byte) error { return nil }
func (f *fakeConn) SetTicket([]byte)                     {}
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
	mu      sync.Mutex // guards the fields below
	latency map[string]time.Duration
	alive   map[string]bool
	conns   []*fakeConn
	probes  map[string]int // probes of each relay so far
}

func (w *world) probe(_ context.Context, r Region) (time.Duration, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.probes == nil {
		w.probes = map[string]int{}
	}
	w.probes[r.Name]++
	d, ok := w.latency[r.Name]
	if !ok {
		return 0, errors.New("unreachable")
	}
	return d, nil
}

func (w *world) dial(r Region, _ []byte, up func()) (Conn, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := &fakeConn{region: r.Name, onUp: up}
	if w.alive[r.Name] {
		c.up.Store(true)
		up()
	}
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

func (w *world) probeCount(name string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.probes[name]
}

func (w *world) revive(name string, d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.latency[name] = d
	w.alive[name] = true
	for _, c := range w.conns {
		if c.region == name && !c.up.Swap(true) {
			c.onUp()
		}
	}
}

var regions = []Region{{ID: 1, Name: "near", Addr: "a:1"}, {ID: 2, Name: "far", Addr: "b:1"}, {ID: 3, Name: "mid", Addr: "c:1"}}

// loopTimers is how many timers Run has armed while it waits with nothing
// to do: tick, probe and pref.
const loopTimers = 3

// harness runs a Manager on a fake clock.
type harness struct {
	t   *testing.T
	m   *Manager
	clk *clock.Fake
}

// run starts a Manager over w and returns once it has acted on its start
// (first probe, first home), before the clock has moved.
func run(t *testing.T, w *world, preferred uint32) *harness {
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	m := New(Config{Preferred: preferred, Probe: w.probe, Dial: w.dial, Clock: clk})
	m.settled = make(chan struct{})
	m.SetRegions(regions)
	m.SetTicket([]byte("ticket"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	h := &harness{t: t, m: m, clk: clk}
	h.settle()
	return h
}

// settle waits until Run has acted on everything due at the clock's
// time: each timer that fired has been handled (all are armed again),
// and the loop has since come back to wait with no probe out.
func (h *harness) settle() {
	h.t.Helper()
	for {
		h.waitSettled()
		if h.clk.Timers() == loopTimers {
			// The iteration that re-armed the last timer may still be
			// evaluating; the next wait comes after it.
			h.waitSettled()
			return
		}
	}
}

func (h *harness) waitSettled() {
	h.t.Helper()
	select {
	case <-h.m.settled:
	case <-time.After(10 * time.Second):
		h.t.Fatalf("Run did not come back to wait (%d timers armed, want %d)", h.clk.Timers(), loopTimers)
	}
}

// advanceUntil moves the clock a tick at a time, letting Run act after
// each, until ok holds, and returns how far it moved. It fails if ok does
// not hold once the clock has moved limit.
func (h *harness) advanceUntil(limit time.Duration, what string, ok func(Status) bool) time.Duration {
	h.t.Helper()
	for moved := time.Duration(0); ; moved += tickInterval {
		st := h.m.Status()
		if ok(st) {
			return moved
		}
		if moved >= limit {
			h.t.Fatalf("%v after: got home %q (connected %v), want %s", moved, st.Home, st.Connected, what)
		}
		h.clk.Advance(tickInterval)
		h.settle()
	}
}

func homeIs(name string) func(Status) bool {
	return func(st Status) bool { return st.Home == name }
}

func connectedTo(name string) func(Status) bool {
	return func(st Status) bool { return st.Home == name && st.Connected }
}

// failover kills the home relay and checks that from replaces it with to
// on the first evaluation past failoverAfter, and that to is connected a
// tick later.
func (h *harness) failover(w *world, from, to string) {
	h.t.Helper()
	w.kill(from)
	moved := h.advanceUntil(failoverAfter+tickInterval, to+" home", homeIs(to))
	if moved <= failoverAfter {
		h.t.Errorf("home %s down: replaced after %v, want after failoverAfter (%v)", from, moved, failoverAfter)
	}
	h.advanceUntil(tickInterval, to+" connected", connectedTo(to))
}

func TestClosestThenFailover(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond, "far": 80 * time.Millisecond, "mid": 30 * time.Millisecond},
		alive:   map[string]bool{"near": true, "far": true, "mid": true},
	}
	h := run(t, w, 0)
	// The closest, as soon as the first probe answers.
	h.advanceUntil(0, "near connected", connectedTo("near"))
	// The next best reachable relay, after failoverAfter.
	h.failover(w, "near", "mid")
}

// TestBriefOutageKeepsHome: a home relay that is back within failoverAfter
// stays home.
func TestBriefOutageKeepsHome(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond, "mid": 30 * time.Millisecond},
		alive:   map[string]bool{"near": true, "mid": true},
	}
	h := run(t, w, 0)
	h.advanceUntil(0, "near connected", connectedTo("near"))
	w.kill("near")
	for moved := time.Duration(0); moved < failoverAfter; moved += tickInterval {
		h.clk.Advance(tickInterval)
		h.settle()
	}
	if st := h.m.Status(); st.Home != "near" || st.Connected {
		t.Fatalf("home down for failoverAfter: got home %q (connected %v), want near, not connected", st.Home, st.Connected)
	}
	w.revive("near", 5*time.Millisecond)
	for range 2 * failoverAfter / tickInterval {
		h.clk.Advance(tickInterval)
		h.settle()
		if st := h.m.Status(); st.Home != "near" || !st.Connected {
			t.Fatalf("home back within failoverAfter: got home %q (connected %v), want near connected", st.Home, st.Connected)
		}
	}
}

// TestUpAtOnce: a home connection that comes up is reported (Status,
// OnChange) as it does, without waiting for the next check: relayed
// peers have no path until then.
func TestUpAtOnce(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond},
		alive:   map[string]bool{"near": false}, // reachable, but its connection is not up yet
	}
	h := run(t, w, 0)
	if st := h.m.Status(); st.Home != "near" || st.Connected {
		t.Fatalf("before the connection is up: got home %q (connected %v), want near, not connected", st.Home, st.Connected)
	}
	w.revive("near", 5*time.Millisecond)
	h.settle() // the clock does not move
	if st := h.m.Status(); st.Home != "near" || !st.Connected {
		t.Fatalf("the connection came up: got home %q (connected %v), want near connected without the clock moving", st.Home, st.Connected)
	}
}

// TestRevocationsFollowTheHome: the revocation list reaches the home
// connection, and every later one (after a failover) without being set
// again, so any relay the node uses learns of deleted nodes.
func TestRevocationsFollowTheHome(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond, "mid": 30 * time.Millisecond},
		alive:   map[string]bool{"near": true, "mid": true},
	}
	h := run(t, w, 0)
	m := h.m
	h.advanceUntil(0, "near connected", connectedTo("near"))
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
	h.failover(w, "near", "mid")
	if got := home().revocations(); got != "list-2" {
		t.Errorf("home mid after failover: got list %q, want list-2", got)
	}
}

func TestPreferredWinsAndReturns(t *testing.T) {
	w := &world{
		latency: map[string]time.Duration{"near": 5 * time.Millisecond, "far": 80 * time.Millisecond},
		alive:   map[string]bool{"near": true, "far": true},
	}
	h := run(t, w, 2) // prefer "far" although "near" is closer
	h.advanceUntil(0, "far connected", connectedTo("far"))
	h.failover(w, "far", "near")
	// Probed every prefInterval while away; home again at the first
	// probe that finds it, connected a tick later. It comes back just
	// after a probe found it down, the longest wait.
	n := w.probeCount("far")
	h.advanceUntil(prefInterval, "a probe of far", func(Status) bool { return w.probeCount("far") > n })
	w.revive("far", 80*time.Millisecond)
	h.advanceUntil(prefInterval+tickInterval, "far connected", connectedTo("far"))
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
