package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a fake resolver on 127.0.0.1 (UDP and TCP, same port).
// Names: "big.example." is truncated over UDP and has 60 A records over
// TCP; "tc.example." is truncated over both; everything else has one A
// record, 192.0.2.1.
type upstream struct {
	addr netip.AddrPort

	mu      sync.Mutex    // guards the fields below
	delay   time.Duration // before each answer
	udp     int           // queries received over UDP
	tcp     int           // queries received over TCP
	ids     []uint16      // query ids in arrival order
	udpSize []uint16      // EDNS0 size of each query; 0 without OPT
	marked  []bool        // whether each query carried a loop marker
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	_, overTCP := w.RemoteAddr().(*net.TCPAddr)
	u.mu.Lock()
	delay := u.delay
	if overTCP {
		u.tcp++
	} else {
		u.udp++
	}
	u.ids = append(u.ids, r.Id)
	var size uint16
	var marked bool
	if o := r.IsEdns0(); o != nil {
		size = o.UDPSize()
		ids, ok := loopIDs(o)
		marked = ok && len(ids) > 0
	}
	u.udpSize = append(u.udpSize, size)
	u.marked = append(u.marked, marked)
	u.mu.Unlock()
	time.Sleep(delay)

	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	a := func(i int) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(i+1))}
	}
	switch {
	case q.Name == "tc.example." || q.Name == "big.example." && !overTCP:
		m.Truncated = true
	case q.Name == "big.example.":
		for i := range 60 {
			m.Answer = append(m.Answer, a(i))
		}
	default:
		m.Answer = []dns.RR{a(0)}
	}
	w.WriteMsg(m)
}

func (u *upstream) counts() (udp, tcp int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.udp, u.tcp
}

// freePort finds a port free for both UDP and TCP on 127.0.0.1 and
// returns the listeners holding it.
func freePort(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("no port free for both UDP and TCP")
	return nil, nil
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	pc, ln := freePort(t)
	u := &upstream{addr: netip.MustParseAddrPort(pc.LocalAddr().String())}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: u}, {Listener: ln, Handler: u}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() {
			srv.Shutdown()
			<-done
		})
	}
	return u
}

// deadUpstream holds a UDP and TCP port that never answer.
func deadUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, ln := freePort(t)
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
	})
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// closedPort is a port nothing listens on (ICMP port unreachable).
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, ln := freePort(t)
	ap := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	ln.Close()
	return ap
}

func forwardServer(t *testing.T, ups ...netip.AddrPort) *Server {
	t.Helper()
	s, err := New(Config{Listen: netip.MustParseAddrPort("169.254.96.16:53"), Upstreams: ups, ForwardRate: -1})
	if err != nil {
		t.Fatal(err)
	}
	s.timeout = 300 * time.Millisecond
	t.Cleanup(s.closeUpstreams)
	return s
}

func TestForward(t *testing.T) {
	live := startUpstream(t)
	dead := deadUpstream(t)
	closed := closedPort(t)

	tests := []struct {
		name      string
		ups       []netip.AddrPort
		q         string
		edns      uint16 // client's EDNS0 size; 0: no OPT
		tcp       bool   // client came over TCP
		rcode     int
		answers   int
		truncated bool
		upTCP     bool // the live upstream must have been asked over TCP
		upErrors  uint64
	}{
		{name: "plain", ups: []netip.AddrPort{live.addr}, q: "example.com.", answers: 1},
		{name: "edns size kept", ups: []netip.AddrPort{live.addr}, q: "example.com.", edns: 1400, answers: 1},
		{name: "local zone never forwarded", ups: []netip.AddrPort{live.addr}, q: "x.svc.cluster.local.", rcode: dns.RcodeNameError},
		{name: "truncated: retry over TCP, whole answer to a TCP client", ups: []netip.AddrPort{live.addr}, q: "big.example.", tcp: true, answers: 60, upTCP: true},
		{name: "truncated: TCP answer re-truncated for a UDP client", ups: []netip.AddrPort{live.addr}, q: "big.example.", truncated: true, answers: -1, upTCP: true},
		{name: "truncated: big EDNS client gets it all over UDP", ups: []netip.AddrPort{live.addr}, q: "big.example.", edns: 4096, answers: 60, upTCP: true},
		{name: "truncated over TCP too: pass TC on", ups: []netip.AddrPort{live.addr}, q: "tc.example.", truncated: true, upTCP: true},
		{name: "failover from a silent upstream", ups: []netip.AddrPort{dead, live.addr}, q: "example.com.", answers: 1, upErrors: 1},
		{name: "failover from a closed port", ups: []netip.AddrPort{closed, live.addr}, q: "example.com.", answers: 1, upErrors: 1},
		{name: "all upstreams fail", ups: []netip.AddrPort{closed, dead}, q: "example.com.", rcode: dns.RcodeServerFailure, upErrors: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := forwardServer(t, tt.ups...)
			q := query(tt.q, dns.TypeA)
			q.Id = 0xbeef
			if tt.edns != 0 {
				q.SetEdns0(tt.edns, false)
			}
			udp0, tcp0 := live.counts()
			rec := &recorder{tcp: tt.tcp}
			s.ServeDNS(rec, q)
			if len(rec.msgs) != 1 || rec.msgs[0] == nil {
				t.Fatalf("got %d replies (pack error %v), want 1", len(rec.msgs), rec.packErr)
			}
			m := rec.msgs[0]
			if tt.edns == 0 && m.IsEdns0() != nil {
				t.Errorf("OPT in the reply to a client that sent none")
			}
			if m.Id != 0xbeef {
				t.Errorf("id: got %#x, want 0xbeef", m.Id)
			}
			if m.Rcode != tt.rcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			if tt.answers >= 0 && len(m.Answer) != tt.answers {
				t.Errorf("answers: got %d, want %d", len(m.Answer), tt.answers)
			}
			if tt.answers < 0 && (len(m.Answer) == 0 || len(m.Answer) >= 60) {
				t.Errorf("answers: got %d, want some but not all", len(m.Answer))
			}
			if m.Truncated != tt.truncated {
				t.Errorf("TC: got %v, want %v", m.Truncated, tt.truncated)
			}
			if !tt.tcp && rec.sizes[0] > udpSize(q.IsEdns0()) {
				t.Errorf("UDP reply is %d bytes, client takes %d", rec.sizes[0], udpSize(q.IsEdns0()))
			}
			udp1, tcp1 := live.counts()
			if got := tcp1 > tcp0; got != tt.upTCP {
				t.Errorf("upstream asked over TCP: got %v, want %v", got, tt.upTCP)
			}
			if tt.rcode != dns.RcodeNameError && tt.rcode != dns.RcodeServerFailure && udp1 == udp0 {
				t.Errorf("upstream not asked over UDP")
			}
			if tt.rcode == dns.RcodeNameError && (udp1 != udp0 || tcp1 != tcp0) {
				t.Errorf("local name reached the upstream")
			}
			live.mu.Lock()
			if n := len(live.ids); n > 0 && udp1 > udp0 {
				if !live.marked[n-1] {
					t.Errorf("upstream saw no loop marker")
				}
				// Every forwarded query carries an OPT (the loop marker);
				// without the client's, ours advertises localUDPSize.
				want := tt.edns
				if want == 0 {
					want = localUDPSize
				}
				if live.udpSize[n-1] != want {
					t.Errorf("upstream saw EDNS0 size %d, want %d", live.udpSize[n-1], want)
				}
			}
			live.mu.Unlock()
			if got := s.Stats().UpstreamErrors; got != tt.upErrors {
				t.Errorf("upstream errors: got %d, want %d", got, tt.upErrors)
			}
		})
	}
}

func TestSelfUpstreamDropped(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name   string
		listen string
		ups    []string
		want   []string // upstreams kept
	}{
		{"own address", "127.0.0.1:5353", []string{"127.0.0.1:5353"}, nil},
		{"own address, other kept", "169.254.96.16:53", []string{"169.254.96.16:53", "10.0.0.2:53"}, []string{"10.0.0.2:53"}},
		{"other port is not us", "127.0.0.1:5353", []string{"127.0.0.1:53"}, []string{"127.0.0.1:53"}},
		{"resolved stub is not us", "169.254.96.16:53", []string{"127.0.0.53:53"}, []string{"127.0.0.53:53"}},
		{"v4 wildcard: v4 loopback is us", "0.0.0.0:53", []string{"127.0.0.1:53", "127.0.0.53:53", "[::1]:53", "10.0.0.2:53"}, []string{"[::1]:53", "10.0.0.2:53"}},
		{"v6 wildcard is dual-stack", "[::]:53", []string{"127.0.0.1:53", "[::1]:53", "10.0.0.2:53"}, []string{"10.0.0.2:53"}},
		{"v4-mapped", "127.0.0.1:53", []string{"[::ffff:127.0.0.1]:53"}, nil},
		{"duplicates collapse", "169.254.96.16:53", []string{"10.0.0.2:53", "10.0.0.2:53"}, []string{"10.0.0.2:53"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ups []netip.AddrPort
			for _, u := range tt.ups {
				ups = append(ups, ap(u))
			}
			s, err := New(Config{Listen: ap(tt.listen), Upstreams: ups})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(s.upstreams) != fmt.Sprint(tt.want) && !(len(s.upstreams) == 0 && len(tt.want) == 0) {
				t.Fatalf("upstreams: got %v, want %v", s.upstreams, tt.want)
			}
			if len(tt.want) > 0 {
				return
			}
			rec := &recorder{}
			s.ServeDNS(rec, query("example.com.", dns.TypeA))
			if got := rec.msgs[0].Rcode; got != dns.RcodeServerFailure {
				t.Errorf("non-local name with no upstream: got %s, want SERVFAIL", dns.RcodeToString[got])
			}
			if rec.msgs[0].RecursionAvailable {
				t.Errorf("RA set without upstreams")
			}
			rec = &recorder{}
			s.ServeDNS(rec, query("cluster.local.", dns.TypeSOA))
			if got := rec.msgs[0].Rcode; got != dns.RcodeSuccess {
				t.Errorf("local name with no upstream: got %s, want NOERROR", dns.RcodeToString[got])
			}
		})
	}
}

func TestForwardCancelled(t *testing.T) {
	s := forwardServer(t, deadUpstream(t))
	s.timeout = 10 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	rec := &recorder{}
	s.serve(ctx, rec, query("example.com.", dns.TypeA))
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("forward took %v after cancel, want it to stop", d)
	}
	if len(rec.msgs) != 1 || rec.msgs[0].Rcode != dns.RcodeServerFailure {
		t.Errorf("got %v, want one SERVFAIL", rec.msgs)
	}
}

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{"empty", "", "[]", ""},
		{"typical", "# generated\nsearch default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.2\nnameserver 2001:db8::53\noptions ndots:5\n", "[10.0.0.2:53 [2001:db8::53]:53]", ""},
		{"order, comments, tabs", "nameserver\t1.1.1.1 # cloudflare\n; nameserver 9.9.9.9\n  nameserver 8.8.8.8\n", "[1.1.1.1:53 8.8.8.8:53]", ""},
		{"zone", "nameserver fe80::1%eth0\n", "[[fe80::1%eth0]:53]", ""},
		{"mapped", "nameserver ::ffff:10.0.0.2\n", "[10.0.0.2:53]", ""},
		{"not a nameserver keyword", "nameservers 1.1.1.1\n", "[]", ""},
		{"missing address", "nameserver\n", "", "line 1: nameserver without an address"},
		{"hostname", "nameserver 1.1.1.1\nnameserver dns.google\n", "", `line 2: nameserver "dns.google"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseResolvConf(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(got); s != tt.want {
				t.Errorf("got %s, want %s", s, tt.want)
			}
		})
	}
}

func TestRun(t *testing.T) {
	up := startUpstream(t)
	pc, ln := freePort(t)
	listen := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	ln.Close()
	s, err := New(Config{Listen: listen, Upstreams: []netip.AddrPort{up.addr, listen}})
	if err != nil {
		t.Fatal(err)
	}
	s.SetServices(testTable(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before := runtime.NumGoroutine()
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()

	tests := []struct {
		net, name string
		rcode     int
		answers   int
	}{
		{"udp", "web.default.svc.cluster.local.", dns.RcodeSuccess, 1},
		{"tcp", "web.default.svc.cluster.local.", dns.RcodeSuccess, 1},
		{"udp", "nope.default.svc.cluster.local.", dns.RcodeNameError, 0},
		{"udp", "example.com.", dns.RcodeSuccess, 1},
		{"tcp", "example.com.", dns.RcodeSuccess, 1},
		{"tcp", "big.example.", dns.RcodeSuccess, 60},
	}
	for _, tt := range tests {
		t.Run(tt.net+" "+tt.name, func(t *testing.T) {
			c := &dns.Client{Net: tt.net, Timeout: time.Second}
			var m *dns.Msg
			var err error
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if m, _, err = c.Exchange(query(tt.name, dns.TypeA), listen.String()); err == nil {
					break
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Rcode != tt.rcode || len(m.Answer) != tt.answers {
				t.Errorf("got %s with %d answers, want %s with %d", dns.RcodeToString[m.Rcode], len(m.Answer), dns.RcodeToString[tt.rcode], tt.answers)
			}
		})
	}

	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Run: got %v, want nil after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// Nothing Run started outlives it (goleak is not a dependency here).
	for deadline := time.Now().Add(2 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: got %d after Run, want at most %d as before", runtime.NumGoroutine(), before)
		}
	}
	// The port is free again: Run closed both listeners.
	pc2, err := net.ListenPacket("udp4", listen.String())
	if err != nil {
		t.Fatalf("UDP port still held after Run: %v", err)
	}
	pc2.Close()
	ln2, err := net.Listen("tcp4", listen.String())
	if err != nil {
		t.Fatalf("TCP port still held after Run: %v", err)
	}
	ln2.Close()
}

func TestRunListenError(t *testing.T) {
	pc, ln := freePort(t)
	defer pc.Close()
	defer ln.Close()
	s, err := New(Config{Listen: netip.MustParseAddrPort(pc.LocalAddr().String())})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err := <-done:
		var opErr *net.OpError
		if !errors.As(err, &opErr) || !strings.Contains(err.Error(), "dns listen udp") {
			t.Errorf("got %v, want a listen error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run on a taken port did not fail at once")
	}
}
