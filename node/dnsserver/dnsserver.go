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
package dnsserver

import (
	"context"
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

	"github.com/edgewire/edgewire/node/services"
)

// Defaults; Config's zero values mean these.
const (
	DefaultClusterDomain = "cluster.local"
	DefaultMeshDomain    = "edgewire.internal"
	DefaultTTL           = 5 // seconds, for local answers and the SOA minimum

	forwardTimeout = 2 * time.Second // per upstream and transport
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
}

// Server answers DNS queries; see the package doc. It is a dns.Handler.
type Server struct {
	log       *slog.Logger
	listen    netip.AddrPort
	cluster   string // lowercase FQDN, "cluster.local."
	mesh      string // lowercase FQDN, "edgewire.internal."
	ttl       uint32
	upstreams []string // "host:port", self removed, in order
	udp, tcp  *dns.Client
	timeout   time.Duration // per upstream exchange; tests shorten it

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
		log:     cfg.Logger,
		listen:  cfg.Listen,
		cluster: cluster,
		mesh:    mesh,
		ttl:     cfg.TTL,
		udp:     &dns.Client{Net: "udp"},
		tcp:     &dns.Client{Net: "tcp"},
		timeout: forwardTimeout,
		nodes:   map[string][]netip.Addr{},
	}
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
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { s.serve(fctx, w, r) })
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	srvs := []*dns.Server{
		{PacketConn: pc, Handler: h, NotifyStartedFunc: notify, MsgAcceptFunc: s.accept, MsgInvalidFunc: s.invalid},
		{Listener: ln, Handler: h, NotifyStartedFunc: notify, MsgAcceptFunc: s.accept, MsgInvalidFunc: s.invalid},
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
	rcodes                                              [otherRcode + 1]atomic.Uint64
}

func (c *counters) rcode(rc int) {
	if rc < 0 || rc > otherRcode {
		rc = otherRcode
	}
	c.rcodes[rc].Add(1)
}

// errNoUpstream is why a non-local name gets SERVFAIL when every configured
// upstream was this server itself.
var errNoUpstream = errors.New("no upstream resolvers")
