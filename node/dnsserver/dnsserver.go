// Package dnsserver is the agent's DNS server, so an edge node needs no
// CoreDNS and no access to the API server: it answers Service names
// (<svc>.<ns>.svc.<cluster-domain>, SRV for named ports, headless endpoint
// names) and node names (<node>.<mesh-domain>) from the Service map the
// coordinator ships, and forwards every other name to the host's resolvers.
//
// Answers come from an index of ready-made records, rebuilt when the
// Service map or the node list changes and swapped in atomically, so a
// query is one map lookup and no record is built per query. Names inside
// the two local zones that the index does not hold get NXDOMAIN at once:
// the search-path queries a pod makes (ndots:5) never leave the node.
//
// ANY queries get NOTIMP and zone transfers REFUSED: this server holds no
// zone anyone should copy, and ANY is an amplification tool (RFC 8482).
//
// It serves local clients only (Config.Local: loopback, the host's
// addresses, the node's pod CIDRs). A query from anyone else, an overlay
// peer or a LAN neighbour that routes the DNS address through this node,
// gets REFUSED in the read loop, before it is parsed further; a TCP
// connection from one is closed as it is accepted. The agent's nftables
// guard (node/svcproxy) drops such traffic before it gets here; this is
// the second line.
//
// Forwarding is bounded so that a flood cannot take the agent's file
// descriptors or memory:
//
//   - at most MaxInFlight queries wait on upstreams; past that, SERVFAIL
//     at once;
//   - each upstream has a fixed pool of connected UDP sockets, each with
//     its own 16-bit id space and a map of the ids in flight; an answer
//     is taken only if its id is in flight on that socket and its
//     question matches, and anything else (late, spoofed) is dropped.
//     A socket is replaced after queriesPerSocket queries, so its source
//     port does not stay a fixed target. A truncated answer is fetched
//     again over TCP, one connection per query but at most
//     maxTCPForwards at once;
//   - each client address has a token bucket for forwarded queries
//     (ForwardRate, ForwardBurst; past it REFUSED) in a table of at most
//     maxLimited addresses. Local names are never limited: they cost a
//     map lookup and leave nothing behind;
//   - client TCP connections are at most MaxTCPConns.
//
// Forwarding loops (two agents, or an agent and a forwarder, each the
// other's upstream) end by themselves. Every forwarded query carries an
// EDNS0 option of local/experimental code ednsLoopCode listing the random
// instance ids of the forwarders it passed through; a query that arrives
// carrying our own id, or maxForwardHops ids, gets SERVFAIL and is not
// forwarded, so a loop of two agents costs one forward each. An EDNS0
// option was chosen over a marker in the name or id because it needs no
// state, passes through other edgewire agents intact, and resolvers that
// do not know it ignore it (RFC 6891). A hop in the loop that drops
// unknown options is caught by the second mechanism: identical questions
// in flight are coalesced into one upstream exchange, so the looped
// query waits for the exchange it is part of instead of starting another,
// and the loop ends when that exchange times out.
package dnsserver

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"

	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/types/services"
)

// Defaults; Config's zero values mean these.
const (
	DefaultClusterDomain = "cluster.local"
	DefaultMeshDomain    = "edgewire.internal"
	DefaultTTL           = 5 // seconds, for local answers and the SOA minimum

	DefaultMaxInFlight  = 256 // forwards waiting on upstreams at once
	DefaultForwardRate  = 200 // forwarded queries per second per client address
	DefaultForwardBurst = 400
	DefaultMaxTCPConns  = 128 // client TCP connections at once

	forwardTimeout = 2 * time.Second // per upstream and transport
	// maxLimited is how many client addresses the rate limiter tracks.
	maxLimited = 4096
	// localUDPSize is the largest UDP reply we send from the index and the
	// size we advertise in EDNS0 (DNS flag day 2020: no fragmentation).
	localUDPSize = 1232
)

// Config configures a Server.
type Config struct {
	Listen        netip.AddrPort   // e.g. 169.254.96.16:53; UDP and TCP; port required
	ClusterDomain string           // default "cluster.local"
	MeshDomain    string           // default "edgewire.internal"
	Upstreams     []netip.AddrPort // forwarders; what ParseResolvConf returned
	TTL           uint32           // local answers, seconds; default 5
	Logger        *slog.Logger

	// Local reports whether a client address is this node's own
	// (loopback, host addresses, local pod CIDRs; see node/localsrc).
	// Other clients get REFUSED and nothing else. nil: loopback only.
	Local func(netip.Addr) bool
	// MaxInFlight bounds the queries waiting on upstreams (coalesced
	// ones included); past it a query gets SERVFAIL at once. Default
	// DefaultMaxInFlight.
	MaxInFlight int
	// ForwardRate and ForwardBurst are each client address's token
	// bucket for queries that are forwarded; past it they get REFUSED.
	// Local names are never limited. Defaults DefaultForwardRate and
	// DefaultForwardBurst; a negative rate means no limit.
	ForwardRate  float64
	ForwardBurst int
	// MaxTCPConns bounds client TCP connections; more wait in the
	// kernel's accept queue. Default DefaultMaxTCPConns.
	MaxTCPConns int
	// Clock refills the rate limiter's buckets (nil: clock.Real).
	Clock clock.Clock
}

// Server answers DNS queries; see the package doc. It is a dns.Handler.
type Server struct {
	log       *slog.Logger
	listen    netip.AddrPort
	cluster   string // lowercase FQDN, "cluster.local."
	mesh      string // lowercase FQDN, "edgewire.internal."
	ttl       uint32
	upstreams []string // "host:port", self removed, in order
	pools     []*pool  // one per upstream, same order
	tcp       *dns.Client
	timeout   time.Duration // per upstream exchange; tests shorten it
	local     func(netip.Addr) bool
	clock     clock.Clock // of the rate limiter
	limiter   *limiter
	slots     chan struct{}   // a token per forward in flight
	tcpSlots  chan struct{}   // a token per TCP exchange with an upstream
	tcpConns  int             // client TCP connection limit
	id        [loopIDLen]byte // this server's id in loop markers
	noMarker  bool            // tests: forward without the loop marker, as a hop that drops options would

	callsMu sync.Mutex // guards calls
	calls   map[callKey]*call

	idx atomic.Pointer[index] // what ServeDNS reads; never nil after New

	mu     sync.Mutex // guards the inputs of the index and serializes rebuilds
	svcs   *services.Table
	nodes  map[string][]netip.Addr
	serial uint32 // SOA serial, bumped per rebuild

	stats counters
}

var _ dns.Handler = (*Server)(nil)

// New validates cfg and returns a Server with an empty index.
func New(cfg Config) (*Server, error) {
	if !cfg.Listen.IsValid() || cfg.Listen.Port() == 0 {
		return nil, fmt.Errorf("dnsserver: listen address %v needs an IP and a port", cfg.Listen)
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = DefaultClusterDomain
	}
	if cfg.MeshDomain == "" {
		cfg.MeshDomain = DefaultMeshDomain
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Local == nil {
		cfg.Local = netip.Addr.IsLoopback
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.ForwardRate == 0 {
		cfg.ForwardRate = DefaultForwardRate
	}
	if cfg.ForwardBurst == 0 {
		cfg.ForwardBurst = DefaultForwardBurst
	}
	if cfg.MaxTCPConns == 0 {
		cfg.MaxTCPConns = DefaultMaxTCPConns
	}
	if cfg.MaxInFlight < 0 || cfg.ForwardBurst < 0 || cfg.MaxTCPConns < 0 {
		return nil, fmt.Errorf("dnsserver: negative limit (in flight %d, burst %d, TCP connections %d)", cfg.MaxInFlight, cfg.ForwardBurst, cfg.MaxTCPConns)
	}
	cluster, err := zoneName("cluster domain", cfg.ClusterDomain)
	if err != nil {
		return nil, err
	}
	mesh, err := zoneName("mesh domain", cfg.MeshDomain)
	if err != nil {
		return nil, err
	}
	if inZone(cluster, mesh) || inZone(mesh, cluster) {
		return nil, fmt.Errorf("dnsserver: cluster domain %q and mesh domain %q overlap", cluster, mesh)
	}
	s := &Server{
		log:      cfg.Logger,
		listen:   cfg.Listen,
		cluster:  cluster,
		mesh:     mesh,
		ttl:      cfg.TTL,
		tcp:      &dns.Client{Net: "tcp"},
		timeout:  forwardTimeout,
		nodes:    map[string][]netip.Addr{},
		local:    cfg.Local,
		clock:    clock.Or(cfg.Clock),
		limiter:  newLimiter(cfg.ForwardRate, cfg.ForwardBurst, maxLimited),
		slots:    make(chan struct{}, cfg.MaxInFlight),
		tcpSlots: make(chan struct{}, maxTCPForwards),
		tcpConns: cfg.MaxTCPConns,
		calls:    map[callKey]*call{},
	}
	rand.Read(s.id[:])
	seen := map[netip.AddrPort]bool{}
	for _, u := range cfg.Upstreams {
		if !u.IsValid() || u.Port() == 0 || u.Addr().IsUnspecified() {
			return nil, fmt.Errorf("dnsserver: bad upstream %v", u)
		}
		u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
		if seen[u] {
			continue
		}
		seen[u] = true
		if isSelf(cfg.Listen, u) {
			s.log.Warn("dns upstream is this server, dropped", "upstream", u, "listen", cfg.Listen)
			continue
		}
		s.upstreams = append(s.upstreams, u.String())
		s.pools = append(s.pools, newPool(s, u))
	}
	if len(s.upstreams) == 0 {
		s.log.Warn("dns server has no upstream resolvers; names outside the cluster and mesh domains get SERVFAIL")
	}
	s.rebuildLocked() // no other goroutine has s yet
	return s, nil
}

// zoneName turns a configured domain into a lowercase FQDN.
func zoneName(what, d string) (string, error) {
	z := dns.Fqdn(strings.ToLower(d))
	if z == "." {
		return "", fmt.Errorf("dnsserver: %s must not be the root", what)
	}
	for _, l := range dns.SplitDomainName(z) {
		if !dnsLabel(l) {
			return "", fmt.Errorf("dnsserver: %s %q: label %q is not a DNS label", what, d, l)
		}
	}
	return z, nil
}

// isSelf reports whether queries sent to upstream u would reach the
// listener at listen: the same address, or, for a wildcard listener, a
// loopback or wildcard address of a family it accepts, on the same port.
func isSelf(listen, u netip.AddrPort) bool {
	la := listen.Addr().Unmap()
	ua := u.Addr().Unmap()
	if u.Port() != listen.Port() {
		return false
	}
	if la == ua.WithZone(la.Zone()) {
		return true
	}
	if !la.IsUnspecified() {
		return false
	}
	if !ua.IsLoopback() && !ua.IsUnspecified() {
		return false
	}
	// Run listens on "udp4" for 0.0.0.0 and dual-stack for [::].
	return la.Is6() || ua.Is4()
}

// SetServices replaces the Service table the server answers from.
func (s *Server) SetServices(t *services.Table) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svcs = t
	s.rebuildLocked()
}

// SetNodes replaces the node table (node name -> overlay addresses,
// including the local node). Names that are not DNS labels are skipped.
// The map is copied; the caller may reuse it.
func (s *Server) SetNodes(nodes map[string][]netip.Addr) {
	cp := make(map[string][]netip.Addr, len(nodes))
	for name, addrs := range nodes {
		lname := strings.ToLower(name)
		if !dnsLabel(lname) {
			s.log.Warn("dns: node name is not a DNS label, not served", "node", name)
			continue
		}
		cp[lname] = append(cp[lname], addrs...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes = cp
	s.rebuildLocked()
}

func (s *Server) rebuildLocked() {
	s.serial++
	s.idx.Store(buildIndex(s.cluster, s.mesh, s.ttl, s.serial, s.svcs, s.nodes))
}

// ServeDNS answers one query. It writes at most one reply and none to a
// message that is itself a response.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	s.serve(context.Background(), w, r)
}

func (s *Server) serve(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) {
	if r == nil || r.Response {
		s.stats.dropped.Add(1) // answering responses makes loops
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	if !s.local(clientAddr(w)) {
		s.stats.refusedSource.Add(1)
		m.Rcode = dns.RcodeRefused
		s.write(w, m)
		return
	}
	m.RecursionAvailable = len(s.upstreams) > 0
	switch {
	case r.Opcode != dns.OpcodeQuery:
		s.reject(w, m, dns.RcodeNotImplemented)
		return
	case len(r.Question) != 1:
		m.Question = nil
		s.reject(w, m, dns.RcodeFormatError)
		return
	}
	q := r.Question[0]
	opt := r.IsEdns0()
	switch {
	case opt != nil && opt.Version() != 0:
		m.Extra = []dns.RR{newOPT()}
		s.reject(w, m, dns.RcodeBadVers)
		return
	case q.Qclass != dns.ClassINET:
		s.reject(w, m, dns.RcodeRefused)
		return
	case q.Qtype == dns.TypeANY:
		s.reject(w, m, dns.RcodeNotImplemented)
		return
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		s.reject(w, m, dns.RcodeRefused)
		return
	}

	name := strings.ToLower(q.Name) // no allocation when already lowercase
	idx := s.idx.Load()
	e := idx.names[name]
	var z *zone
	if e != nil {
		z = e.zone
	} else {
		z = idx.zoneOf(name)
	}
	if z == nil {
		s.forward(ctx, w, r, m, opt)
		return
	}

	s.stats.local.Add(1)
	m.Authoritative = true
	if e == nil {
		m.Rcode = dns.RcodeNameError
		m.Ns = z.soa
	} else if set := e.lookup(q.Qtype); set == nil {
		m.Ns = z.soa // NODATA
	} else {
		m.Answer = set.answer
		m.Extra = set.extra
		if name != q.Name {
			m.Answer = withOwner(set.answer, q.Name)
		}
	}
	if opt != nil {
		// Extra slices in the index are clipped, so this append copies.
		m.Extra = append(m.Extra, newOPT())
	}
	if isUDP(w) {
		m.Truncate(min(udpSize(opt), localUDPSize))
	} else {
		m.Compress = true
	}
	s.write(w, m)
}

// newOPT is the OPT record of a local reply. Each reply needs its own:
// packing a message writes the extended rcode into it.
func newOPT() *dns.OPT {
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.SetUDPSize(localUDPSize)
	return o
}

// withOwner copies rrs with the owner name the client spelled, so a
// mixed-case query (0x20 randomization) sees its own spelling back.
func withOwner(rrs []dns.RR, owner string) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
		out[i].Header().Name = owner
	}
	return out
}

func (s *Server) reject(w dns.ResponseWriter, m *dns.Msg, rcode int) {
	s.stats.rejected.Add(1)
	m.Rcode = rcode
	s.write(w, m)
}

func (s *Server) write(w dns.ResponseWriter, m *dns.Msg) {
	s.stats.rcode(m.Rcode)
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug("dns write reply", "remote", w.RemoteAddr(), "err", err)
	}
}

func isUDP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.UDPAddr)
	return ok
}

// udpSize is the largest UDP reply the client accepts.
func udpSize(opt *dns.OPT) int {
	if opt == nil {
		return dns.MinMsgSize
	}
	return max(int(opt.UDPSize()), dns.MinMsgSize)
}

// Run serves UDP and TCP on the configured address until ctx ends, then
// waits for in-flight queries (forwarding is cancelled). It returns an
// error at once if it cannot listen, and nil when ctx ends.
func (s *Server) Run(ctx context.Context) error {
	udpNet, tcpNet := "udp", "tcp"
	if s.listen.Addr().Is4() {
		udpNet, tcpNet = "udp4", "tcp4"
	}
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, udpNet, s.listen.String())
	if err != nil {
		return fmt.Errorf("dns listen udp %s: %w", s.listen, err)
	}
	ln, err := lc.Listen(ctx, tcpNet, s.listen.String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns listen tcp %s: %w", s.listen, err)
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.closeUpstreams() // after the servers' handlers are done
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { s.serve(fctx, w, r) })
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	// Foreign clients are refused before miekg/dns parses their queries
	// or starts a goroutine for them.
	decorate := func(r dns.Reader) dns.Reader { return &localReader{inner: r, s: s} }
	tcpLn := netutil.LimitListener(&localListener{Listener: ln, s: s}, s.tcpConns)
	srvs := []*dns.Server{
		{PacketConn: pc, Handler: h, NotifyStartedFunc: notify, MsgAcceptFunc: s.accept, MsgInvalidFunc: s.invalid, DecorateReader: decorate},
		{Listener: tcpLn, Handler: h, NotifyStartedFunc: notify, MsgAcceptFunc: s.accept, MsgInvalidFunc: s.invalid},
	}
	errc := make(chan error, len(srvs))
	for _, srv := range srvs {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	done := 0
	for up := 0; up < len(srvs) && err == nil; {
		select {
		case <-started:
			up++
		case err = <-errc:
			done++
		}
	}
	if err == nil {
		s.log.Info("dns server listening", "addr", s.listen, "upstreams", s.upstreams)
		select {
		case <-ctx.Done():
		case err = <-errc:
			done++
		}
	}
	cancel() // in-flight forwards return now, so Shutdown's wait is short
	for _, srv := range srvs {
		srv.Shutdown() // "not started" for a server that failed: harmless
	}
	pc.Close() // stops a server that had not started when Shutdown ran
	ln.Close()
	for ; done < len(srvs); done++ {
		<-errc
	}
	if err != nil {
		return fmt.Errorf("dns serve %s: %w", s.listen, err)
	}
	return nil
}

// accept is miekg/dns's header check (responses ignored, one question,
// QUERY/NOTIFY only), counted and logged: those queries never reach
// ServeDNS, which would otherwise not see them at all.
func (s *Server) accept(dh dns.Header) dns.MsgAcceptAction {
	action := dns.DefaultMsgAcceptFunc(dh)
	switch action {
	case dns.MsgAccept:
	case dns.MsgIgnore:
		s.stats.dropped.Add(1)
		s.log.Debug("dns: ignoring a response sent as a query", "id", dh.Id)
	case dns.MsgRejectNotImplemented:
		s.stats.rejected.Add(1)
		s.stats.rcode(dns.RcodeNotImplemented)
		s.log.Debug("dns: refusing query", "id", dh.Id, "opcode", int(dh.Bits>>11)&0xF, "rcode", "NOTIMP")
	default:
		s.stats.rejected.Add(1)
		s.stats.rcode(dns.RcodeFormatError)
		s.log.Debug("dns: refusing malformed query", "id", dh.Id, "questions", dh.Qdcount, "rcode", "FORMERR")
	}
	return action
}

// invalid counts and logs messages miekg/dns could not parse (it answers
// FORMERR when the header parsed, nothing otherwise).
func (s *Server) invalid(m []byte, err error) {
	s.stats.rejected.Add(1)
	if len(m) >= 12 {
		s.stats.rcode(dns.RcodeFormatError)
	} else {
		s.stats.dropped.Add(1)
	}
	s.log.Debug("dns: dropping unparsable query", "len", len(m), "err", err)
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Local          uint64            // answered from the index (answers, NODATA, NXDOMAIN)
	Forwarded      uint64            // sent to the upstream resolvers (or SERVFAIL without any)
	Rejected       uint64            // malformed, unsupported or refused queries
	Dropped        uint64            // responses sent to us: never answered
	UpstreamErrors uint64            // failed exchanges with one upstream (timeouts, refused connections)
	RefusedSource  uint64            // queries and TCP connections from clients that are not local: REFUSED or closed
	RateLimited    uint64            // forwards past the client's rate: REFUSED
	Overloaded     uint64            // forwards past MaxInFlight: SERVFAIL
	Loops          uint64            // forwards carrying our own loop marker, or too many hops: SERVFAIL
	Coalesced      uint64            // forwards that waited for the same question already in flight
	StrayReplies   uint64            // upstream datagrams matching no query in flight (late, spoofed, garbled)
	TCPBusy        uint64            // truncated answers passed on because every TCP slot was taken
	Rcodes         map[string]uint64 // replies by rcode name ("NOERROR", "NXDOMAIN", ...; "OTHER")
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Local:          s.stats.local.Load(),
		Forwarded:      s.stats.forwarded.Load(),
		Rejected:       s.stats.rejected.Load(),
		Dropped:        s.stats.dropped.Load(),
		UpstreamErrors: s.stats.upstreamErrors.Load(),
		RefusedSource:  s.stats.refusedSource.Load(),
		RateLimited:    s.stats.rateLimited.Load(),
		Overloaded:     s.stats.overloaded.Load(),
		Loops:          s.stats.loops.Load(),
		Coalesced:      s.stats.coalesced.Load(),
		StrayReplies:   s.stats.strayReplies.Load(),
		TCPBusy:        s.stats.tcpBusy.Load(),
		Rcodes:         map[string]uint64{},
	}
	for rc := range s.stats.rcodes {
		n := s.stats.rcodes[rc].Load()
		if n == 0 {
			continue
		}
		name := "OTHER"
		if rc < otherRcode {
			if str, ok := dns.RcodeToString[rc]; ok {
				name = str
			}
		}
		st.Rcodes[name] += n
	}
	return st
}

const otherRcode = dns.RcodeBadCookie + 1 // bucket for rcodes without a name here

type counters struct {
	local, forwarded, rejected, dropped, upstreamErrors atomic.Uint64
	refusedSource, rateLimited, overloaded, loops       atomic.Uint64
	coalesced, strayReplies, tcpBusy                    atomic.Uint64
	rcodes                                              [otherRcode + 1]atomic.Uint64
}

func (c *counters) rcode(rc int) {
	if rc < 0 || rc > otherRcode {
		rc = otherRcode
	}
	c.rcodes[rc].Add(1)
}

// closeUpstreams closes the pooled upstream sockets and waits for their
// readers.
func (s *Server) closeUpstreams() {
	for _, p := range s.pools {
		p.close()
	}
}

// clientAddr is the client's address, unmapped; invalid if w's address
// is not an IP address.
func clientAddr(w dns.ResponseWriter) netip.Addr {
	return addrOf(w.RemoteAddr())
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// localReader hands miekg/dns only datagrams from local clients. Others
// get REFUSED here, in the read loop (a query that does not parse gets
// nothing), and are never parsed further or given a goroutine.
type localReader struct {
	inner dns.Reader
	s     *Server
}

var _ dns.PacketConnReader = (*localReader)(nil)

func (r *localReader) ReadTCP(conn net.Conn, timeout time.Duration) ([]byte, error) {
	return r.inner.ReadTCP(conn, timeout)
}

func (r *localReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *dns.SessionUDP, error) {
	for {
		m, sess, err := r.inner.ReadUDP(conn, timeout)
		if err != nil || r.s.local(addrOf(sess.RemoteAddr())) {
			return m, sess, err
		}
		if b := r.s.refusal(m); b != nil {
			dns.WriteToSessionUDP(conn, b, sess)
		}
	}
}

func (r *localReader) ReadPacketConn(conn net.PacketConn, timeout time.Duration) ([]byte, net.Addr, error) {
	pr, ok := r.inner.(dns.PacketConnReader)
	if !ok {
		return nil, nil, errors.New("dns reader cannot read packet connections")
	}
	for {
		m, from, err := pr.ReadPacketConn(conn, timeout)
		if err != nil || r.s.local(addrOf(from)) {
			return m, from, err
		}
		if b := r.s.refusal(m); b != nil {
			conn.WriteTo(b, from)
		}
	}
}

// refusal counts a query from a foreign client and returns the REFUSED
// reply to send, or nil for a message that is not a parsable query.
func (s *Server) refusal(b []byte) []byte {
	s.stats.refusedSource.Add(1)
	q := new(dns.Msg)
	if err := q.Unpack(b); err != nil || q.Response {
		return nil
	}
	m := new(dns.Msg)
	m.SetRcode(q, dns.RcodeRefused)
	out, err := m.Pack()
	if err != nil {
		return nil
	}
	s.stats.rcode(dns.RcodeRefused)
	return out
}

// localListener closes TCP connections from foreign clients as they are
// accepted.
type localListener struct {
	net.Listener
	s *Server
}

func (l *localListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.s.local(addrOf(c.RemoteAddr())) {
			return c, err
		}
		l.s.stats.refusedSource.Add(1)
		c.Close()
	}
}
