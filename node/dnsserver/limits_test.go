package dnsserver

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgewire/edgewire/internal/clock"
)

// startServer runs s on a free loopback port until the test ends.
func startServer(t *testing.T, cfg Config) (*Server, netip.AddrPort) {
	t.Helper()
	pc, ln := freePort(t)
	listen := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	ln.Close()
	cfg.Listen = listen
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.timeout = 300 * time.Millisecond
	s.SetServices(testTable(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	// Wait until it answers.
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	for range 25 {
		if _, _, err := c.Exchange(query("cluster.local.", dns.TypeSOA), listen.String()); err == nil {
			return s, listen
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("server on %s not answering", listen)
	return nil, listen
}

// exchangeFrom sends q from the local address from over network ("udp"
// or "tcp") and returns the reply.
func exchangeFrom(from netip.Addr, network string, to netip.AddrPort, q *dns.Msg) (*dns.Msg, error) {
	d := net.Dialer{Timeout: time.Second}
	if network == "udp" {
		d.LocalAddr = &net.UDPAddr{IP: from.AsSlice()}
	} else {
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	nc, err := d.Dial(network, to.String())
	if err != nil {
		return nil, err
	}
	co := &dns.Conn{Conn: nc}
	defer co.Close()
	co.SetDeadline(time.Now().Add(time.Second))
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

// TestForeignClientsRefused is the attack of issue 12: a client that is
// not local (here any loopback address but 127.0.0.1, which the test's
// Local function treats as foreign) asks a Service name and an outside
// name. It must get REFUSED over UDP and a closed connection over TCP,
// and nothing may reach the upstream.
func TestForeignClientsRefused(t *testing.T) {
	up := startUpstream(t)
	local := netip.MustParseAddr("127.0.0.1")
	s, listen := startServer(t, Config{
		Upstreams: []netip.AddrPort{up.addr},
		Local:     func(a netip.Addr) bool { return a == local },
	})
	foreign := netip.MustParseAddr("127.0.0.2")

	for _, name := range []string{"web.default.svc.cluster.local.", "example.com."} {
		m, err := exchangeFrom(foreign, "udp", listen, query(name, dns.TypeA))
		if err != nil {
			t.Fatalf("udp %s from %s: %v", name, foreign, err)
		}
		if m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 || m.RecursionAvailable {
			t.Errorf("udp %s from %s: got %s with %d answers, RA %v; want REFUSED, none, no RA", name, foreign, dns.RcodeToString[m.Rcode], len(m.Answer), m.RecursionAvailable)
		}
		if _, err := exchangeFrom(foreign, "tcp", listen, query(name, dns.TypeA)); err == nil || !(err == io.EOF || strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "EOF")) {
			t.Errorf("tcp %s from %s: got %v, want the connection closed", name, foreign, err)
		}
	}
	// Garbage from a foreign client gets nothing.
	if _, err := exchangeFrom(foreign, "udp", listen, &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}}); err == nil {
		t.Errorf("a response sent by a foreign client was answered")
	}
	if udp, tcp := up.counts(); udp+tcp != 0 {
		t.Errorf("upstream asked %d times on behalf of a foreign client, want 0", udp+tcp)
	}
	st := s.Stats()
	if st.RefusedSource != 5 {
		t.Errorf("refused sources: got %d, want 5 (2 UDP, 2 TCP, 1 garbage)", st.RefusedSource)
	}
	if st.Forwarded != 0 {
		t.Errorf("forwarded %d for foreign clients", st.Forwarded)
	}

	for _, network := range []string{"udp", "tcp"} {
		m, err := exchangeFrom(local, network, listen, query("web.default.svc.cluster.local.", dns.TypeA))
		if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("%s from the local client: got %v, %v; want one answer", network, m, err)
		}
		m, err = exchangeFrom(local, network, listen, query("example.com.", dns.TypeA))
		if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("%s forward for the local client: got %v, %v; want one answer", network, m, err)
		}
	}

	// ServeDNS itself refuses too (the handler's own check).
	rec := &recorder{from: net.IPv4(192, 0, 2, 1)}
	s.ServeDNS(rec, query("web.default.svc.cluster.local.", dns.TypeA))
	if len(rec.msgs) != 1 || rec.msgs[0].Rcode != dns.RcodeRefused || len(rec.msgs[0].Answer) != 0 {
		t.Errorf("ServeDNS for 192.0.2.1: got %v, want REFUSED without answers", rec.msgs)
	}
}

// TestDefaultLocalIsLoopback: without Config.Local only loopback clients
// are served.
func TestDefaultLocalIsLoopback(t *testing.T) {
	s := newTestServer(t, Config{})
	for _, tc := range []struct {
		ip   net.IP
		want int
	}{
		{net.IPv4(127, 0, 0, 1), dns.RcodeSuccess},
		{net.IPv6loopback, dns.RcodeSuccess},
		{net.IPv4(10, 1, 2, 3), dns.RcodeRefused},
		{net.IPv4(169, 254, 96, 16), dns.RcodeRefused},
	} {
		rec := &recorder{from: tc.ip}
		s.ServeDNS(rec, query("web.default.svc.cluster.local.", dns.TypeA))
		if got := rec.msgs[0].Rcode; got != tc.want {
			t.Errorf("client %s: got %s, want %s", tc.ip, dns.RcodeToString[got], dns.RcodeToString[tc.want])
		}
	}
}

// TestForwardLoopEnds is the second attack of issue 12: two agents whose
// upstream is each other. One query must end in SERVFAIL by itself, with
// one forward by each.
func TestForwardLoopEnds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		marker bool // false: a hop that drops EDNS options; coalescing must end it
	}{
		{"loop marker", true},
		{"marker dropped, coalescing", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Reserve both ports first so each can name the other.
			pa, la := freePort(t)
			pb, lb := freePort(t)
			addrA := netip.MustParseAddrPort(pa.LocalAddr().String())
			addrB := netip.MustParseAddrPort(pb.LocalAddr().String())
			for _, c := range []io.Closer{pa, la, pb, lb} {
				c.Close()
			}
			run := func(listen, upstream netip.AddrPort) *Server {
				s, err := New(Config{Listen: listen, Upstreams: []netip.AddrPort{upstream}})
				if err != nil {
					t.Fatal(err)
				}
				// Long enough that the looped query is back before the
				// first exchange gives up, even on a loaded machine.
				s.timeout = time.Second
				s.noMarker = !tc.marker
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- s.Run(ctx) }()
				t.Cleanup(func() { cancel(); <-done })
				return s
			}
			a, b := run(addrA, addrB), run(addrB, addrA)

			c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
			for _, addr := range []netip.AddrPort{addrA, addrB} {
				var err error
				for range 50 { // until it listens: a local name
					if _, _, err = c.Exchange(query("cluster.local.", dns.TypeSOA), addr.String()); err == nil {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				if err != nil {
					t.Fatalf("server on %s not answering: %v", addr, err)
				}
			}
			m, _, err := c.Exchange(query("loop.example.", dns.TypeA), addrA.String())
			if err != nil {
				t.Fatalf("query to a: %v", err)
			}
			if m.Rcode != dns.RcodeServerFailure {
				t.Errorf("got %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
			}
			// Let any late answers and retries settle, then count.
			time.Sleep(time.Second)
			sa, sb := a.Stats(), b.Stats()
			t.Logf("a: %+v", sa)
			t.Logf("b: %+v", sb)
			if total := sa.Forwarded + sb.Forwarded; total > 2 {
				t.Errorf("forwards: got %d (a %d, b %d), want at most 2: the loop went on", total, sa.Forwarded, sb.Forwarded)
			}
			if tc.marker && sa.Loops != 1 {
				t.Errorf("a detected %d loops, want 1", sa.Loops)
			}
			if !tc.marker && sa.Coalesced != 1 {
				t.Errorf("a coalesced %d queries, want 1 (the looped one)", sa.Coalesced)
			}
		})
	}
}

// TestLoopMarker: a query carrying our id or too many hops is not
// forwarded; another forwarder's id is kept and ours appended.
func TestLoopMarker(t *testing.T) {
	up := startUpstream(t)
	s := forwardServer(t, up.addr)
	other := [loopIDLen]byte{1, 2, 3, 4, 5, 6, 7, 8}
	withIDs := func(ids ...[loopIDLen]byte) *dns.Msg {
		q := query("example.com.", dns.TypeA)
		q.SetEdns0(1232, false)
		d := []byte{loopVersion}
		for _, id := range ids {
			d = append(d, id[:]...)
		}
		q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: ednsLoopCode, Data: d})
		return q
	}
	many := make([][loopIDLen]byte, maxForwardHops)
	for i := range many {
		many[i] = [loopIDLen]byte{byte(i + 10)}
	}
	tests := []struct {
		name  string
		q     *dns.Msg
		rcode int
		asked bool
	}{
		{"no marker", query("example.com.", dns.TypeA), dns.RcodeSuccess, true},
		{"another forwarder", withIDs(other), dns.RcodeSuccess, true},
		{"our own id", withIDs(other, s.id), dns.RcodeServerFailure, false},
		{"too many hops", withIDs(many...), dns.RcodeServerFailure, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u0, _ := up.counts()
			rec := &recorder{}
			s.ServeDNS(rec, tt.q)
			if got := rec.msgs[0].Rcode; got != tt.rcode {
				t.Errorf("got %s, want %s", dns.RcodeToString[got], dns.RcodeToString[tt.rcode])
			}
			if o := rec.msgs[0].IsEdns0(); o != nil {
				for _, op := range o.Option {
					if op.Option() == ednsLoopCode {
						t.Errorf("loop marker leaked into the reply")
					}
				}
			}
			u1, _ := up.counts()
			if got := u1 > u0; got != tt.asked {
				t.Errorf("upstream asked: got %v, want %v", got, tt.asked)
			}
		})
	}
	// What the upstream saw for "another forwarder": its id, then ours.
	q := s.upstreamQuery(withIDs(other), withIDs(other).IsEdns0(), [][loopIDLen]byte{other})
	ids, ok := loopIDs(q.IsEdns0())
	if !ok || len(ids) != 2 || ids[0] != other || ids[1] != s.id {
		t.Errorf("forwarded marker: got %x (ok %v), want [%x %x]", ids, ok, other, s.id)
	}
}

// TestOverloaded: past MaxInFlight, a forward gets SERVFAIL at once.
func TestOverloaded(t *testing.T) {
	s, err := New(Config{Listen: netip.MustParseAddrPort("169.254.96.16:53"), Upstreams: []netip.AddrPort{deadUpstream(t)}, MaxInFlight: 2})
	if err != nil {
		t.Fatal(err)
	}
	s.timeout = 3 * time.Second
	t.Cleanup(s.closeUpstreams)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			q := query("slow"+string(rune('a'+i))+".example.", dns.TypeA)
			s.ServeDNS(&recorder{}, q)
		})
	}
	// Wait until both hold a slot (bounded).
	for deadline := time.Now().Add(2 * time.Second); len(s.slots) < 2 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
	}
	start := time.Now()
	rec := &recorder{}
	s.ServeDNS(rec, query("third.example.", dns.TypeA))
	if d := time.Since(start); d > time.Second {
		t.Errorf("third query took %v, want an answer at once (the others wait 3 s)", d)
	}
	if rec.msgs[0].Rcode != dns.RcodeServerFailure || s.Stats().Overloaded != 1 {
		t.Errorf("third query: got %s, overloaded %d; want SERVFAIL, 1", dns.RcodeToString[rec.msgs[0].Rcode], s.Stats().Overloaded)
	}
	// Local names are still answered.
	rec = &recorder{}
	s.ServeDNS(rec, query("web.default.svc.cluster.local.", dns.TypeA))
	if rec.msgs[0].Rcode == dns.RcodeServerFailure {
		t.Errorf("local name got SERVFAIL while forwards are full")
	}
	wg.Wait()
}

// TestRateLimit: one client past its forward rate gets REFUSED for
// forwarded names, still gets local answers, and another client is not
// affected.
func TestRateLimit(t *testing.T) {
	up := startUpstream(t)
	clk := clock.NewFake(time.Unix(1000, 0))
	s, err := New(Config{Listen: netip.MustParseAddrPort("169.254.96.16:53"), Upstreams: []netip.AddrPort{up.addr},
		ForwardRate: 10, ForwardBurst: 5, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.closeUpstreams)
	s.SetServices(testTable(t))
	ask := func(from net.IP, name string) int {
		rec := &recorder{from: from}
		s.ServeDNS(rec, query(name, dns.TypeA))
		return rec.msgs[0].Rcode
	}
	noisy, quiet := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
	for i := range 5 {
		if rc := ask(noisy, "example.com."); rc != dns.RcodeSuccess {
			t.Fatalf("query %d within the burst: got %s", i, dns.RcodeToString[rc])
		}
	}
	if rc := ask(noisy, "example.com."); rc != dns.RcodeRefused {
		t.Errorf("past the burst: got %s, want REFUSED", dns.RcodeToString[rc])
	}
	if rc := ask(noisy, "web.default.svc.cluster.local."); rc != dns.RcodeSuccess {
		t.Errorf("local name past the burst: got %s, want NOERROR", dns.RcodeToString[rc])
	}
	if rc := ask(quiet, "example.com."); rc != dns.RcodeSuccess {
		t.Errorf("another client: got %s, want NOERROR", dns.RcodeToString[rc])
	}
	clk.Advance(200 * time.Millisecond) // two tokens
	for i, want := range []int{dns.RcodeSuccess, dns.RcodeSuccess, dns.RcodeRefused} {
		if rc := ask(noisy, "example.com."); rc != want {
			t.Errorf("after 200 ms, query %d: got %s, want %s", i, dns.RcodeToString[rc], dns.RcodeToString[want])
		}
	}
	if got := s.Stats().RateLimited; got != 2 {
		t.Errorf("rate limited: got %d, want 2", got)
	}
}

func TestLimiterTableBounded(t *testing.T) {
	l := newLimiter(10, 2, 100)
	now := time.Unix(0, 0)
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		l.allow(a, now)
		l.allow(a, now)
		if n := l.size(); n > 100 {
			t.Fatalf("after %d clients the table holds %d, want at most 100", i+1, n)
		}
	}
	// A client in the table keeps its empty bucket.
	a := netip.MustParseAddr("192.0.2.1")
	l.allow(a, now)
	l.allow(a, now)
	if l.allow(a, now) {
		t.Errorf("third query in the same instant allowed with burst 2")
	}
}

// TestCoalesce: concurrent identical questions are one upstream exchange,
// and each client gets its own id and spelling.
func TestCoalesce(t *testing.T) {
	up := startUpstream(t)
	up.mu.Lock()
	up.delay = 200 * time.Millisecond
	up.mu.Unlock()
	s := forwardServer(t, up.addr)
	const n = 20
	recs := make([]*recorder, n)
	var wg sync.WaitGroup
	for i := range n {
		recs[i] = &recorder{}
		wg.Go(func() {
			name := "example.com."
			if i%2 == 1 {
				name = "EXAMPLE.com."
			}
			q := query(name, dns.TypeA)
			q.Id = uint16(i)
			s.ServeDNS(recs[i], q)
		})
	}
	wg.Wait()
	if udp, _ := up.counts(); udp != 1 {
		t.Errorf("upstream asked %d times, want 1", udp)
	}
	for i, rec := range recs {
		m := rec.msgs[0]
		want := "example.com."
		if i%2 == 1 {
			want = "EXAMPLE.com."
		}
		if m.Id != uint16(i) || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Question[0].Name != want {
			t.Errorf("client %d: got id %d %s, %d answers, question %q; want id %d NOERROR, 1 answer, %q",
				i, m.Id, dns.RcodeToString[m.Rcode], len(m.Answer), m.Question[0].Name, i, want)
		}
	}
	if st := s.Stats(); st.Forwarded != 1 || st.Coalesced != n-1 {
		t.Errorf("forwarded %d, coalesced %d; want 1, %d", st.Forwarded, st.Coalesced, n-1)
	}
}

// TestStrayRepliesDropped: an upstream (or a spoofer on its address)
// that answers with a wrong id or question first; only the matching
// answer is taken.
func TestStrayRepliesDropped(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for range 4 { // bounded
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dns.Msg
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			send := func(m *dns.Msg) {
				b, _ := m.Pack()
				pc.WriteTo(b, from)
			}
			wrongID := new(dns.Msg).SetReply(&q)
			wrongID.Id++
			wrongID.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(6, 6, 6, 6)}}
			send(wrongID)
			wrongQ := new(dns.Msg).SetReply(&q)
			wrongQ.Question[0].Name = "evil.example."
			wrongQ.Answer = wrongID.Answer
			send(wrongQ)
			good := new(dns.Msg).SetReply(&q)
			good.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
			send(good)
			send(good) // a duplicate arrives late
		}
	}()
	s := forwardServer(t, netip.MustParseAddrPort(pc.LocalAddr().String()))
	rec := &recorder{}
	s.ServeDNS(rec, query("example.com.", dns.TypeA))
	m := rec.msgs[0]
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Fatalf("got %v, want the one matching answer, 192.0.2.1", m)
	}
	for deadline := time.Now().Add(2 * time.Second); s.Stats().StrayReplies < 3 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
	}
	if got := s.Stats().StrayReplies; got != 3 {
		t.Errorf("stray replies: got %d, want 3 (wrong id, wrong question, late duplicate)", got)
	}
}

// TestPoolReusesSockets: sequential forwards share the pool's sockets,
// and worn sockets are replaced.
func TestPoolReusesSockets(t *testing.T) {
	up := startUpstream(t)
	s := forwardServer(t, up.addr)
	seen := map[string]bool{}
	for i := range queriesPerSocket*udpSocketsPerUpstream + 8 {
		q := query("n"+string(rune('a'+i%26))+".example.", dns.TypeA)
		s.ServeDNS(&recorder{}, q)
		if n := s.pools[0].open(); n > udpSocketsPerUpstream+maxRetiring {
			t.Fatalf("after %d queries: %d sockets open, want at most %d", i+1, n, udpSocketsPerUpstream+maxRetiring)
		}
		p := s.pools[0]
		p.mu.Lock()
		for _, sk := range p.socks {
			if sk != nil {
				seen[sk.conn.LocalAddr().String()] = true
			}
		}
		p.mu.Unlock()
	}
	if len(seen) <= udpSocketsPerUpstream {
		t.Errorf("%d source addresses used over %d queries, want worn sockets replaced", len(seen), queriesPerSocket*udpSocketsPerUpstream+8)
	}
}
