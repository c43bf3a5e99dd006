package traversal

import (
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

// PathState is a peer's path kind and ICE state, without the detail
// Status gathers (candidates, RTT).
type PathState struct {
	Kind pathsel.Kind
	ICE  pathsel.ICEState
}

// States returns every peer's PathState under one lock: a metrics scrape
// over a thousand peers takes the manager's lock once, not a thousand
// times.
func (m *Manager) States() map[key.Public]PathState {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[key.Public]PathState, len(m.peers))
	for k, p := range m.peers {
		out[k] = PathState{Kind: p.m.Path().Kind, ICE: p.m.State()}
	}
	return out
}
