// Package pathsel decides, per peer, how WireGuard reaches that peer.
// Machine is the per-peer state machine: it is fed what the NAT-traversal
// layer observes (an ICE session started, connected, disconnected,
// failed) and whether a relay is up, and answers what the path is and
// when to try ICE again. Relay-first: a peer is reachable through the
// relay until ICE finds a direct pair, and falls back to it the moment
// the direct pair stops answering. Without a relay, the last direct
// endpoint stays the path (LastKnown): an edge site whose cloud link is
// gone keeps what worked instead of nothing. Pure logic with the clock
// passed in, so every transition is unit-testable.
package pathsel

import (
	"net/netip"
	"time"
)

// Kind says how a peer is reached.
type Kind int

const (
	// None: no usable path is known; the peer is unreachable for now.
	None Kind = iota
	// Direct: UDP straight to Path.Endpoint, found by ICE.
	Direct
	// Relay: through the node's home relay (the endpoint is synthetic).
	Relay
)

func (k Kind) String() string {
	switch k {
	case Direct:
		return "direct"
	case Relay:
		return "relay"
	default:
		return "none"
	}
}

// Path is how one peer is reached.
type Path struct {
	Kind     Kind
	Endpoint netip.AddrPort // the peer's address (Direct); filled in by the owner for Relay
	// LastKnown: Direct to the last endpoint ICE confirmed, kept because
	// nothing else can carry the peer (no relay, no confirmed pair).
	// WireGuard keeps handshaking to it, so the path comes back on its
	// own when the underlay does, with no coordinator to signal through.
	LastKnown bool
}

// ICEState is the state of the peer's current ICE session as the
// machine sees it.
type ICEState int

const (
	Idle         ICEState = iota // no session
	Checking                     // session started, not connected yet
	Connected                    // a candidate pair is selected and alive
	Disconnected                 // checks stopped answering; may recover
	Failed                       // gave up; a new session follows after backoff
)

func (s ICEState) String() string {
	return [...]string{"new", "checking", "connected", "disconnected", "failed"}[s]
}

// Config tunes a Machine. Zero fields take the defaults.
type Config struct {
	MinBackoff      time.Duration // first retry delay after a failure (1s)
	MaxBackoff      time.Duration // retry delay cap (30s)
	SessionTimeout  time.Duration // checking this long without success is a failure (20s)
	DisconnectGrace time.Duration // disconnected this long is a failure (3s)
}

func (c *Config) defaults() {
	if c.MinBackoff <= 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = 30 * time.Second
	}
	if c.SessionTimeout <= 0 {
		c.SessionTimeout = 20 * time.Second
	}
	if c.DisconnectGrace <= 0 {
		c.DisconnectGrace = 3 * time.Second
	}
}

// Stats counts a machine's ICE sessions.
type Stats struct {
	Attempts  uint64 // sessions started
	Successes uint64 // sessions that connected
	Failures  uint64 // sessions that failed or timed out
	Restarts  uint64 // sessions started to replace an earlier one
}

// Machine is the path state of one peer. It is not safe for concurrent
// use; its owner serialises calls.
type Machine struct {
	cfg      Config
	ice      ICEState
	since    time.Time      // when ice last changed
	endpoint netip.AddrPort // remote address of the selected pair, while connected
	backoff  time.Duration  // delay applied after the next failure
	next     time.Time      // no new session before this
	started  bool           // a session was ever started
	relay    bool           // a relay connection is up
	stats    Stats
	// lastDirect is the last endpoint a session connected to (or one
	// seeded from a saved state), and when: the path of last resort.
	lastDirect   netip.AddrPort
	lastDirectAt time.Time
}

// NewMachine returns a machine that wants a session right away.
func NewMachine(cfg Config, now time.Time) *Machine {
	cfg.defaults()
	return &Machine{cfg: cfg, since: now, backoff: cfg.MinBackoff, next: now}
}

// Path returns the current path: the connected pair; else the relay;
// else the last direct endpoint (LastKnown); else none.
func (m *Machine) Path() Path {
	switch {
	case m.ice == Connected:
		return Path{Kind: Direct, Endpoint: m.endpoint}
	case m.relay:
		return Path{Kind: Relay}
	case m.lastDirect.IsValid():
		return Path{Kind: Direct, Endpoint: m.lastDirect, LastKnown: true}
	}
	return Path{}
}

// LastDirect returns the last endpoint a session connected to and when
// (zero if none), for the owner to save across restarts.
func (m *Machine) LastDirect() (netip.AddrPort, time.Time) { return m.lastDirect, m.lastDirectAt }

// Seed gives a new machine the last direct endpoint a previous run saved,
// so a restarted node without relay or coordinator tries it at once.
// A machine that already knows one keeps its own.
func (m *Machine) Seed(ep netip.AddrPort, at time.Time) {
	if ep.IsValid() && !m.lastDirect.IsValid() {
		m.lastDirect, m.lastDirectAt = ep, at
	}
}

// Reset forgets the backoff: the next session may start at once (the
// coordinator is back after an outage in which every session failed
// for want of signalling).
func (m *Machine) Reset(now time.Time) {
	m.backoff = m.cfg.MinBackoff
	if m.ice == Idle || m.ice == Failed {
		m.next = now
	}
}

// SetRelay records whether the node's relay connection is up.
func (m *Machine) SetRelay(up bool) { m.relay = up }

// State returns the ICE state.
func (m *Machine) State() ICEState { return m.ice }

// Stats returns the session counters.
func (m *Machine) Stats() Stats { return m.stats }

func (m *Machine) set(s ICEState, now time.Time) {
	m.ice = s
	m.since = now
}

// Started records that a new session began.
func (m *Machine) Started(now time.Time) {
	m.stats.Attempts++
	if m.started {
		m.stats.Restarts++
	}
	m.started = true
	m.endpoint = netip.AddrPort{}
	m.set(Checking, now)
}

// Connected records that the session selected a pair whose remote end is
// ep (again, after a disconnect, or with a new pair).
func (m *Machine) Connected(ep netip.AddrPort, now time.Time) {
	if m.ice != Connected && m.ice != Disconnected {
		m.stats.Successes++
	}
	m.endpoint = ep
	m.lastDirect, m.lastDirectAt = ep, now
	m.backoff = m.cfg.MinBackoff
	m.set(Connected, now)
}

// Disconnected records that the selected pair stopped answering. The path
// is dropped at once; the session may still recover.
func (m *Machine) Disconnected(now time.Time) {
	if m.ice == Connected {
		m.set(Disconnected, now)
	}
}

// Failed records that the session is over without a usable pair. The
// next session waits for the backoff, which then doubles.
func (m *Machine) Failed(now time.Time) {
	if m.ice == Failed || m.ice == Idle {
		return
	}
	m.stats.Failures++
	m.set(Failed, now)
	m.next = now.Add(m.backoff)
	m.backoff = min(m.backoff*2, m.cfg.MaxBackoff)
}

// Closed records that the session ended without a verdict (the peer left,
// the owner tore it down); no failure is counted.
func (m *Machine) Closed(now time.Time) {
	m.set(Idle, now)
	m.endpoint = netip.AddrPort{}
}

// Kick asks for a new session soon (local addresses changed, the peer
// asked for a restart): at once if the last one started more than
// MinBackoff ago, or if none ever started (there is nothing to pace: a
// new peer's first session must not wait out a backoff counted from the
// machine's creation).
func (m *Machine) Kick(now time.Time) {
	earliest := m.since.Add(m.cfg.MinBackoff)
	if !m.started {
		earliest = now
	}
	if m.ice == Connected || m.ice == Checking || m.ice == Disconnected {
		m.set(Failed, now)
	}
	m.next = later(now, earliest)
}

// Tick applies timeouts and reports whether a new session should start
// now. The owner calls it periodically and after events.
func (m *Machine) Tick(now time.Time) bool {
	switch m.ice {
	case Checking:
		if now.Sub(m.since) >= m.cfg.SessionTimeout {
			m.Failed(now)
		}
	case Disconnected:
		if now.Sub(m.since) >= m.cfg.DisconnectGrace {
			m.Failed(now)
		}
	}
	return (m.ice == Idle || m.ice == Failed) && !now.Before(m.next)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
