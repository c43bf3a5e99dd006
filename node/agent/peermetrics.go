package agent

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgewire/edgewire/dataplane/wgdev"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

// PeerMetrics says which peers get series of their own
// (edgewire_agent_peer_*). Every node peers with every other, so series per
// peer grow with the square of the fleet: at 1,000 nodes, three per peer
// are about 3 million series. The fleet gauges (edgewire_agent_peers*,
// edgewire_agent_wireguard_bytes_total) are kept in every mode.
type PeerMetrics string

const (
	// PeerMetricsActive: only active peers (see peerActivity), the
	// default. Series of a peer that goes idle are dropped from the next
	// scrape.
	PeerMetricsActive PeerMetrics = "active"
	// PeerMetricsAll: every peer in the network map (small fleets).
	PeerMetricsAll PeerMetrics = "all"
	// PeerMetricsOff: none.
	PeerMetricsOff PeerMetrics = "off"
)

// ParsePeerMetrics parses --metrics-per-peer.
func ParsePeerMetrics(s string) (PeerMetrics, error) {
	switch m := PeerMetrics(s); m {
	case PeerMetricsActive, PeerMetricsAll, PeerMetricsOff:
		return m, nil
	}
	return "", fmt.Errorf("%q: want active, all or off", s)
}

// Activity. Handshakes cannot tell an active peer from an idle one: every
// peer with a path has a 25 s keepalive, and WireGuard re-handshakes every
// 2 minutes while anything, keepalives included, is sent. So a peer is
// active when, within activeWindow, its WireGuard byte counters grew by
// more than keepalives and handshakes account for (quietBytes: in 5
// minutes keepalives are about 0.8 KiB and handshakes 0.7 KiB), or when an
// ICE session towards it is checking or recovering (a path is being
// decided: the moment its series matter).
const (
	activeWindow = 5 * time.Minute
	quietBytes   = 8 << 10
	// staleAfter: a peer with a path and no handshake for this long has no
	// working session (WireGuard's REJECT_AFTER_TIME: its keys are dead;
	// with keepalives on, a live pair re-handshakes every 2 minutes).
	staleAfter = 180 * time.Second
)

// peerView is what the metrics need to know of one peer in the map.
type peerView struct {
	Name   string
	Online bool
	Path   pathsel.Kind
	ICE    pathsel.ICEState
}

// peerActivity is the activity tracking of one peer.
type peerActivity struct {
	rx, tx     uint64    // counters at the last scrape
	mark       uint64    // rx+tx when the current quiet period began
	markAt     time.Time // when it began
	lastActive time.Time // zero: never active
	pathSince  time.Time // since when it has had a path; zero: none
}

// peerMetrics exports the agent's peers: fleet gauges for all of them and
// series per peer for those mode selects. It reads everything at scrape
// time; activity is sampled at each scrape, so it needs no goroutine of
// its own (a scrape interval longer than activeWindow only coarsens it).
type peerMetrics struct {
	mode  PeerMetrics
	now   func() time.Time
	peers func() map[key.Public]peerView
	stats func() (map[key.Public]wgdev.PeerStats, error)

	byPath, active, stale, wgBytes, handshakeAge, peerBytes *prometheus.Desc

	mu     sync.Mutex // guards below; scrapes may run concurrently
	track  map[key.Public]*peerActivity
	rx, tx uint64 // bytes over all peers, departed ones included
}

var _ prometheus.Collector = (*peerMetrics)(nil)

func newPeerMetrics(mode PeerMetrics, now func() time.Time, peers func() map[key.Public]peerView, stats func() (map[key.Public]wgdev.PeerStats, error)) *peerMetrics {
	return &peerMetrics{
		mode: mode, now: now, peers: peers, stats: stats,
		byPath: prometheus.NewDesc("edgewire_agent_peers", "Peers in the network map by path (direct, relay, none); their sum is every peer.", []string{"path"}, nil),
		active: prometheus.NewDesc("edgewire_agent_peers_active",
			"Active peers: more WireGuard traffic than keepalives in the last 5 minutes, or an ICE session checking or recovering. With --metrics-per-peer=active only these have edgewire_agent_peer_* series.", nil, nil),
		stale: prometheus.NewDesc("edgewire_agent_peers_handshake_stale",
			"Online peers with a path but no WireGuard handshake for over 180 s (their session is dead).", nil, nil),
		wgBytes: prometheus.NewDesc("edgewire_agent_wireguard_bytes_total",
			"WireGuard bytes over all peers by direction (departed peers included, as of the scrape that last saw them).", []string{"direction"}, nil),
		handshakeAge: prometheus.NewDesc("edgewire_agent_peer_handshake_age_seconds",
			"Seconds since the last WireGuard handshake with a peer (peers with one, as --metrics-per-peer selects).", []string{"peer"}, nil),
		peerBytes: prometheus.NewDesc("edgewire_agent_peer_bytes_total",
			"WireGuard bytes per peer and direction (peers as --metrics-per-peer selects).", []string{"peer", "direction"}, nil),
		track: map[key.Public]*peerActivity{},
	}
}

func (pm *peerMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{pm.byPath, pm.active, pm.stale, pm.wgBytes, pm.handshakeAge, pm.peerBytes} {
		ch <- d
	}
}

func (pm *peerMetrics) Collect(ch chan<- prometheus.Metric) {
	now := pm.now()
	views := pm.peers()
	stats, err := pm.stats()
	if err != nil {
		stats = nil // the device is gone (shutting down): paths only
	}
	pm.mu.Lock()
	defer pm.mu.Unlock()

	paths := map[pathsel.Kind]int{}
	var nActive, nStale int
	for k, v := range views {
		paths[v.Path]++
		s, haveStats := stats[k]
		a := pm.observe(k, v, s, haveStats, now)
		act := pm.isActive(a, v, now)
		if act {
			nActive++
		}
		if v.Online && v.Path != pathsel.None && haveStats {
			if hs := s.LastHandshake; (hs.IsZero() && now.Sub(a.pathSince) > staleAfter) || (!hs.IsZero() && now.Sub(hs) > staleAfter) {
				nStale++
			}
		}
		if !haveStats || v.Name == "" || pm.mode == PeerMetricsOff || (pm.mode == PeerMetricsActive && !act) {
			continue
		}
		if !s.LastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(pm.handshakeAge, prometheus.GaugeValue, now.Sub(s.LastHandshake).Seconds(), v.Name)
		}
		ch <- prometheus.MustNewConstMetric(pm.peerBytes, prometheus.CounterValue, float64(s.RxBytes), v.Name, "rx")
		ch <- prometheus.MustNewConstMetric(pm.peerBytes, prometheus.CounterValue, float64(s.TxBytes), v.Name, "tx")
	}
	for k := range pm.track {
		if _, ok := views[k]; !ok {
			delete(pm.track, k) // left the map: forget it (its bytes stay in pm.rx, pm.tx)
		}
	}
	for _, k := range []pathsel.Kind{pathsel.None, pathsel.Direct, pathsel.Relay} {
		ch <- prometheus.MustNewConstMetric(pm.byPath, prometheus.GaugeValue, float64(paths[k]), k.String())
	}
	ch <- prometheus.MustNewConstMetric(pm.active, prometheus.GaugeValue, float64(nActive))
	ch <- prometheus.MustNewConstMetric(pm.stale, prometheus.GaugeValue, float64(nStale))
	ch <- prometheus.MustNewConstMetric(pm.wgBytes, prometheus.CounterValue, float64(pm.rx), "rx")
	ch <- prometheus.MustNewConstMetric(pm.wgBytes, prometheus.CounterValue, float64(pm.tx), "tx")
}

// observe updates k's activity from its counters s (if haveStats) at now
// and adds what they grew by to the totals. Called with mu held.
func (pm *peerMetrics) observe(k key.Public, v peerView, s wgdev.PeerStats, haveStats bool, now time.Time) *peerActivity {
	a := pm.track[k]
	if a == nil {
		a = &peerActivity{markAt: now}
		pm.track[k] = a
	}
	if v.Path == pathsel.None {
		a.pathSince = time.Time{}
	} else if a.pathSince.IsZero() {
		a.pathSince = now
	}
	if !haveStats {
		return a // not in the device (yet), or the device did not answer
	}
	// A counter below its last value is a re-created WireGuard peer: it
	// counts from zero again.
	grow := func(cur, last uint64) uint64 {
		if cur < last {
			return cur
		}
		return cur - last
	}
	pm.rx += grow(s.RxBytes, a.rx)
	pm.tx += grow(s.TxBytes, a.tx)
	a.rx, a.tx = s.RxBytes, s.TxBytes
	total := s.RxBytes + s.TxBytes
	switch {
	case total < a.mark:
		a.mark, a.markAt = total, now
	case total-a.mark > quietBytes:
		a.lastActive = now
		a.mark, a.markAt = total, now
	case now.Sub(a.markAt) >= activeWindow:
		// A quiet window: start the next one, so keepalives never add
		// up past quietBytes.
		a.mark, a.markAt = total, now
	}
	return a
}

// isActive: traffic beyond keepalives within activeWindow, or an ICE
// session deciding the path.
func (pm *peerMetrics) isActive(a *peerActivity, v peerView, now time.Time) bool {
	if v.ICE == pathsel.Checking || v.ICE == pathsel.Disconnected {
		return true
	}
	return !a.lastActive.IsZero() && now.Sub(a.lastActive) < activeWindow
}
