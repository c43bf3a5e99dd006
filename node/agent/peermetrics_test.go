package agent

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgewire/edgewire/dataplane/wgdev"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

// fakePeers is a fleet seen from one agent: the map's view of each peer
// and its WireGuard counters, moved by hand with a hand-moved clock.
type fakePeers struct {
	mu       sync.Mutex
	now      time.Time
	ticks    int
	views    map[key.Public]peerView
	stats    map[key.Public]wgdev.PeerStats
	statsErr error
}

func newFakePeers(n int) (*fakePeers, []key.Public) {
	f := &fakePeers{now: time.Unix(1_700_000_000, 0), views: map[key.Public]peerView{}, stats: map[key.Public]wgdev.PeerStats{}}
	keys := make([]key.Public, n)
	for i := range keys {
		keys[i][0], keys[i][1] = byte(i>>8), byte(i)
		keys[i][31] = 1
		f.views[keys[i]] = peerView{Name: fmt.Sprintf("n%04d", i), Online: true, Path: pathsel.Direct, ICE: pathsel.Connected}
		f.stats[keys[i]] = wgdev.PeerStats{PublicKey: keys[i], LastHandshake: f.now}
	}
	return f, keys
}

func (f *fakePeers) clock() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }

func (f *fakePeers) peers() map[key.Public]peerView {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[key.Public]peerView, len(f.views))
	for k, v := range f.views {
		out[k] = v
	}
	return out
}

func (f *fakePeers) wgStats() (map[key.Public]wgdev.PeerStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statsErr != nil {
		return nil, f.statsErr
	}
	out := make(map[key.Public]wgdev.PeerStats, len(f.stats))
	for k, s := range f.stats {
		out[k] = s
	}
	return out, nil
}

// advance moves the clock by d in 5 s steps; every peer sends a keepalive
// each way every 25 s and re-handshakes every 2 minutes, as WireGuard does
// for an idle peer with a path. busy peers also carry perMinute bytes each
// way.
func (f *fakePeers) advance(d time.Duration, perMinute uint64, busy ...key.Public) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range d / (5 * time.Second) {
		f.now = f.now.Add(5 * time.Second)
		f.ticks++
		for k, s := range f.stats {
			if f.ticks%5 == 0 {
				s.RxBytes += 32
				s.TxBytes += 32
			}
			if f.now.Sub(s.LastHandshake) >= 2*time.Minute {
				s.LastHandshake = f.now
				s.TxBytes += 148
				s.RxBytes += 92
			}
			f.stats[k] = s
		}
		for _, k := range busy {
			s := f.stats[k]
			s.RxBytes += perMinute / 12
			s.TxBytes += perMinute / 12
			f.stats[k] = s
		}
	}
}

// gather scrapes pm through a registry and returns the families by name.
func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// perPeerSeries counts the series of the edgewire_agent_peer_* families.
func perPeerSeries(mfs map[string]*dto.MetricFamily) int {
	return len(mfs["edgewire_agent_peer_handshake_age_seconds"].GetMetric()) + len(mfs["edgewire_agent_peer_bytes_total"].GetMetric())
}

// peersLabelled returns the values of the peer label in the per-peer bytes.
func peersLabelled(mfs map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for _, m := range mfs["edgewire_agent_peer_bytes_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "peer" {
				out[l.GetValue()] = true
			}
		}
	}
	return out
}

func gauge(t *testing.T, mfs map[string]*dto.MetricFamily, name, label string) float64 {
	t.Helper()
	for _, m := range mfs[name].GetMetric() {
		if label == "" || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == label) {
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s{%s} in the scrape", name, label)
	return 0
}

// The series count follows activity: in a fleet of 1,000 peers only the
// busy ones have series of their own, a peer that goes idle loses them
// after the window, keepalives and handshakes alone never make a peer
// active, and the fleet gauges are there in every mode.
func TestPeerSeriesFollowActivity(t *testing.T) {
	const fleet = 1000
	f, keys := newFakePeers(fleet)
	reg := prometheus.NewRegistry()
	pm := newPeerMetrics(PeerMetricsActive, f.clock, f.peers, f.wgStats)
	reg.MustRegister(pm)

	mfs := gather(t, reg)
	if got := perPeerSeries(mfs); got != 0 {
		t.Errorf("before any traffic: got %d per-peer series, want 0", got)
	}

	// Ten peers carry traffic; the rest only keepalives, for 12 minutes
	// (past two windows), scraped every 30 s.
	busy := keys[:10]
	for range 24 {
		f.advance(30*time.Second, 64<<10, busy...)
		mfs = gather(t, reg)
	}
	if got, want := perPeerSeries(mfs), 3*len(busy); got != want {
		t.Errorf("10 busy of %d: got %d per-peer series, want %d (3 per busy peer)", fleet, got, want)
	}
	for _, k := range busy {
		if name := f.views[k].Name; !peersLabelled(mfs)[name] {
			t.Errorf("busy peer %s has no series", name)
		}
	}
	if got := gauge(t, mfs, "edgewire_agent_peers_active", ""); got != float64(len(busy)) {
		t.Errorf("edgewire_agent_peers_active: got %v, want %d", got, len(busy))
	}
	if got := gauge(t, mfs, "edgewire_agent_peers", "direct"); got != fleet {
		t.Errorf(`edgewire_agent_peers{path="direct"}: got %v, want %d`, got, fleet)
	}
	if got := gauge(t, mfs, "edgewire_agent_peers_handshake_stale", ""); got != 0 {
		t.Errorf("edgewire_agent_peers_handshake_stale: got %v, want 0 (every peer re-handshakes)", got)
	}

	// Five go quiet: their series stay for the window, then are gone.
	for range 8 { // 4 minutes
		f.advance(30*time.Second, 64<<10, busy[5:]...)
		mfs = gather(t, reg)
	}
	if got := perPeerSeries(mfs); got != 3*len(busy) {
		t.Errorf("4 minutes after five went quiet: got %d per-peer series, want %d (still in the window)", got, 3*len(busy))
	}
	for range 4 { // 2 more
		f.advance(30*time.Second, 64<<10, busy[5:]...)
		mfs = gather(t, reg)
	}
	if got := perPeerSeries(mfs); got != 15 {
		t.Errorf("6 minutes after five went quiet: got %d per-peer series, want 15", got)
	}
	for _, k := range busy[:5] {
		if name := f.views[k].Name; peersLabelled(mfs)[name] {
			t.Errorf("idle peer %s still has series", name)
		}
	}

	// An ICE session deciding a path makes its peer active at once.
	v := f.views[keys[500]]
	v.ICE = pathsel.Checking
	f.views[keys[500]] = v
	mfs = gather(t, reg)
	if !peersLabelled(mfs)[v.Name] {
		t.Errorf("peer %s with an ICE session checking: no series", v.Name)
	}
	if got := gauge(t, mfs, "edgewire_agent_peers_active", ""); got != 6 {
		t.Errorf("edgewire_agent_peers_active: got %v, want 6", got)
	}
}

// Bytes over all peers only grow, departed peers included; a peer that
// left the map is forgotten.
func TestPeerMetricsTotals(t *testing.T) {
	f, keys := newFakePeers(3)
	reg := prometheus.NewRegistry()
	pm := newPeerMetrics(PeerMetricsActive, f.clock, f.peers, f.wgStats)
	reg.MustRegister(pm)
	f.advance(time.Minute, 1<<20, keys[0])
	mfs := gather(t, reg)
	rx := gauge(t, mfs, "edgewire_agent_wireguard_bytes_total", "rx")
	var want uint64
	for _, s := range f.stats {
		want += s.RxBytes
	}
	if rx != float64(want) {
		t.Errorf("rx total: got %v, want %d", rx, want)
	}

	delete(f.views, keys[0])
	delete(f.stats, keys[0])
	mfs = gather(t, reg)
	if got := gauge(t, mfs, "edgewire_agent_wireguard_bytes_total", "rx"); got != rx {
		t.Errorf("rx total after a peer left: got %v, want %v (it must not fall)", got, rx)
	}
	if len(pm.track) != 2 {
		t.Errorf("tracked peers after one left: got %d, want 2", len(pm.track))
	}

	// A device that does not answer reports no bytes; its counters must
	// not count twice when it answers again.
	f.statsErr = errors.New("device closed")
	gather(t, reg)
	f.statsErr = nil
	mfs = gather(t, reg)
	if got := gauge(t, mfs, "edgewire_agent_wireguard_bytes_total", "rx"); got != rx {
		t.Errorf("rx total after the device failed once: got %v, want %v", got, rx)
	}

	// A re-created WireGuard peer counts from zero: its new bytes add up.
	s := f.stats[keys[1]]
	if s.RxBytes <= 10 {
		t.Fatalf("peer 1 rx %d: want more than 10 to re-create it below that", s.RxBytes)
	}
	s.RxBytes = 10
	f.stats[keys[1]] = s
	mfs = gather(t, reg)
	if got := gauge(t, mfs, "edgewire_agent_wireguard_bytes_total", "rx"); got != rx+10 {
		t.Errorf("rx total after a peer was re-created: got %v, want %v", got, rx+10)
	}
}

func TestPeerMetricsModes(t *testing.T) {
	for _, tc := range []struct {
		mode PeerMetrics
		want int // per-peer series with 20 peers, 2 of them busy
	}{
		{PeerMetricsActive, 6},
		{PeerMetricsAll, 60},
		{PeerMetricsOff, 0},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			f, keys := newFakePeers(20)
			reg := prometheus.NewRegistry()
			reg.MustRegister(newPeerMetrics(tc.mode, f.clock, f.peers, f.wgStats))
			f.advance(time.Minute, 1<<20, keys[:2]...)
			mfs := gather(t, reg)
			if got := perPeerSeries(mfs); got != tc.want {
				t.Errorf("per-peer series: got %d, want %d", got, tc.want)
			}
			if got := gauge(t, mfs, "edgewire_agent_peers_active", ""); got != 2 {
				t.Errorf("edgewire_agent_peers_active: got %v, want 2 in every mode", got)
			}
		})
	}
	for _, s := range []string{"", "some", "ALL"} {
		if _, err := ParsePeerMetrics(s); err == nil {
			t.Errorf("ParsePeerMetrics(%q): got nil error, want one", s)
		}
	}
}

// A peer with a path whose handshake is older than staleAfter, or that
// never handshook since its path came up that long ago, is stale; offline
// peers and peers without a path are not.
func TestPeerMetricsHandshakeStale(t *testing.T) {
	f, keys := newFakePeers(5)
	reg := prometheus.NewRegistry()
	reg.MustRegister(newPeerMetrics(PeerMetricsActive, f.clock, f.peers, f.wgStats))
	set := func(i int, online bool, path pathsel.Kind, hs time.Time) {
		v := f.views[keys[i]]
		v.Online, v.Path = online, path
		f.views[keys[i]] = v
		s := f.stats[keys[i]]
		s.LastHandshake = hs
		f.stats[keys[i]] = s
	}
	t0 := f.now
	set(0, true, pathsel.Direct, t0)                    // fresh
	set(1, true, pathsel.Relay, t0.Add(-4*time.Minute)) // 4 minutes old: stale
	set(2, false, pathsel.Relay, time.Time{})           // offline: not counted
	set(3, true, pathsel.None, time.Time{})             // no path: not counted
	set(4, true, pathsel.Relay, time.Time{})            // never: stale once its path is 3 minutes old
	mfs := gather(t, reg)
	if got := gauge(t, mfs, "edgewire_agent_peers_handshake_stale", ""); got != 1 {
		t.Errorf("at first: got %v stale, want 1", got)
	}
	f.now = t0.Add(181 * time.Second)
	set(0, true, pathsel.Direct, f.now)
	mfs = gather(t, reg)
	if got := gauge(t, mfs, "edgewire_agent_peers_handshake_stale", ""); got != 2 {
		t.Errorf("181 s later: got %v stale, want 2", got)
	}
	if got := gauge(t, mfs, "edgewire_agent_peers", "relay"); got != 3 {
		t.Errorf(`edgewire_agent_peers{path="relay"}: got %v, want 3`, got)
	}
}
