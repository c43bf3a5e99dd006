// Package traversal finds direct paths between nodes through NATs with
// ICE. It runs one pion ICE agent per peer, all muxed on the node's single
// WireGuard socket (see dataplane/bind), so the NAT mapping ICE punches is
// the one WireGuard then uses. Signalling (credentials, candidates,
// restarts) goes through the coordinator stream, sealed end to end with
// NaCl box between the two node keys. The node with the larger public key
// controls the session. Per peer, a pathsel.Machine turns what ICE
// observes into the path the agent programs.
//
// ICE is lazy: a session runs only towards a peer that is active, i.e. sent
// us a WireGuard packet over the relay (the agent reports them with Seen)
// or an ICE signal, or had a working pair, within Config.IdleTimeout. A
// peer that never talks to us (offline, or a node without a data plane)
// costs no ICE agent; it is reached through the relay, and its first
// handshake there starts ICE within a tick. Without a relay every online
// peer is tried, as ICE is then the only way to reach it.
package traversal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/stun/v4"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

// ICE timing. Disconnection is noticed after DisconnectedTimeout without
// answers to the 1 s keepalive checks; FailedTimeout later pion gives up.
const (
	iceDisconnected = 3 * time.Second
	iceFailed       = 8 * time.Second
	iceKeepalive    = time.Second
	// pion waits 500 ms (server-reflexive) and 1 s (peer-reflexive) after
	// such a pair works for a better one before nominating it. Behind
	// NATs those are the pairs that work, and a better one, if any,
	// answers within a round trip or two: wait that long, not a second.
	srflxAcceptanceWait = 100 * time.Millisecond
	prflxAcceptanceWait = 250 * time.Millisecond
	tickInterval        = 250 * time.Millisecond
	addrInterval        = 5 * time.Second
	// A peer offers one host candidate per address of its host and a
	// server-reflexive one per STUN server and family; more than this
	// per session is a peer steering our checks, not a bigger host.
	maxRemoteCandidates = 32
	// pion's own candidates are under 150 bytes (IPv6 srflx with raddr);
	// anything longer is refused before parsing.
	maxCandidateLen = 256
	// defaultIdleTimeout outlasts WireGuard's 25 s persistent keepalive
	// several times over, so a live peer on the relay never goes idle.
	defaultIdleTimeout = 2 * time.Minute
	// defaultPrimeDelay is how long a session waits for the peer's
	// KIND_PRIMED before checking the peer's server-reflexive candidates
	// anyway (a peer that never primes: an older agent, or one without
	// our server-reflexive candidate). It outlasts the difference between
	// the moments the two sides learn each other's candidates (both gather
	// them at once; the signals cross the coordinator).
	defaultPrimeDelay = 200 * time.Millisecond
)

// Peer is what the manager needs to know about a peer.
type Peer struct {
	Key    key.Public
	Name   string // the node's name, for log lines
	Online bool   // connected to the coordinator, so signalling can reach it
	// LastDirect is the last direct endpoint a previous run confirmed
	// (and when), tried when nothing else carries the peer. Used only
	// when the peer is first set.
	LastDirect LastDirect
}

// LastDirect is a peer's last direct endpoint ICE confirmed.
type LastDirect struct {
	Endpoint netip.AddrPort
	At       time.Time
}

// Config configures a Manager.
type Config struct {
	PrivateKey key.Private
	PublicKey  key.Public
	Mux        ice.UniversalUDPMux
	// Send hands a sealed signal to the coordinator stream. It must not
	// block; it reports false when the signal could not be queued.
	Send func(Signal) bool
	// HostAddrs returns the host addresses ICE offers; a change restarts
	// the sessions so new candidates are gathered. They should be every
	// address of this host but loopback, link-local and the overlay's
	// (refused anyway): remote candidates at them are refused, since a
	// check there would reach this host, not the peer.
	HostAddrs func() []netip.Addr
	// Overlay reports addresses reachable only through the overlay itself
	// (overlay prefixes, advertised routes): candidates there would tunnel
	// WireGuard through WireGuard and are never used. Nil: none.
	Overlay func(netip.Addr) bool
	// RelayEndpoint returns the synthetic endpoint of a relayed peer
	// (nil: no relay support).
	RelayEndpoint func(key.Public) netip.AddrPort
	// Prime, if set, sends a datagram to dst from the shared socket with
	// a small IP TTL: it opens this node's own NAT mapping towards a
	// peer's server-reflexive candidate and dies in the network before
	// the peer's NAT. A router that keeps state for unsolicited WAN input
	// would otherwise take our first check as an inbound flow and move
	// its site's mapping for us to another port (a conntrack clash),
	// which keeps the pair off direct. Checks to a peer's
	// server-reflexive candidate start once both sides have primed: when
	// the peer's KIND_PRIMED arrives (it sends it after its primers left),
	// or PrimeDelay (default 200 ms) after our own primers at the latest.
	Prime      func(dst netip.AddrPort, ttl int)
	PrimeDelay time.Duration
	IPv6       bool
	// IdleTimeout: a peer that sent nothing over the relay, no signal and
	// had no working pair for this long gets no new ICE session (0: 2
	// minutes).
	IdleTimeout time.Duration
	Machine     pathsel.Config
	Logger      *slog.Logger
	Now         func() time.Time
	// SameHost lets every parsed remote candidate through, loopback and
	// this host's own addresses included: only for peers in one process
	// (the agent's in-process tests). Never set it on a real node.
	SameHost bool
}

// CandidateInfo is one side of a selected candidate pair.
type CandidateInfo struct {
	Type    string
	Address netip.AddrPort
}

// PeerStatus is the traversal state of one peer.
type PeerStatus struct {
	Path   pathsel.Path
	State  pathsel.ICEState
	Local  *CandidateInfo
	Remote *CandidateInfo
	RTT    time.Duration
	Stats  pathsel.Stats
	// PathSince is when the path's kind (direct, relay, none) began (zero:
	// it has not changed since the peer appeared); LastFailure why the
	// last ICE session failed, "" if it did not.
	PathSince   time.Time
	LastFailure string
	// Active: the peer talked to this node (a packet, a signal or a live
	// direct pair) within the idle timeout: a pair in use, not just one
	// the map lists.
	Active bool
}

// Counters sums session outcomes over all peers, including removed ones.
type Counters struct {
	Attempts, Successes, Failures, Restarts uint64
	SignalsIn, SignalsOut, SignalsDropped   uint64
	// SignalsHeld counts signals from nodes the map did not have yet,
	// held and replayed when it did (or dropped after heldFor).
	SignalsHeld uint64
	// Remote candidates from signals: added to a session, refused
	// (malformed, too long, or a type or address never checked; see
	// remoteCandidate), or dropped over maxRemoteCandidates.
	CandidatesAdded, CandidatesRefused, CandidatesDropped uint64
}

type session struct {
	id      uint64
	agent   *ice.Agent
	ctx     context.Context // ends when the session is closed
	cancel  context.CancelFunc
	dialing bool
	remotes int // remote candidates added, at most maxRemoteCandidates
	local   *CandidateInfo
	remote  *CandidateInfo
	// Priming (Config.Prime). mapped: this node's own server-reflexive
	// candidate is gathered (or gathering is over); priming holds remote
	// server-reflexive candidates waiting for it. held: candidates we
	// primed, waiting for the peer's KIND_PRIMED (peerPrimed) or the
	// fallback delay.
	mapped     bool
	priming    []ice.Candidate
	held       []ice.Candidate
	peerPrimed bool
}

type peer struct {
	nk          key.Public
	name        string
	controlling bool
	online      bool
	m           *pathsel.Machine
	s           *session
	lastPath    pathsel.Path
	pathSince   time.Time     // when lastPath's kind began
	lastFailure string        // why the last session failed; "" once one connects
	lastRequest time.Time     // controlled side: last restart request sent
	requestGap  time.Duration // controlled side without a session: wait between requests, doubling
	lastActive  time.Time     // last packet over the relay or signal from the peer
	seen        atomic.Bool   // a relayed packet arrived since the last tick; set by Seen without mu
}

// Manager runs the ICE sessions. Create with New, start Run.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{} // capacity 1

	qmu   sync.Mutex // guards queue; pion callbacks only ever take qmu
	queue []func()
	wake  chan struct{} // capacity 1

	seen atomic.Pointer[map[key.Public]*peer] // copy of peers for Seen, replaced (never mutated) under mu

	mu      sync.Mutex // guards everything below
	peers   map[key.Public]*peer
	stun    []*stun.URI
	hosts   []netip.Addr
	gone    pathsel.Stats // counters of peers that left
	signals Counters
	relayUp bool
	// held: signals from nodes not (yet) in the map, replayed when the
	// map brings them (held.go).
	held map[key.Public][]heldSignal
}

// New validates cfg and returns a manager.
func New(cfg Config) (*Manager, error) {
	if cfg.Mux == nil || cfg.Send == nil || cfg.HostAddrs == nil {
		return nil, errors.New("traversal: Mux, Send and HostAddrs are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.PrimeDelay <= 0 {
		cfg.PrimeDelay = defaultPrimeDelay
	}
	return &Manager{
		cfg: cfg, log: cfg.Logger, changed: make(chan struct{}, 1), wake: make(chan struct{}, 1),
		peers: map[key.Public]*peer{}, hosts: cfg.HostAddrs(),
	}, nil
}

// Seen records that a WireGuard packet from key arrived over the relay:
// the peer is alive and talking to us, so ICE should look for a direct
// path. It is called for every relayed packet: one map read and, at most
// once per tick per peer, a store and a wake-up.
func (m *Manager) Seen(nk key.Public) {
	ps := m.seen.Load()
	if ps == nil {
		return
	}
	if p := (*ps)[nk]; p != nil && !p.seen.Load() {
		p.seen.Store(true)
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
}

// Changed is signalled (coalesced) when some peer's path may have changed.
func (m *Manager) Changed() <-chan struct{} { return m.changed }

// Path returns the current path to a peer.
func (m *Manager) Path(nk key.Public) pathsel.Path {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[nk]; p != nil {
		return m.path(p)
	}
	return pathsel.Path{}
}

// path is p's path with the relay endpoint filled in. Called with mu held.
func (m *Manager) path(p *peer) pathsel.Path {
	path := p.m.Path()
	if path.Kind == pathsel.Relay {
		path.Endpoint = m.cfg.RelayEndpoint(p.nk)
	}
	return path
}

// SetRelay tells the manager whether the node's relay connection is up:
// peers without a direct path use it.
func (m *Manager) SetRelay(up bool) {
	if m.cfg.RelayEndpoint == nil {
		return
	}
	m.post(func() {
		m.relayUp = up
		for _, p := range m.peers {
			p.m.SetRelay(up)
		}
		m.notifyIfChanged()
	})
}

// Status returns the traversal state of a peer.
func (m *Manager) Status(nk key.Public) (PeerStatus, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[nk]
	if p == nil {
		return PeerStatus{}, false
	}
	now := m.cfg.Now()
	st := PeerStatus{Path: m.path(p), State: p.m.State(), Stats: p.m.Stats(), PathSince: p.pathSince, LastFailure: p.lastFailure,
		Active: p.m.State() == pathsel.Connected || !p.lastActive.IsZero() && now.Sub(p.lastActive) < m.cfg.IdleTimeout}
	if p.s != nil && p.m.State() == pathsel.Connected {
		st.Local, st.Remote = p.s.local, p.s.remote
		if ps, ok := p.s.agent.GetSelectedCandidatePairStats(); ok {
			st.RTT = time.Duration(ps.CurrentRoundTripTime * float64(time.Second))
		}
	}
	return st, true
}

// Counters returns totals over all peers.
func (m *Manager) Counters() Counters {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.signals
	sum := m.gone
	for _, p := range m.peers {
		s := p.m.Stats()
		sum.Attempts += s.Attempts
		sum.Successes += s.Successes
		sum.Failures += s.Failures
		sum.Restarts += s.Restarts
	}
	c.Attempts, c.Successes, c.Failures, c.Restarts = sum.Attempts, sum.Successes, sum.Failures, sum.Restarts
	return c
}

// post queues f to run on the manager goroutine with mu held.
func (m *Manager) post(f func()) {
	m.qmu.Lock()
	m.queue = append(m.queue, f)
	m.qmu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// SetPeers replaces the set of peers.
func (m *Manager) SetPeers(peers []Peer) {
	peers = slices.Clone(peers)
	m.post(func() { m.setPeers(peers) })
}

// SetSTUN sets the STUN servers (host:port) used for server-reflexive
// candidates; sessions started afterwards use them.
func (m *Manager) SetSTUN(servers []string) {
	var uris []*stun.URI
	for _, s := range servers {
		u, err := stun.ParseURI("stun:" + s)
		if err != nil {
			m.log.Warn("ignoring bad STUN server", "server", s, "err", err)
			continue
		}
		uris = append(uris, u)
	}
	m.post(func() { m.stun = uris })
}

// Reconnected tells the manager the coordinator is reachable again:
// sessions that failed for want of signalling during the outage start
// again at once for every peer not on a confirmed direct path, without
// the backoff the outage built up. A peer this node had a direct path
// to counts as active even if no packet came since (lazy ICE would wait
// for one): the pair was direct before the outage and should be again,
// and after a coordinator restart that carried presence over, no peer
// comes online in the map to prompt it.
func (m *Manager) Reconnected() {
	m.post(func() {
		now := m.cfg.Now()
		for _, p := range m.peers {
			if p.m.State() == pathsel.Connected {
				continue
			}
			p.m.Reset(now)
			p.requestGap, p.lastRequest = 0, time.Time{}
			if ep, _ := p.m.LastDirect(); ep.IsValid() {
				p.lastActive = now
			}
		}
	})
}

// LastDirect returns each peer's last confirmed direct endpoint, for the
// owner to save across restarts.
func (m *Manager) LastDirect() map[key.Public]LastDirect {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[key.Public]LastDirect{}
	for k, p := range m.peers {
		if ep, at := p.m.LastDirect(); ep.IsValid() {
			out[k] = LastDirect{Endpoint: ep, At: at}
		}
	}
	return out
}

// HandleSignal processes a signal the coordinator forwarded.
func (m *Manager) HandleSignal(sig Signal) {
	m.post(func() { m.handleSignal(sig) })
}

// Run drives sessions until ctx ends, then closes them all.
func (m *Manager) Run(ctx context.Context) error {
	tick := time.NewTicker(tickInterval)
	defer tick.Stop()
	addrs := time.NewTicker(addrInterval)
	defer addrs.Stop()
	defer func() {
		m.mu.Lock()
		for _, p := range m.peers {
			m.closeSession(p)
		}
		m.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-tick.C:
		case <-addrs.C:
			m.checkAddrs()
		}
		m.qmu.Lock()
		q := m.queue
		m.queue = nil
		m.qmu.Unlock()
		m.mu.Lock()
		for _, f := range q {
			f()
		}
		m.tickLocked()
		m.mu.Unlock()
	}
}

func (m *Manager) checkAddrs() {
	hosts := m.cfg.HostAddrs()
	m.mu.Lock()
	defer m.mu.Unlock()
	if slices.Equal(hosts, m.hosts) {
		return
	}
	m.log.Info("host addresses changed; restarting ICE sessions without a working pair", "old", m.hosts, "new", hosts)
	m.hosts = hosts
	now := m.cfg.Now()
	for _, p := range m.peers {
		// A connected pair keeps working (its keepalives say so); if the
		// change broke it, the disconnect restarts it within seconds.
		if p.m.State() == pathsel.Connected || !m.active(p, now) {
			continue
		}
		if p.controlling {
			p.m.Kick(now)
		} else if p.online {
			m.send(p, &api.SignalPayload{Kind: api.SignalPayload_KIND_RESTART_REQUEST, Session: 1})
			p.lastRequest = now
		}
	}
}

func (m *Manager) setPeers(peers []Peer) {
	now := m.cfg.Now()
	seen := make(map[key.Public]bool, len(peers))
	for _, pi := range peers {
		seen[pi.Key] = true
		p := m.peers[pi.Key]
		if p == nil {
			p = &peer{nk: pi.Key, controlling: bytes.Compare(m.cfg.PublicKey[:], pi.Key[:]) > 0,
				m: pathsel.NewMachine(m.cfg.Machine, now)}
			p.m.SetRelay(m.relayUp)
			p.m.Seed(pi.LastDirect.Endpoint, pi.LastDirect.At)
			m.peers[pi.Key] = p
		}
		p.name = pi.Name
		if pi.Online && !p.online && p.controlling && p.m.State() != pathsel.Connected {
			p.m.Kick(now) // it just came (back): try at once, not after the backoff
		}
		p.online = pi.Online
		m.replay(pi.Key)
	}
	for k, p := range m.peers {
		if !seen[k] {
			m.closeSession(p)
			s := p.m.Stats()
			m.gone.Attempts += s.Attempts
			m.gone.Successes += s.Successes
			m.gone.Failures += s.Failures
			m.gone.Restarts += s.Restarts
			delete(m.peers, k)
		}
	}
	ps := maps.Clone(m.peers)
	m.seen.Store(&ps)
	m.notifyIfChanged()
}

// named is how log lines name p. Called with mu held.
func (p *peer) named() key.Named { return key.Named{Name: p.name, Key: p.nk} }

// named is how log lines name the peer with key nk. Called with mu held.
func (m *Manager) named(nk key.Public) key.Named {
	if p := m.peers[nk]; p != nil {
		return p.named()
	}
	return key.Named{Key: nk}
}

// active reports whether ICE should run towards p: it talked to us
// lately, or there is no relay to reach it through. Called with mu held.
func (m *Manager) active(p *peer, now time.Time) bool {
	if !m.relayUp {
		return true
	}
	return !p.lastActive.IsZero() && now.Sub(p.lastActive) < m.cfg.IdleTimeout
}

// tickLocked applies timeouts and starts due sessions.
func (m *Manager) tickLocked() {
	now := m.cfg.Now()
	for _, p := range m.peers {
		// A live pair proves the peer is there too: when it breaks (NAT
		// rebinding, say), the next session must not wait for the peer's
		// next keepalive over the relay, up to 25 s away.
		if st := p.m.State(); p.seen.Swap(false) || st == pathsel.Connected || st == pathsel.Disconnected {
			p.lastActive = now
		}
		due := p.m.Tick(now)
		if p.m.State() == pathsel.Failed && p.s != nil {
			m.closeSession(p)
		}
		if !due || !p.online || !m.active(p, now) {
			continue
		}
		if p.controlling {
			if err := m.offer(p, now); err != nil {
				lvl := slog.LevelWarn
				if errors.Is(err, errOfferNotSent) {
					lvl = slog.LevelDebug // the coordinator is away: Reconnected starts again
				}
				m.log.Log(context.Background(), lvl, "start ICE session", "peer", p.named(), "err", err)
				p.m.Started(now)
				p.m.Failed(now)
				p.lastFailure = "the offer could not be sent: " + err.Error()
			}
		} else if gap := max(p.requestGap, time.Second); now.Sub(p.lastRequest) >= gap {
			// Only the controlling side starts sessions; ask it. (A request
			// that crosses its offer finds it checking and is ignored.)
			// After a failure the machine's backoff spaces the requests;
			// before any session, the gap doubles until an offer comes.
			m.send(p, &api.SignalPayload{Kind: api.SignalPayload_KIND_RESTART_REQUEST, Session: 1})
			p.lastRequest = now
			if p.m.State() == pathsel.Idle {
				p.requestGap = min(2*gap, 30*time.Second)
			}
		}
	}
	m.notifyIfChanged()
}

func (m *Manager) notifyIfChanged() {
	changed := false
	for _, p := range m.peers {
		if path := m.path(p); path != p.lastPath {
			m.log.Info("path changed", "peer", p.named(), "from", describe(p.lastPath), "to", describe(path))
			if path.Kind != p.lastPath.Kind {
				p.pathSince = m.cfg.Now()
			}
			p.lastPath = path
			changed = true
		}
	}
	if changed {
		select {
		case m.changed <- struct{}{}:
		default:
		}
	}
}

func describe(p pathsel.Path) string {
	if p.LastKnown {
		return "last known direct " + p.Endpoint.String()
	}
	if p.Kind == pathsel.Direct {
		return "direct " + p.Endpoint.String()
	}
	return p.Kind.String()
}

func newSessionID() uint64 {
	var b [8]byte
	for {
		rand.Read(b[:])
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

func (m *Manager) newAgent(p *peer) (*ice.Agent, error) {
	disc, failed, ka := iceDisconnected, iceFailed, iceKeepalive
	srflxWait, prflxWait := srflxAcceptanceWait, prflxAcceptanceWait
	nets := []ice.NetworkType{ice.NetworkTypeUDP4}
	if m.cfg.IPv6 {
		nets = append(nets, ice.NetworkTypeUDP6)
	}
	cfg := &ice.AgentConfig{
		Urls:                m.stun,
		NetworkTypes:        nets,
		CandidateTypes:      []ice.CandidateType{ice.CandidateTypeHost, ice.CandidateTypeServerReflexive},
		UDPMux:              m.cfg.Mux,
		UDPMuxSrflx:         m.cfg.Mux,
		MulticastDNSMode:    ice.MulticastDNSModeDisabled,
		DisconnectedTimeout: &disc,
		FailedTimeout:       &failed,
		KeepaliveInterval:   &ka,
		// How long the controlling side waits, once a pair of this
		// kind works, for a better one before nominating it (host
		// pairs: at once).
		SrflxAcceptanceMinWait: &srflxWait,
		PrflxAcceptanceMinWait: &prflxWait,
		LoggerFactory:          pionLogs{m.log.With("peer", p.named())},
	}
	if !m.cfg.SameHost {
		// Signalled candidates pass remoteCandidate first; this catches
		// peer-reflexive ones, learned from the source of a check. pion
		// sends to the unmapped address.
		cfg.RemoteIPFilter = func(ip net.IP) bool {
			a, ok := netip.AddrFromSlice(ip)
			return ok && unsafeAddr(a.Unmap()) == ""
		}
	}
	return ice.NewAgent(cfg)
}

// startSession creates an agent for session id and wires its callbacks.
func (m *Manager) startSession(p *peer, id uint64, now time.Time) (*session, error) {
	m.closeSession(p)
	ag, err := m.newAgent(p)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{id: id, agent: ag, ctx: ctx, cancel: cancel}
	nk := p.nk
	ag.OnCandidate(func(c ice.Candidate) {
		if c == nil {
			// Gathering is over (no STUN server answered, say): prime
			// what waits for our own mapping anyway.
			m.post(func() {
				if p := m.peers[nk]; p != nil && p.s == s {
					m.primeReady(nk, s)
				}
			})
			return
		}
		raw := c.Marshal()
		srflx := c.Type() == ice.CandidateTypeServerReflexive
		m.post(func() {
			if p := m.peers[nk]; p != nil && p.s == s {
				m.send(p, &api.SignalPayload{Kind: api.SignalPayload_KIND_CANDIDATE, Session: id, Candidates: []string{raw}})
				if srflx {
					m.primeReady(nk, s)
				}
			}
		})
	})
	ag.OnConnectionStateChange(func(st ice.ConnectionState) {
		m.post(func() { m.onState(nk, s, st) })
	})
	ag.OnSelectedCandidatePairChange(func(ice.Candidate, ice.Candidate) {
		m.post(func() { m.onState(nk, s, ice.ConnectionStateConnected) })
	})
	p.s = s
	p.requestGap = 0
	p.m.Started(now)
	return s, nil
}

// offer starts a session as the controlling side.
func (m *Manager) offer(p *peer, now time.Time) error {
	s, err := m.startSession(p, newSessionID(), now)
	if err != nil {
		return err
	}
	ufrag, pwd, err := s.agent.GetLocalUserCredentials()
	if err != nil {
		return err
	}
	if !m.send(p, &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: s.id, Ufrag: ufrag, Pwd: pwd}) {
		// No coordinator to carry it: the session cannot start, and left
		// checking it would ignore the peer's requests until its timeout.
		m.closeSession(p)
		return errOfferNotSent
	}
	return s.agent.GatherCandidates()
}

// errOfferNotSent: the offer did not leave (no coordinator stream).
var errOfferNotSent = errors.New("offer not sent: no coordinator stream")

func (m *Manager) closeSession(p *peer) {
	if p.s == nil {
		return
	}
	s := p.s
	p.s = nil
	s.cancel()
	// Close waits for pion's loop, whose callbacks only queue work; run it
	// off this goroutine anyway so a slow close never stalls every peer.
	go s.agent.Close()
	if st := p.m.State(); st != pathsel.Failed && st != pathsel.Idle {
		p.m.Closed(m.cfg.Now())
	}
}

func (m *Manager) onState(nk key.Public, s *session, st ice.ConnectionState) {
	p := m.peers[nk]
	if p == nil || p.s != s {
		return // a session we already replaced
	}
	now := m.cfg.Now()
	switch st {
	case ice.ConnectionStateConnected, ice.ConnectionStateCompleted:
		pair, err := s.agent.GetSelectedCandidatePair()
		if err != nil || pair == nil {
			return
		}
		remote, ok := candidateInfo(pair.Remote)
		if !ok {
			m.log.Warn("selected pair has an unusable remote address", "peer", p.named(), "remote", pair.Remote.String())
			return
		}
		s.local, _ = candidateInfo(pair.Local)
		s.remote = remote
		p.m.Connected(remote.Address, now)
		p.lastFailure = ""
	case ice.ConnectionStateDisconnected:
		p.m.Disconnected(now)
	case ice.ConnectionStateFailed:
		p.m.Failed(now)
		p.lastFailure = "no candidate pair answered its checks (a symmetric NAT or a firewall in the way)"
		m.closeSession(p)
	}
	m.notifyIfChanged()
}

func candidateInfo(c ice.Candidate) (*CandidateInfo, bool) {
	if c == nil {
		return nil, false
	}
	a, err := netip.ParseAddr(c.Address())
	if err != nil || c.Port() <= 0 || c.Port() > 65535 {
		return nil, false
	}
	return &CandidateInfo{Type: c.Type().String(), Address: netip.AddrPortFrom(a.Unmap(), uint16(c.Port()))}, true
}

// send seals pl for p and hands it to the coordinator stream; false if
// it did not leave.
func (m *Manager) send(p *peer, pl *api.SignalPayload) bool {
	pl.SentUnixMs = m.cfg.Now().UnixMilli()
	sig, err := Seal(pl, p.nk, m.cfg.PrivateKey)
	if err != nil {
		m.log.Warn("seal signal", "peer", p.named(), "err", err)
		return false
	}
	if m.cfg.Send(sig) {
		m.signals.SignalsOut++
		return true
	}
	m.signals.SignalsDropped++
	return false
}

func (m *Manager) handleSignal(sig Signal) {
	pl, err := Open(sig, m.cfg.PrivateKey, m.cfg.Now())
	if err != nil {
		m.signals.SignalsDropped++
		m.log.Debug("dropping signal", "err", err)
		return
	}
	nk := sig.Peer
	p := m.peers[nk]
	if p == nil {
		m.hold(sig)
		return
	}
	m.signals.SignalsIn++
	now := m.cfg.Now()
	p.lastActive = now
	switch pl.GetKind() {
	case api.SignalPayload_KIND_OFFER:
		if p.controlling {
			m.log.Debug("dropping offer from the controlled side", "peer", p.named())
			return
		}
		if p.s != nil && p.s.id == pl.GetSession() {
			return // duplicate
		}
		s, err := m.startSession(p, pl.GetSession(), now)
		if err != nil {
			m.log.Warn("answer ICE session", "peer", p.named(), "err", err)
			return
		}
		ufrag, pwd, err := s.agent.GetLocalUserCredentials()
		if err != nil {
			return
		}
		m.send(p, &api.SignalPayload{Kind: api.SignalPayload_KIND_ANSWER, Session: s.id, Ufrag: ufrag, Pwd: pwd})
		if err := s.agent.GatherCandidates(); err != nil {
			m.log.Warn("gather candidates", "peer", p.named(), "err", err)
		}
		m.dial(nk, s, pl.GetUfrag(), pl.GetPwd(), false)
	case api.SignalPayload_KIND_ANSWER:
		if !p.controlling || p.s == nil || p.s.id != pl.GetSession() || p.s.dialing {
			return
		}
		m.dial(nk, p.s, pl.GetUfrag(), pl.GetPwd(), true)
	case api.SignalPayload_KIND_CANDIDATE:
		if p.s == nil || p.s.id != pl.GetSession() {
			return
		}
		for i, raw := range pl.GetCandidates() {
			if p.s.remotes >= maxRemoteCandidates {
				n := uint64(len(pl.GetCandidates()) - i)
				m.signals.CandidatesDropped += n
				m.log.Debug("dropping remote candidates over the session's bound", "peer", p.named(), "dropped", n, "max", maxRemoteCandidates)
				break
			}
			var c ice.Candidate
			var err error
			if m.cfg.SameHost {
				c, err = ice.UnmarshalCandidate(raw)
			} else {
				c, err = remoteCandidate(raw, m.local)
			}
			if err != nil {
				m.signals.CandidatesRefused++
				m.log.Debug("refusing remote candidate", "peer", p.named(), "err", err)
				continue
			}
			p.s.remotes++
			if m.cfg.Prime != nil && c.Type() == ice.CandidateTypeServerReflexive {
				if dst, ok := candidateAddr(c); ok && dst.Addr().Is4() {
					p.s.priming = append(p.s.priming, c)
					if p.s.mapped {
						m.primeReady(nk, p.s)
					}
					continue
				}
			}
			m.addRemote(nk, p.s, c)
		}
	case api.SignalPayload_KIND_PRIMED:
		if p.s == nil || p.s.id != pl.GetSession() {
			return
		}
		p.s.peerPrimed = true
		m.release(nk, p.s)
	case api.SignalPayload_KIND_RESTART_REQUEST:
		if p.controlling && p.m.State() != pathsel.Checking {
			m.log.Info("peer asked for an ICE restart", "peer", p.named())
			p.m.Kick(now)
		}
	default:
		m.signals.SignalsDropped++
	}
}

// primeTTLs pass a home router and a carrier-grade NAT behind it, and
// end in the carrier's network, well before any peer's NAT.
var primeTTLs = []int{2, 3}

// primeReady notes that this node's own mapping exists (its
// server-reflexive candidate is gathered, or gathering is over), primes
// the remote candidates waiting for it and tells the peer (KIND_PRIMED).
// Primers wait for our own STUN query so that a node's first datagram
// out of its NAT is always that query: behind a NAT shared by hosts on
// one port, the first flow decides which host keeps the port. The primed
// candidates are checked once the peer has primed too (release). Called
// with mu held.
func (m *Manager) primeReady(nk key.Public, s *session) {
	s.mapped = true
	cs := s.priming
	s.priming = nil
	p := m.peers[nk]
	if len(cs) == 0 || p == nil || p.s != s {
		return
	}
	for _, c := range cs {
		dst, _ := candidateAddr(c)
		for _, ttl := range primeTTLs {
			m.cfg.Prime(dst, ttl)
		}
	}
	m.send(p, &api.SignalPayload{Kind: api.SignalPayload_KIND_PRIMED, Session: s.id})
	s.held = append(s.held, cs...)
	if s.peerPrimed {
		m.release(nk, s)
		return
	}
	time.AfterFunc(m.cfg.PrimeDelay, func() {
		m.post(func() {
			if p := m.peers[nk]; p != nil && p.s == s {
				m.release(nk, s)
			}
		})
	})
}

// release adds the candidates a session primed and held to its agent:
// the peer has primed too, or stopped being waited for. Called with mu
// held.
func (m *Manager) release(nk key.Public, s *session) {
	cs := s.held
	s.held = nil
	for _, c := range cs {
		m.addRemote(nk, s, c)
	}
}

// addRemote adds a remote candidate to a session. Called with mu held.
func (m *Manager) addRemote(nk key.Public, s *session, c ice.Candidate) {
	if err := s.agent.AddRemoteCandidate(c); err != nil {
		m.signals.CandidatesRefused++
		m.log.Debug("add remote candidate", "peer", m.named(nk), "err", err)
		return
	}
	m.signals.CandidatesAdded++
}

func candidateAddr(c ice.Candidate) (netip.AddrPort, bool) {
	a, err := netip.ParseAddr(c.Address())
	if err != nil || c.Port() <= 0 || c.Port() > 65535 {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(c.Port())), true
}

// local reports addresses a check must never go to besides those
// remoteCandidate refuses anyway: this host's own, and those reached
// through the overlay (WireGuard through WireGuard). Called with mu held.
func (m *Manager) local(a netip.Addr) bool {
	return slices.Contains(m.hosts, a) || (m.cfg.Overlay != nil && m.cfg.Overlay(a))
}

// errCandidate wraps every refusal of a remote candidate.
var errCandidate = errors.New("remote candidate refused")

// Special-purpose IPv4 and IPv6 blocks that netip has no method for.
var (
	thisNetwork    = netip.MustParsePrefix("0.0.0.0/8")   // "this network": 0.x.x.x goes to this host on Linux
	reservedV4     = netip.MustParsePrefix("240.0.0.0/4") // reserved, and 255.255.255.255 (broadcast)
	ipv4Compatible = netip.MustParsePrefix("::/96")       // deprecated; sit tunnels them into IPv4
)

// remoteCandidate parses a candidate as a peer signals it and refuses
// what would make this node send STUN checks where no peer can be:
// anything but a UDP host or server-reflexive candidate (edgewire
// gathers no others and has no TURN; peer-reflexive ones are learned
// from checks, never signalled), a port of 0, names (mDNS), and
// addresses that are unspecified, loopback, link-local, multicast,
// broadcast, in 0.0.0.0/8 or 240.0.0.0/4, IPv4 inside IPv6, or for
// which local reports true. Private (RFC 1918, ULA) addresses pass:
// peers on one LAN reach each other at their host candidates.
//
// A signal is authenticated, but that only says which peer sent it; a
// peer (or a node that got hold of its key) must not be able to point
// this node's checks at this host, its links or its overlay.
func remoteCandidate(raw string, local func(netip.Addr) bool) (ice.Candidate, error) {
	if len(raw) > maxCandidateLen {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", errCandidate, len(raw), maxCandidateLen)
	}
	c, err := ice.UnmarshalCandidate(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCandidate, err)
	}
	if t := c.Type(); t != ice.CandidateTypeHost && t != ice.CandidateTypeServerReflexive {
		return nil, fmt.Errorf("%w: type %s", errCandidate, t)
	}
	if !c.NetworkType().IsUDP() {
		return nil, fmt.Errorf("%w: network %s", errCandidate, c.NetworkType())
	}
	a, err := netip.ParseAddr(c.Address())
	if err != nil {
		return nil, fmt.Errorf("%w: address %q is not an IP address", errCandidate, c.Address())
	}
	if why := unsafeAddr(a); why != "" {
		return nil, fmt.Errorf("%w: address %s is %s", errCandidate, a, why)
	}
	if local != nil && local(a) {
		return nil, fmt.Errorf("%w: address %s is this host's or the overlay's", errCandidate, a)
	}
	if c.Port() <= 0 || c.Port() > 65535 {
		return nil, fmt.Errorf("%w: port %d", errCandidate, c.Port())
	}
	return c, nil
}

// unsafeAddr says why a must never get a check, or "" if it may.
func unsafeAddr(a netip.Addr) string {
	switch {
	case a.Zone() != "":
		return "scoped to a zone"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.Is4In6():
		return "IPv4-mapped IPv6"
	case a.Is6() && ipv4Compatible.Contains(a):
		return "IPv4-compatible IPv6"
	case a.IsMulticast():
		return "multicast"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case thisNetwork.Contains(a):
		return "in 0.0.0.0/8"
	case reservedV4.Contains(a):
		return "reserved or broadcast (240.0.0.0/4)"
	}
	return ""
}

// dial runs Dial (controlling) or Accept (controlled) in the background;
// the outcome arrives through the state callbacks.
func (m *Manager) dial(nk key.Public, s *session, ufrag, pwd string, controlling bool) {
	if ufrag == "" || pwd == "" {
		m.log.Debug("signal without ICE credentials", "peer", m.named(nk))
		return
	}
	s.dialing = true
	ctx, cancel := context.WithTimeout(s.ctx, 2*iceFailed)
	go func() {
		defer cancel()
		var err error
		if controlling {
			_, err = s.agent.Dial(ctx, ufrag, pwd)
		} else {
			_, err = s.agent.Accept(ctx, ufrag, pwd)
		}
		if err != nil {
			m.post(func() {
				if p := m.peers[nk]; p != nil && p.s == s {
					m.log.Debug("ICE session ended without connecting", "peer", p.named(), "err", err)
					p.m.Failed(m.cfg.Now())
					p.lastFailure = "the session ended before it connected: " + err.Error()
					m.closeSession(p)
				}
			})
		}
	}()
}
