package pathsel

import (
	"net/netip"
	"testing"
	"time"
)

var (
	t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	ep = netip.MustParseAddrPort("203.0.113.7:51820")
)

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestMachineRelayFirst(t *testing.T) {
	m := NewMachine(Config{}, t0)
	if got := m.Path().Kind; got != None {
		t.Fatalf("no relay, no ICE: got %v, want none", got)
	}
	m.SetRelay(true)
	if got := m.Path().Kind; got != Relay {
		t.Fatalf("relay up before ICE: got %v, want relay", got)
	}
	m.Started(t0)
	if got := m.Path().Kind; got != Relay {
		t.Errorf("while ICE checks: got %v, want relay", got)
	}
	m.Connected(ep, at(time.Second))
	if got := m.Path(); got.Kind != Direct || got.Endpoint != ep {
		t.Errorf("ICE connected: got %+v, want direct %s", got, ep)
	}
	m.Disconnected(at(2 * time.Second))
	if got := m.Path().Kind; got != Relay {
		t.Errorf("direct lost: got %v, want relay at once", got)
	}
	m.Connected(ep, at(3*time.Second))
	m.SetRelay(false)
	if got := m.Path().Kind; got != Direct {
		t.Errorf("relay down, direct up: got %v, want direct", got)
	}
	// Without a relay, the endpoint that worked stays the path: WireGuard
	// keeps handshaking to it and recovers when the underlay does.
	m.Failed(at(4 * time.Second))
	if got := m.Path(); got.Kind != Direct || got.Endpoint != ep || !got.LastKnown {
		t.Errorf("relay down, ICE failed: got %+v, want the last direct endpoint %s", got, ep)
	}
	// The relay back: it carries the peer until ICE confirms a pair.
	m.SetRelay(true)
	if got := m.Path(); got.Kind != Relay {
		t.Errorf("relay back: got %+v, want relay", got)
	}
	m.SetRelay(false)
	m.Started(at(5 * time.Second))
	if got := m.Path(); !got.LastKnown || got.Endpoint != ep {
		t.Errorf("a new session checking without relay: got %+v, want the last direct endpoint", got)
	}
	ep2 := netip.MustParseAddrPort("198.51.100.9:4000")
	m.Connected(ep2, at(6*time.Second))
	m.Failed(at(7 * time.Second))
	if got := m.Path(); got.Endpoint != ep2 || !got.LastKnown {
		t.Errorf("after a new pair failed: got %+v, want %s", got, ep2)
	}
	if got, when := m.LastDirect(); got != ep2 || !when.Equal(at(6*time.Second)) {
		t.Errorf("LastDirect: %v at %v", got, when)
	}
}

// A machine seeded from a saved state uses the saved endpoint when
// nothing else carries the peer; one that learnt its own keeps it.
func TestMachineSeed(t *testing.T) {
	m := NewMachine(Config{}, t0)
	m.Seed(ep, t0.Add(-time.Hour))
	if got := m.Path(); got.Kind != Direct || got.Endpoint != ep || !got.LastKnown {
		t.Fatalf("seeded: got %+v", got)
	}
	m.SetRelay(true)
	if got := m.Path().Kind; got != Relay {
		t.Errorf("seeded with a relay: got %v, want relay", got)
	}
	ep2 := netip.MustParseAddrPort("198.51.100.9:4000")
	m.Connected(ep2, t0)
	m.Seed(ep, t0)
	if got, _ := m.LastDirect(); got != ep2 {
		t.Errorf("a later Seed replaced a learnt endpoint: %v", got)
	}
}

// Reset lifts the backoff of a failed machine at once.
func TestMachineReset(t *testing.T) {
	m := NewMachine(Config{MinBackoff: time.Second, MaxBackoff: 30 * time.Second}, t0)
	for i := range 5 {
		now := at(time.Duration(i) * time.Minute)
		m.Started(now)
		m.Failed(now) // backoff grows to 30 s
	}
	now := at(4*time.Minute + time.Second)
	if m.Tick(now) {
		t.Fatal("due 1 s after the fifth failure; the backoff should hold it")
	}
	m.Reset(now)
	if !m.Tick(now) {
		t.Error("not due after Reset")
	}
	m.Started(now)
	m.Failed(now)
	if m.Tick(now.Add(999*time.Millisecond)) || !m.Tick(now.Add(time.Second)) {
		t.Error("the backoff after Reset is not back to MinBackoff")
	}
}

func TestMachine(t *testing.T) {
	cfg := Config{MinBackoff: time.Second, MaxBackoff: 8 * time.Second, SessionTimeout: 10 * time.Second, DisconnectGrace: 3 * time.Second}
	type step struct {
		at       time.Duration
		do       func(m *Machine, now time.Time)
		wantTick bool   // Tick's answer after the action
		wantPath string // none, direct, relay or last (the last known direct endpoint)
		wantICE  ICEState
	}
	started := func(m *Machine, now time.Time) { m.Started(now) }
	connected := func(m *Machine, now time.Time) { m.Connected(ep, now) }
	disconnected := func(m *Machine, now time.Time) { m.Disconnected(now) }
	failed := func(m *Machine, now time.Time) { m.Failed(now) }
	kick := func(m *Machine, now time.Time) { m.Kick(now) }
	nothing := func(*Machine, time.Time) {}
	for _, tc := range []struct {
		name      string
		steps     []step
		wantStats Stats
	}{
		{"new machine wants a session at once", []step{
			{0, nothing, true, "none", Idle},
		}, Stats{}},
		{"a kick before any session starts one at once", []step{
			{0, nothing, true, "none", Idle},
			{100 * time.Millisecond, kick, true, "none", Idle}, // the lazy-ICE trigger: a relayed packet
		}, Stats{}},
		{"a kick right after a session waits out MinBackoff", []step{
			{0, started, false, "none", Checking},
			{100 * time.Millisecond, kick, false, "none", Failed},
			{time.Second, nothing, true, "none", Failed},
		}, Stats{Attempts: 1}},
		{"connect gives a direct path", []step{
			{0, started, false, "none", Checking},
			{time.Second, connected, false, "direct", Connected},
		}, Stats{Attempts: 1, Successes: 1}},
		{"session timeout fails and backs off", []step{
			{0, started, false, "none", Checking},
			{10 * time.Second, nothing, false, "none", Failed},
			{10*time.Second + 999*time.Millisecond, nothing, false, "none", Failed},
			{11 * time.Second, nothing, true, "none", Failed},
		}, Stats{Attempts: 1, Failures: 1}},
		{"backoff doubles and caps", []step{
			{0, started, false, "none", Checking},
			{0, failed, false, "none", Failed}, // next at 1s, backoff 2s
			{time.Second, started, false, "none", Checking},
			{time.Second, failed, false, "none", Failed}, // next at 3s, backoff 4s
			{2 * time.Second, nothing, false, "none", Failed},
			{3 * time.Second, started, false, "none", Checking},
			{3 * time.Second, failed, false, "none", Failed}, // next at 7s, backoff 8s
			{7 * time.Second, started, false, "none", Checking},
			{7 * time.Second, failed, false, "none", Failed}, // next at 15s, capped 8s
			{14 * time.Second, nothing, false, "none", Failed},
			{15 * time.Second, started, false, "none", Checking},
			{15 * time.Second, failed, false, "none", Failed}, // next at 23s
			{22 * time.Second, nothing, false, "none", Failed},
			{23 * time.Second, nothing, true, "none", Failed},
		}, Stats{Attempts: 5, Failures: 5, Restarts: 4}},
		{"success resets backoff", []step{
			{0, started, false, "none", Checking},
			{0, failed, false, "none", Failed},
			{time.Second, started, false, "none", Checking},
			{time.Second, connected, false, "direct", Connected},
			{5 * time.Second, failed, false, "last", Failed}, // backoff back to 1s
			{6 * time.Second, nothing, true, "last", Failed},
		}, Stats{Attempts: 2, Successes: 1, Failures: 2, Restarts: 1}},
		{"disconnect drops the path at once and recovers", []step{
			{0, started, false, "none", Checking},
			{0, connected, false, "direct", Connected},
			{time.Second, disconnected, false, "last", Disconnected},
			{2 * time.Second, connected, false, "direct", Connected},
		}, Stats{Attempts: 1, Successes: 1}},
		{"disconnect past grace fails", []step{
			{0, started, false, "none", Checking},
			{0, connected, false, "direct", Connected},
			{time.Second, disconnected, false, "last", Disconnected},
			{4 * time.Second, nothing, false, "last", Failed},
			{5 * time.Second, nothing, true, "last", Failed},
		}, Stats{Attempts: 1, Successes: 1, Failures: 1}},
		{"kick restarts a connected session after min backoff", []step{
			{0, started, false, "none", Checking},
			{0, connected, false, "direct", Connected},
			{100 * time.Millisecond, kick, false, "last", Failed},
			{time.Second, nothing, true, "last", Failed},
		}, Stats{Attempts: 1, Successes: 1}},
		{"kick skips the backoff of a failed session", []step{
			{0, started, false, "none", Checking},
			{0, failed, false, "none", Failed},
			{time.Second, started, false, "none", Checking},
			{time.Second, failed, false, "none", Failed}, // next at 3s
			{2 * time.Second, kick, true, "none", Failed},
		}, Stats{Attempts: 2, Failures: 2, Restarts: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMachine(cfg, t0)
			for i, s := range tc.steps {
				now := at(s.at)
				s.do(m, now)
				if got := m.Tick(now); got != s.wantTick {
					t.Errorf("step %d (t=%v): Tick got %v, want %v", i, s.at, got, s.wantTick)
				}
				if got := pathName(m.Path()); got != s.wantPath {
					t.Errorf("step %d (t=%v): path got %v, want %v", i, s.at, got, s.wantPath)
				}
				if got := m.State(); got != s.wantICE {
					t.Errorf("step %d (t=%v): ICE state got %v, want %v", i, s.at, got, s.wantICE)
				}
			}
			if got := m.Stats(); got != tc.wantStats {
				t.Errorf("stats: got %+v, want %+v", got, tc.wantStats)
			}
			if m.Path().Kind == Direct && m.Path().Endpoint != ep {
				t.Errorf("endpoint: got %v, want %v", m.Path().Endpoint, ep)
			}
		})
	}
}

func pathName(p Path) string {
	if p.LastKnown {
		return "last"
	}
	return p.Kind.String()
}
