package dnsserver

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"

	"github.com/miekg/dns"
)

// Loop marker: an EDNS0 option this server adds to every query it
// forwards, naming each forwarder the query passed through.
//
//	code ednsLoopCode (local/experimental range, RFC 6891 section 9)
//	data version (1 byte, loopVersion) + forwarder instance ids (8 bytes each), oldest first
const (
	ednsLoopCode = 65311
	loopVersion  = 1
	loopIDLen    = 8
	// maxForwardHops is how many forwarders a query may already have
	// passed; one more is refused as a loop.
	maxForwardHops = 8
)

// Forwarding limits.
const (
	// udpSocketsPerUpstream is the pool of connected UDP sockets per
	// upstream; each multiplexes up to 65,536 query ids.
	udpSocketsPerUpstream = 4
	// queriesPerSocket: a socket is replaced (a new random source port)
	// after this many queries, so its port is not a fixed target for
	// spoofed replies.
	queriesPerSocket = 1024
	// maxRetiring bounds the replaced sockets per upstream that still
	// wait for answers; beyond it a socket is used past queriesPerSocket.
	maxRetiring = 4
	// maxTCPForwards bounds concurrent TCP exchanges (one connection
	// each), for truncated answers.
	maxTCPForwards = 16
	// upstreamUDPSize caps the EDNS0 size we advertise upstream and is
	// the receive buffer of each pooled socket.
	upstreamUDPSize = 4096
)

var (
	errNoUpstream = errors.New("no upstream resolvers")
	errClosed     = errors.New("upstream sockets closed")
	errRefusedUp  = errors.New("upstream port unreachable")
)

// forward answers r from the upstreams. m is the prepared reply, used
// for refusals. The query goes upstream with the client's question,
// flags and EDNS0 size, but a fresh id from the socket it leaves on and
// the loop marker added; the answer comes back with the client's id and
// spelling. See the package doc for the limits.
func (s *Server) forward(ctx context.Context, w dns.ResponseWriter, r, m *dns.Msg, opt *dns.OPT) {
	ids, _ := loopIDs(opt)
	if len(ids) >= maxForwardHops || containsID(ids, s.id) {
		s.stats.loops.Add(1)
		s.log.Debug("dns: forwarding loop, not forwarded", "name", r.Question[0].Name, "hops", len(ids))
		m.Rcode = dns.RcodeServerFailure
		s.write(w, m)
		return
	}
	if !s.limiter.allow(clientAddr(w), s.clock.Now()) {
		s.stats.rateLimited.Add(1)
		m.Rcode = dns.RcodeRefused
		s.write(w, m)
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		s.stats.overloaded.Add(1)
		m.Rcode = dns.RcodeServerFailure
		s.write(w, m)
		return
	}
	resp, err := s.resolve(ctx, r, opt, ids)
	if err != nil {
		s.log.Debug("dns forward failed", "name", r.Question[0].Name, "err", err)
		m.Rcode = dns.RcodeServerFailure
		s.write(w, m)
		return
	}
	s.write(w, clientReply(resp, r, opt, isUDP(w)))
}

func containsID(ids [][loopIDLen]byte, id [loopIDLen]byte) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func joinIDs(ids [][loopIDLen]byte) []byte {
	b := make([]byte, 0, len(ids)*loopIDLen)
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

// loopIDs returns the forwarder ids of opt's loop marker. A marker of
// another version or a bad length is ignored (ok false).
func loopIDs(opt *dns.OPT) (ids [][loopIDLen]byte, ok bool) {
	if opt == nil {
		return nil, true
	}
	for _, o := range opt.Option {
		l, isLocal := o.(*dns.EDNS0_LOCAL)
		if !isLocal || l.Code != ednsLoopCode {
			continue
		}
		d := l.Data
		if len(d) < 1 || d[0] != loopVersion || (len(d)-1)%loopIDLen != 0 {
			return nil, false
		}
		for d = d[1:]; len(d) > 0; d = d[loopIDLen:] {
			ids = append(ids, [loopIDLen]byte(d[:loopIDLen]))
		}
		return ids, true
	}
	return nil, true
}

// callKey is what makes two questions the same for coalescing.
type callKey struct {
	name          string // lowercase
	qtype, qclass uint16
	rd, cd, do    bool
}

// call is one upstream exchange that clients asking the same question
// wait for. resp is read-only once done is closed.
type call struct {
	done chan struct{}
	resp *dns.Msg
	err  error
}

// resolve gets an answer for r's question: from the exchange already in
// flight for the same question, or from a new one.
func (s *Server) resolve(ctx context.Context, r *dns.Msg, opt *dns.OPT, ids [][loopIDLen]byte) (*dns.Msg, error) {
	q := r.Question[0]
	key := callKey{name: strings.ToLower(q.Name), qtype: q.Qtype, qclass: q.Qclass,
		rd: r.RecursionDesired, cd: r.CheckingDisabled, do: opt != nil && opt.Do()}
	s.callsMu.Lock()
	if c := s.calls[key]; c != nil {
		s.callsMu.Unlock()
		s.stats.coalesced.Add(1)
		select {
		case <-c.done:
			return c.resp, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &call{done: make(chan struct{})}
	s.calls[key] = c
	s.callsMu.Unlock()

	s.stats.forwarded.Add(1)
	c.resp, c.err = s.exchange(ctx, s.upstreamQuery(r, opt, ids))
	s.callsMu.Lock()
	delete(s.calls, key)
	s.callsMu.Unlock()
	close(c.done)
	return c.resp, c.err
}

// upstreamQuery builds the query we send: r's header and question, an
// OPT with the client's size (capped), DO bit and options, and the loop
// marker with our id appended. Other records of r are not forwarded.
func (s *Server) upstreamQuery(r *dns.Msg, opt *dns.OPT, ids [][loopIDLen]byte) *dns.Msg {
	fq := &dns.Msg{MsgHdr: dns.MsgHdr{Opcode: r.Opcode, RecursionDesired: r.RecursionDesired,
		CheckingDisabled: r.CheckingDisabled, AuthenticatedData: r.AuthenticatedData}, Question: []dns.Question{r.Question[0]}}
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	size := uint16(localUDPSize)
	if opt != nil {
		size = min(max(opt.UDPSize(), dns.MinMsgSize), upstreamUDPSize)
		o.SetDo(opt.Do())
		for _, op := range opt.Option {
			if op.Option() != ednsLoopCode {
				o.Option = append(o.Option, op)
			}
		}
	}
	o.SetUDPSize(size)
	if !s.noMarker {
		data := make([]byte, 0, 1+(len(ids)+1)*loopIDLen)
		data = append(data, loopVersion)
		data = append(data, joinIDs(ids)...)
		data = append(data, s.id[:]...)
		o.Option = append(o.Option, &dns.EDNS0_LOCAL{Code: ednsLoopCode, Data: data})
	}
	fq.Extra = []dns.RR{o}
	return fq
}

// clientReply turns a shared upstream answer into the client's reply:
// a copy with the client's id and question spelling, no OPT for a client
// that sent none, no loop marker, truncated to what a UDP client takes.
func clientReply(resp, r *dns.Msg, opt *dns.OPT, udp bool) *dns.Msg {
	out := resp.Copy()
	out.Id = r.Id
	out.Question = []dns.Question{r.Question[0]}
	extra := out.Extra[:0]
	for _, rr := range out.Extra {
		o, isOPT := rr.(*dns.OPT)
		if !isOPT {
			extra = append(extra, rr)
			continue
		}
		if opt == nil {
			continue
		}
		ops := o.Option[:0]
		for _, op := range o.Option {
			if op.Option() != ednsLoopCode {
				ops = append(ops, op)
			}
		}
		o.Option = ops
		extra = append(extra, o)
	}
	out.Extra = extra
	if udp {
		// An answer fetched over TCP may exceed what the client takes;
		// Truncate sets TC so it retries over TCP with us.
		out.Truncate(udpSize(opt))
	}
	return out
}

// exchange tries each upstream in turn: UDP through the socket pool, then
// TCP when the answer is truncated and a TCP slot is free. A truncated
// UDP answer is kept as a last resort.
func (s *Server) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	if len(s.pools) == 0 {
		return nil, errNoUpstream
	}
	var truncated *dns.Msg
	var lastErr error
	for _, u := range s.pools {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		resp, err := s.exchangeUDP(ctx, u, q)
		if err == nil && resp.Truncated {
			truncated = resp
			select {
			case s.tcpSlots <- struct{}{}:
				resp, err = s.exchangeTCP(ctx, q, u.addr.String())
				<-s.tcpSlots
			default:
				s.stats.tcpBusy.Add(1)
				return truncated, nil
			}
		}
		if err != nil {
			s.stats.upstreamErrors.Add(1)
			lastErr = fmt.Errorf("upstream %s: %w", u.addr, err)
			continue
		}
		return resp, nil
	}
	if truncated != nil {
		return truncated, nil
	}
	return nil, lastErr
}

func (s *Server) exchangeUDP(ctx context.Context, u *pool, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var sock *udpSock
	var id uint16
	var wt chan result
	var err error
	for range 2 { // a socket handed out just as it was retired is closed: take another
		if sock, err = u.get(); err != nil {
			return nil, err
		}
		if id, wt, err = sock.register(q.Question[0]); !errors.Is(err, errClosed) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	defer u.done(sock, id)
	out := *q // shallow: only the id differs
	out.Id = id
	b, err := out.Pack()
	if err != nil {
		return nil, err
	}
	if _, err := sock.conn.Write(b); err != nil {
		return nil, err
	}
	select {
	case res := <-wt:
		return res.msg, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Server) exchangeTCP(ctx context.Context, q *dns.Msg, upstream string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	c := s.tcp
	co, err := c.DialContext(ctx, upstream)
	if err != nil {
		return nil, err
	}
	defer co.Close()
	// The client only turns ctx's deadline into socket deadlines; closing
	// the socket is what makes a cancel (Run ending) interrupt a read.
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer stop()
	out := *q
	out.Id = dns.Id()
	resp, _, err := c.ExchangeWithConnContext(ctx, &out, co)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, err
	}
	if !sameQuestion(resp, q.Question[0]) {
		return nil, errors.New("answer for another question")
	}
	return resp, nil
}

func sameQuestion(m *dns.Msg, q dns.Question) bool {
	return len(m.Question) == 1 && m.Question[0].Qtype == q.Qtype && m.Question[0].Qclass == q.Qclass &&
		strings.EqualFold(m.Question[0].Name, q.Name)
}

// pool is the UDP sockets for one upstream.
type pool struct {
	addr  netip.AddrPort
	s     *Server // for counters
	users sync.WaitGroup

	mu       sync.Mutex // guards the fields below
	socks    [udpSocketsPerUpstream]*udpSock
	next     int
	retiring int               // replaced sockets still waiting for answers
	all      map[*udpSock]bool // every open socket, for close
}

// udpSock is one connected UDP socket with its own id space.
type udpSock struct {
	conn *net.UDPConn

	mu      sync.Mutex // guards the fields below
	pending map[uint16]*waiter
	sent    int  // queries registered since the socket opened
	retired bool // replaced in the pool: closes when pending empties
	closed  bool // closed after retiring: takes no more queries
	dead    bool // reader ended
}

type waiter struct {
	q  dns.Question
	ch chan result // capacity 1
}

type result struct {
	msg *dns.Msg
	err error
}

func newPool(s *Server, addr netip.AddrPort) *pool {
	return &pool{addr: addr, s: s, all: map[*udpSock]bool{}}
}

// get returns a socket for the next query, opening or replacing one as needed.
func (p *pool) get() (*udpSock, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.next
	p.next = (p.next + 1) % len(p.socks)
	sk := p.socks[i]
	if sk != nil {
		sk.mu.Lock()
		dead, worn := sk.dead, sk.sent >= queriesPerSocket
		if worn && !dead && p.retiring < maxRetiring {
			sk.retired = true
			p.retiring++
			if len(sk.pending) == 0 {
				sk.closed = true
				sk.conn.Close()
			}
		}
		retired := sk.retired
		sk.mu.Unlock()
		if !dead && !retired {
			return sk, nil
		}
		p.socks[i] = nil
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.addr))
	if err != nil {
		return nil, err
	}
	sk = &udpSock{conn: conn, pending: map[uint16]*waiter{}}
	p.socks[i] = sk
	p.all[sk] = true
	p.users.Add(1)
	go p.read(sk)
	return sk, nil
}

// register picks a free random id on sk for a query asking q.
func (sk *udpSock) register(q dns.Question) (uint16, chan result, error) {
	sk.mu.Lock()
	defer sk.mu.Unlock()
	if sk.dead || sk.closed {
		return 0, nil, errClosed
	}
	var b [2]byte
	for range 64 { // the id space is 65,536 and far from full
		rand.Read(b[:])
		id := binary.BigEndian.Uint16(b[:])
		if _, used := sk.pending[id]; used {
			continue
		}
		w := &waiter{q: q, ch: make(chan result, 1)}
		sk.pending[id] = w
		sk.sent++
		return id, w.ch, nil
	}
	return 0, nil, errors.New("no free query id")
}

// done forgets id on sk; a retired socket closes when nothing waits on it.
func (p *pool) done(sk *udpSock, id uint16) {
	sk.mu.Lock()
	delete(sk.pending, id)
	closeIt := sk.retired && len(sk.pending) == 0
	if closeIt {
		sk.closed = true
	}
	sk.mu.Unlock()
	if closeIt {
		sk.conn.Close()
	}
}

// read matches answers on sk to waiting queries by id and question until
// the socket closes. Anything else (late, spoofed or garbled) is dropped.
func (p *pool) read(sk *udpSock) {
	defer p.users.Done()
	buf := make([]byte, upstreamUDPSize+512)
	for {
		n, err := sk.conn.Read(buf)
		if errors.Is(err, syscall.ECONNREFUSED) {
			// ICMP port unreachable: the upstream does not listen. It
			// cannot be told which query it answers, so all fail.
			sk.failAll(errRefusedUp)
			continue
		}
		if err != nil {
			sk.mu.Lock()
			sk.dead = true
			retired := sk.retired
			sk.mu.Unlock()
			sk.failAll(errClosed)
			p.mu.Lock()
			delete(p.all, sk)
			if retired {
				p.retiring--
			}
			p.mu.Unlock()
			sk.conn.Close()
			return
		}
		if n < 12 {
			p.s.stats.strayReplies.Add(1)
			continue
		}
		id := binary.BigEndian.Uint16(buf)
		sk.mu.Lock()
		w := sk.pending[id]
		sk.mu.Unlock()
		m := new(dns.Msg)
		if w == nil || m.Unpack(buf[:n]) != nil || !m.Response || !sameQuestion(m, w.q) {
			p.s.stats.strayReplies.Add(1)
			continue
		}
		sk.mu.Lock()
		if sk.pending[id] == w {
			delete(sk.pending, id)
			w.ch <- result{msg: m}
		}
		sk.mu.Unlock()
	}
}

func (sk *udpSock) failAll(err error) {
	sk.mu.Lock()
	defer sk.mu.Unlock()
	for id, w := range sk.pending {
		delete(sk.pending, id)
		w.ch <- result{err: err}
	}
}

// close closes every socket and waits for their readers. Queries still
// waiting fail. The pool opens new sockets if used again.
func (p *pool) close() {
	p.mu.Lock()
	for sk := range p.all {
		sk.conn.Close()
	}
	p.socks = [udpSocketsPerUpstream]*udpSock{}
	p.mu.Unlock()
	p.users.Wait()
}

// open returns how many sockets are open.
func (p *pool) open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.all)
}

// ParseResolvConf returns the nameservers (port 53) of a resolv.conf, in
// order. Other options are ignored; a nameserver line whose address does
// not parse is an error, so a broken file is noticed rather than half-used.
func ParseResolvConf(r io.Reader) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if i := strings.IndexAny(text, "#;"); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 || f[0] != "nameserver" {
			continue
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("resolv.conf line %d: nameserver without an address", line)
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("resolv.conf line %d: nameserver %q: %w", line, f[1], err)
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read resolv.conf: %w", err)
	}
	return out, nil
}
