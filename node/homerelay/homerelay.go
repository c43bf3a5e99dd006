// Package homerelay keeps the agent's connection to its home relay: it
// measures latency to every relay in the relay map, picks the closest
// (with hysteresis, so a few milliseconds of jitter never flaps it), fails
// over to the next best when the home relay stops answering, and feeds
// the relay the coordinator's current ticket. Packets for relayed peers
// leave through it; packets arriving through it go to the WireGuard Bind.
package homerelay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/types/key"
)

// Region is one relay from the relay map, resolved for this node.
type Region struct {
	ID   uint32
	Name string
	Addr string // host:port of its HTTPS listener
	Key  key.Public
}

// Timing of probes and failover.
const (
	probeInterval = 30 * time.Second
	probeTimeout  = 3 * time.Second
	// prefInterval: while away from the preferred relay, how often it is
	// probed, so the node returns soon after it comes back.
	prefInterval = 3 * time.Second
	tickInterval = 250 * time.Millisecond
	// failoverAfter: a home relay unreachable this long is replaced.
	failoverAfter = 2 * time.Second
	// A healthy home is replaced only by one this much faster...
	switchRatio = 0.7
	// ...and at least this many milliseconds faster.
	switchMin = 10 * time.Millisecond
)

// Conn is a connection to one relay; *relay.Client is the real one.
type Conn interface {
	Run(ctx context.Context) error
	SendBatch(dst key.Public, pkts [][]byte) error
	SetTicket(t []byte)
	// SetRevocations hands the relay the coordinator's signed list of
	// nodes to refuse (sent after every handshake, and on change).
	SetRevocations(b []byte)
	Connected() bool
	LastError() error
}

var _ Conn = (*relay.Client)(nil)

// Config configures a Manager.
type Config struct {
	PrivateKey key.Private
	Preferred  uint32                         // region ID to use whenever it is up; 0: choose by latency
	OnPacket   func(src key.Public, p []byte) // packets from the relay; p valid during the call
	OnFlush    func()                         // after packets, before the relay connection's reader waits (relay.ClientConfig.OnFlush)
	OnChange   func(up bool)                  // the home connection went up or down
	Logger     *slog.Logger
	// Probe measures the latency to a region (nil: an HTTPS GET of
	// /relay/probe on a fresh connection).
	Probe func(ctx context.Context, r Region) (time.Duration, error)
	// Dial creates the connection to a relay (nil: a relay.Client). The
	// connection calls up, without blocking, each time it comes up, so
	// the manager reports it at once rather than at its next check.
	Dial func(r Region, ticket []byte, up func()) (Conn, error)
	// NetDial opens the TCP connections of the default Dial and Probe
	// (nil: net.Dialer); the agent marks them so that overlay routes
	// cannot capture them.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Clock times probes, failover and the return to the preferred relay
	// (nil: clock.Real). Probe timeouts bound network I/O and stay on
	// real time.
	Clock clock.Clock
}

// Status describes the home relay.
type Status struct {
	Home      string                   // region name, "" when none
	Connected bool                     //
	Latency   map[string]time.Duration // by region name; missing: unreachable
	Err       string                   // why the home is down, if it is
}

type home struct {
	region Region
	client Conn
	cancel context.CancelFunc
	done   chan struct{}
	since  time.Time // when it last connected, or was started
}

// Manager owns the home relay connection. Create with New, start Run.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	clock clock.Clock
	kick  chan struct{} // regions or ticket changed; capacity 1
	// upC: a connection came up; capacity 1. Without it the home's
	// coming up was noticed at the next tick, up to tickInterval late,
	// and relayed peers had no path until then.
	upC chan struct{}
	// settled, when a test sets it, is sent on by Run whenever it waits
	// with no probe out and no kick pending, so the test knows the
	// loop has acted on everything before it moves the clock.
	settled chan struct{}

	// sendTo is home's connection for Send, read per packet without mu;
	// it is stored wherever home changes.
	sendTo atomic.Pointer[home]

	mu      sync.Mutex // guards everything below
	regions []Region
	ticket  []byte
	revs    []byte // signed relay revocations, for every home connection
	latency map[uint32]time.Duration
	home    *home
	up      bool
}

// New returns a manager.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnPacket == nil {
		cfg.OnPacket = func(key.Public, []byte) {}
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func(bool) {}
	}
	if cfg.NetDial == nil {
		cfg.NetDial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	if cfg.Probe == nil {
		cfg.Probe = func(ctx context.Context, r Region) (time.Duration, error) { return probeHTTPS(ctx, r, cfg.NetDial) }
	}
	if cfg.Dial == nil {
		cfg.Dial = func(r Region, ticket []byte, up func()) (Conn, error) {
			return relay.NewClient(relay.ClientConfig{
				URL: "https://" + r.Addr + "/relay", ServerKey: r.Key, PrivateKey: cfg.PrivateKey,
				Ticket: ticket, OnPacket: cfg.OnPacket, OnFlush: cfg.OnFlush, OnConnected: up,
				Logger: cfg.Logger.With("relay", r.Name), Dial: cfg.NetDial,
			})
		}
	}
	return &Manager{cfg: cfg, log: cfg.Logger, clock: clock.Or(cfg.Clock), kick: make(chan struct{}, 1),
		upC: make(chan struct{}, 1), latency: map[uint32]time.Duration{}}
}

// connUp wakes Run to report a connection that came up (Dial's up).
func (m *Manager) connUp() {
	select {
	case m.upC <- struct{}{}:
	default:
	}
}

func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// SetRegions replaces the relay map.
func (m *Manager) SetRegions(rs []Region) {
	m.mu.Lock()
	same := slices.Equal(rs, m.regions)
	m.regions = slices.Clone(rs)
	m.mu.Unlock()
	if !same {
		m.poke()
	}
}

// SetTicket sets the relay ticket from the coordinator.
func (m *Manager) SetTicket(t []byte) {
	m.mu.Lock()
	m.ticket = slices.Clone(t)
	h := m.home
	m.mu.Unlock()
	if h != nil {
		h.client.SetTicket(t)
	}
	m.poke()
}

// SetRevocations sets the coordinator's signed revocation list, which every
// home relay connection hands its relay, so relays that never hear from the
// coordinator still refuse deleted nodes.
func (m *Manager) SetRevocations(b []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if bytes.Equal(b, m.revs) {
		return
	}
	m.revs = bytes.Clone(b)
	if m.home != nil {
		// Under mu, so a connection being switched to cannot get an
		// older list after this one.
		m.home.client.SetRevocations(m.revs)
	}
}

// SendBatch implements bind.Relay. It runs per batch of relayed
// packets, so it takes no lock.
func (m *Manager) SendBatch(dst key.Public, pkts [][]byte) error {
	h := m.sendTo.Load()
	if h == nil {
		return relay.ErrNotConnected
	}
	return h.client.SendBatch(dst, pkts)
}

// Status returns the home relay's state.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Connected: m.up, Latency: map[string]time.Duration{}}
	for _, r := range m.regions {
		if d, ok := m.latency[r.ID]; ok {
			st.Latency[r.Name] = d
		}
	}
	if m.home != nil {
		st.Home = m.home.region.Name
		if err := m.home.client.LastError(); err != nil && !m.up {
			st.Err = err.Error()
		}
	}
	return st
}

// Run keeps the home relay until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	// Timers rather than tickers (a clock.Clock makes timers): tick and
	// pref are re-armed as they are handled.
	tick := m.clock.NewTimer(tickInterval)
	defer tick.Stop()
	probe := m.clock.NewTimer(0)
	defer probe.Stop()
	type probeResult struct {
		lat  map[uint32]time.Duration
		full bool // all regions, not just the preferred one
	}
	probed := make(chan probeResult, 1)
	probing := false
	pref := m.clock.NewTimer(prefInterval)
	defer pref.Stop()
	defer func() {
		m.mu.Lock()
		h := m.home
		m.home = nil
		m.sendTo.Store(nil)
		m.mu.Unlock()
		if h != nil {
			h.cancel()
			<-h.done
		}
	}()
	for {
		settled := m.settled
		if probing || len(m.kick) > 0 || len(m.upC) > 0 {
			settled = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case settled <- struct{}{}:
			continue
		case <-m.kick:
			if !probing {
				probe.Reset(0)
			}
		case <-probe.C():
			if probing {
				probe.Reset(time.Second) // a probe is out; try again shortly
				break
			}
			probing = true
			go func() { probed <- probeResult{m.probeAll(ctx), true} }()
		case r := <-probed:
			probing = false
			m.mu.Lock()
			m.latency = r.lat
			m.mu.Unlock()
			if r.full {
				probe.Reset(probeInterval)
			}
		case <-pref.C():
			pref.Reset(prefInterval)
			m.mu.Lock()
			p, h := m.preferred(), m.home
			away := p != nil && (h == nil || h.region.ID != p.ID)
			m.mu.Unlock()
			if away && !probing {
				probing = true
				go func() { probed <- probeResult{m.probeOne(ctx, *p), false} }()
			}
		case <-tick.C():
			tick.Reset(tickInterval)
		case <-m.upC:
		}
		m.evaluate(ctx)
	}
}

// probeOne probes r and returns the latency map updated with the result.
func (m *Manager) probeOne(ctx context.Context, r Region) map[uint32]time.Duration {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	d, err := m.cfg.Probe(pctx, r)
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[uint32]time.Duration, len(m.latency)+1)
	for k, v := range m.latency {
		out[k] = v
	}
	if err == nil {
		out[r.ID] = d
	} else {
		delete(out, r.ID)
	}
	return out
}

func (m *Manager) probeAll(ctx context.Context) map[uint32]time.Duration {
	m.mu.Lock()
	regions := slices.Clone(m.regions)
	m.mu.Unlock()
	out := map[uint32]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			d, err := m.cfg.Probe(pctx, r)
			if err != nil {
				m.log.Debug("relay probe failed", "relay", r.Name, "err", err)
				return
			}
			mu.Lock()
			out[r.ID] = d
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// evaluate reports connection changes and picks or replaces the home.
func (m *Manager) evaluate(ctx context.Context) {
	now := m.clock.Now()
	m.mu.Lock()
	h := m.home
	up := h != nil && h.client.Connected()
	if h != nil && up {
		h.since = now
	}
	changed := up != m.up
	m.up = up
	want, reason := m.choose(now)
	m.mu.Unlock()
	if changed {
		m.log.Info("home relay connection", "up", up, "relay", regionName(h))
		m.cfg.OnChange(up)
	}
	if want == nil || (h != nil && h.region == *want) {
		return
	}
	m.log.Info("switching home relay", "from", regionName(h), "to", want.Name, "why", reason)
	m.switchTo(ctx, *want)
}

func regionName(h *home) string {
	if h == nil {
		return ""
	}
	return h.region.Name
}

// choose returns the region to be home, or nil to keep things as they
// are. Called with mu held.
func (m *Manager) choose(now time.Time) (*Region, string) {
	if len(m.ticket) == 0 || len(m.regions) == 0 {
		return nil, ""
	}
	h := m.home
	if h != nil && !slices.Contains(m.regions, h.region) {
		h = nil // left the relay map
	}
	best := func(skip uint32) *Region {
		var b *Region
		for i, r := range m.regions {
			d, ok := m.latency[r.ID]
			if !ok || r.ID == skip {
				continue
			}
			if b == nil || d < m.latency[b.ID] {
				b = &m.regions[i]
			}
		}
		return b
	}
	if pref := m.preferred(); pref != nil {
		_, reachable := m.latency[pref.ID]
		switch {
		case h == nil:
			return pref, "preferred"
		case h.region.ID != pref.ID && reachable:
			return pref, "preferred relay is back"
		case h.region.ID == pref.ID && (h.client.Connected() || now.Sub(h.since) <= failoverAfter):
			return nil, ""
		}
		// The preferred relay is down: fall through to the closest other.
	}
	switch {
	case h == nil:
		if b := best(0); b != nil {
			return b, "closest"
		}
		if len(m.latency) == 0 {
			// Nothing probed yet (or nothing answers): try the first.
			return &m.regions[0], "no latency yet"
		}
	case !h.client.Connected() && now.Sub(h.since) > failoverAfter:
		// Unreachable until the next probe says otherwise, so the
		// preference above does not send us straight back.
		delete(m.latency, h.region.ID)
		if b := best(h.region.ID); b != nil {
			return b, "home unreachable"
		}
	case h.client.Connected():
		cur, ok := m.latency[h.region.ID]
		if b := best(0); ok && b != nil && b.ID != h.region.ID {
			if d := m.latency[b.ID]; float64(d) < switchRatio*float64(cur) && cur-d >= switchMin {
				return b, fmt.Sprintf("closer (%v vs %v)", d, cur)
			}
		}
	}
	return nil, ""
}

func (m *Manager) preferred() *Region {
	for i, r := range m.regions {
		if r.ID == m.cfg.Preferred && r.ID != 0 {
			return &m.regions[i]
		}
	}
	return nil
}

func (m *Manager) switchTo(ctx context.Context, r Region) {
	m.mu.Lock()
	ticket := slices.Clone(m.ticket)
	m.mu.Unlock()
	c, err := m.cfg.Dial(r, ticket, m.connUp)
	if err != nil {
		m.log.Warn("relay client", "relay", r.Name, "err", err)
		return
	}
	cctx, cancel := context.WithCancel(ctx)
	nh := &home{region: r, client: c, cancel: cancel, done: make(chan struct{}), since: m.clock.Now()}
	go func() {
		defer close(nh.done)
		c.Run(cctx)
	}()
	m.mu.Lock()
	old := m.home
	m.home = nh
	m.sendTo.Store(nh)
	if m.revs != nil {
		c.SetRevocations(m.revs)
	}
	m.mu.Unlock()
	if old != nil {
		old.cancel()
	}
}

// probeHTTPS times a GET of /relay/probe on a fresh TLS connection. The
// relay is authenticated later by its key, not by this probe. It measures
// the network, so it reads the real clock, not Config.Clock.
func probeHTTPS(ctx context.Context, r Region, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (time.Duration, error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true, DialContext: dial}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+r.Addr+"/relay/probe", nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, errors.New(resp.Status)
	}
	return time.Since(start), nil
}
