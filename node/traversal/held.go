package traversal

import (
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// A node that starts a session as soon as its map has a new peer sends
// its offer and candidates while the peer's map may not have the node
// yet: both learn of each other from the same map change, delivered to
// each at its own time. Those signals are held, not dropped, and
// replayed once the map brings the sender (setPeers), so the first
// session need not wait out a timeout and a backoff. Holding is bounded
// in time, per sender and in senders; what does not fit is dropped as
// before, and the sender's session times out and starts again.
const (
	heldFor       = 3 * time.Second // longer than a map takes to reach every node
	maxHeldPeers  = 64
	maxHeldPerKey = 16 // an offer, an answer and trickled candidates
)

type heldSignal struct {
	sig Signal
	at  time.Time
}

// hold keeps a signal from a node not in the map. Called with mu held.
func (m *Manager) hold(sig Signal) {
	now := m.cfg.Now()
	m.expireHeld(now)
	q := m.held[sig.Peer]
	if (q == nil && len(m.held) >= maxHeldPeers) || len(q) >= maxHeldPerKey {
		m.signals.SignalsDropped++
		m.log.Debug("dropping signal from a node not in the map", "from", sig.Peer)
		return
	}
	if m.held == nil {
		m.held = map[key.Public][]heldSignal{}
	}
	m.held[sig.Peer] = append(q, heldSignal{sig: sig, at: now})
	m.signals.SignalsHeld++
	m.log.Debug("holding signal from a node not in the map yet", "from", sig.Peer)
}

// replay handles the signals held from nk, which the map now has, in the
// order they came. Called with mu held.
func (m *Manager) replay(nk key.Public) {
	q, ok := m.held[nk]
	if !ok {
		return
	}
	delete(m.held, nk)
	now := m.cfg.Now()
	for _, h := range q {
		if now.Sub(h.at) > heldFor {
			m.signals.SignalsDropped++
			continue
		}
		m.handleSignal(h.sig)
	}
}

// expireHeld drops what has been held too long. Called with mu held.
func (m *Manager) expireHeld(now time.Time) {
	for k, q := range m.held {
		if now.Sub(q[len(q)-1].at) > heldFor {
			m.signals.SignalsDropped += uint64(len(q))
			delete(m.held, k)
		}
	}
}
