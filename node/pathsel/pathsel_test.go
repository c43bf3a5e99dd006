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
	m.Failed(at(4 * time.Second))
	if got := m.Path().Kind; got != None {
		t.Errorf("relay down, ICE failed: got %v, want none", got)
	}
}

func TestMachine(t *testing.T) {
	cfg := Config{MinBackoff: time.Second, MaxBackoff: 8 * time.Second, SessionTimeout: 10 * time.Second, DisconnectGrace: 3 * time.Second}
	type step struct {
		at       time.Duration
		do       func(m *Machine, now time.Time)
		wantTick bool // Tick's answer after the action
		wantPath Kind
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
			{0, nothing, true, None, Idle},
		}, Stats{}},
		{"connect gives a direct path", []step{
			{0, started, false, None, Checking},
			{time.Second, connected, false, Direct, Connected},
		}, Stats{Attempts: 1, Successes: 1}},
		{"session timeout fails and backs off", []step{
			{0, started, false, None, Checking},
			{10 * time.Second, nothing, false, None, Failed},
			{10*time.Second + 999*time.Millisecond, nothing, false, None, Failed},
			{11 * time.Second, nothing, true, None, Failed},
		}, Stats{Attempts: 1, Failures: 1}},
		{"backoff doubles and caps", []step{
			{0, started, false, None, Checking},
			{0, failed, false, None, Failed}, // next at 1s, backoff 2s
			{time.Second, started, false, None, Checking},
			{time.Second, failed, false, None, Failed}, // next at 3s, backoff 4s
			{2 * time.Second, nothing, false, None, Failed},
			{3 * time.Second, started, false, None, Checking},
			{3 * time.Second, failed, false, None, Failed}, // next at 7s, backoff 8s
			{7 * time.Second, started, false, None, Checking},
			{7 * time.Second, failed, false, None, Failed}, // next at 15s, capped 8s
			{14 * time.Second, nothing, false, None, Failed},
			{15 * time.Second, started, false, None, Checking},
			{15 * time.Second, failed, false, None, Failed}, // next at 23s
			{22 * time.Second, nothing, false, None, Failed},
			{23 * time.Second, nothing, true, None, Failed},
		}, Stats{Attempts: 5, Failures: 5, Restarts: 4}},
		{"success resets backoff", []step{
			{0, started, false, None, Checking},
			{0, failed, false, None, Failed},
			{time.Second, started, false, None, Checking},
			{time.Second, connected, false, Direct, Connected},
			{5 * time.Second, failed, false, None, Failed}, // backoff back to 1s
			{6 * time.Second, nothing, true, None, Failed},
		}, Stats{Attempts: 2, Successes: 1, Failures: 2, Restarts: 1}},
		{"disconnect drops the path at once and recovers", []step{
			{0, started, false, None, Checking},
			{0, connected, false, Direct, Connected},
			{time.Second, disconnected, false, None, Disconnected},
			{2 * time.Second, connected, false, Direct, Connected},
		}, Stats{Attempts: 1, Successes: 1}},
		{"disconnect past grace fails", []step{
			{0, started, false, None, Checking},
			{0, connected, false, Direct, Connected},
			{time.Second, disconnected, false, None, Disconnected},
			{4 * time.Second, nothing, false, None, Failed},
			{5 * time.Second, nothing, true, None, Failed},
		}, Stats{Attempts: 1, Successes: 1, Failures: 1}},
		{"kick restarts a connected session after min backoff", []step{
			{0, started, false, None, Checking},
			{0, connected, false, Direct, Connected},
			{100 * time.Millisecond, kick, false, None, Failed},
			{time.Second, nothing, true, None, Failed},
		}, Stats{Attempts: 1, Successes: 1}},
		{"kick skips the backoff of a failed session", []step{
			{0, started, false, None, Checking},
			{0, failed, false, None, Failed},
			{time.Second, started, false, None, Checking},
			{time.Second, failed, false, None, Failed}, // next at 3s
			{2 * time.Second, kick, true, None, Failed},
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
				if got := m.Path().Kind; got != s.wantPath {
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
