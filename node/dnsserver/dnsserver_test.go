package dnsserver

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/edgewire/edgewire/types/services"
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func testTable(t testing.TB) *services.Table {
	t.Helper()
	tbl, err := services.NewTable([]*services.Service{
		{
			Namespace:  "default",
			Name:       "web",
			ClusterIPs: []netip.Addr{ip("10.96.0.10")},
			Ports: []services.Port{
				{Name: "http", Protocol: services.TCP, Port: 80},
				{Name: "dns", Protocol: services.UDP, Port: 53},
				{Name: "", Protocol: services.TCP, Port: 8080},
			},
			Endpoints: []services.Endpoint{{Addresses: []netip.Addr{ip("10.0.1.1")}, Ports: map[string]uint16{"http": 8080}}},
		},
		{
			Namespace:  "default",
			Name:       "dual",
			ClusterIPs: []netip.Addr{ip("10.96.0.11"), ip("fd00:96::11")},
		},
		{
			Namespace: "default",
			Name:      "db",
			Ports:     []services.Port{{Name: "pg", Protocol: services.TCP, Port: 5432}},
			Endpoints: []services.Endpoint{
				{Addresses: []netip.Addr{ip("10.0.1.5")}, Hostname: "db-0", Ports: map[string]uint16{"pg": 5432}},
				{Addresses: []netip.Addr{ip("10.0.2.6")}, Hostname: "db-1", Ports: map[string]uint16{"pg": 5433}},
				{Addresses: []netip.Addr{ip("fd00::7")}, Ports: map[string]uint16{"pg": 5432}},
				{Addresses: []netip.Addr{ip("10.0.3.8")}}, // no pg port: no SRV record
			},
		},
		{Namespace: "kube-system", Name: "empty"}, // headless, no endpoints
	})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func newTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.MustParseAddrPort("169.254.96.16:53")
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.SetServices(testTable(t))
	s.SetNodes(map[string][]netip.Addr{
		"edge-1":   {ip("100.64.0.1"), ip("fd7a:115c::1")},
		"cloud-a":  {ip("100.64.0.2")},
		"Bad_Name": {ip("100.64.0.3")},
	})
	return s
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0x1234
	return m
}

// rrs renders records one per string with single spaces, OPT left out.
func rrs(rr []dns.RR) []string {
	var out []string
	for _, r := range rr {
		if r.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, strings.Join(strings.Fields(r.String()), " "))
	}
	return out
}

func TestServeLocal(t *testing.T) {
	s := newTestServer(t, Config{})
	const soa = "SOA"
	tests := []struct {
		name   string
		q      *dns.Msg
		tcp    bool
		rcode  int
		answer []string // in order
		extra  []string // in any order
		ns     string   // "SOA" when the authority section must hold the zone's SOA
	}{
		{
			name:   "clusterip A",
			q:      query("web.default.svc.cluster.local.", dns.TypeA),
			answer: []string{"web.default.svc.cluster.local. 5 IN A 10.96.0.10"},
		},
		{
			name:  "clusterip AAAA on v4-only service is NODATA",
			q:     query("web.default.svc.cluster.local.", dns.TypeAAAA),
			ns:    soa,
			rcode: dns.RcodeSuccess,
		},
		{
			name:   "dual-stack A",
			q:      query("dual.default.svc.cluster.local.", dns.TypeA),
			answer: []string{"dual.default.svc.cluster.local. 5 IN A 10.96.0.11"},
		},
		{
			name:   "dual-stack AAAA",
			q:      query("dual.default.svc.cluster.local.", dns.TypeAAAA),
			answer: []string{"dual.default.svc.cluster.local. 5 IN AAAA fd00:96::11"},
		},
		{
			name: "headless A: all ready endpoints",
			q:    query("db.default.svc.cluster.local.", dns.TypeA),
			answer: []string{
				"db.default.svc.cluster.local. 5 IN A 10.0.1.5",
				"db.default.svc.cluster.local. 5 IN A 10.0.2.6",
				"db.default.svc.cluster.local. 5 IN A 10.0.3.8",
			},
		},
		{
			name:   "headless AAAA",
			q:      query("db.default.svc.cluster.local.", dns.TypeAAAA),
			answer: []string{"db.default.svc.cluster.local. 5 IN AAAA fd00::7"},
		},
		{
			name:   "headless hostname",
			q:      query("db-1.db.default.svc.cluster.local.", dns.TypeA),
			answer: []string{"db-1.db.default.svc.cluster.local. 5 IN A 10.0.2.6"},
		},
		{
			name:   "headless dashed IP",
			q:      query("fd00--7.db.default.svc.cluster.local.", dns.TypeAAAA),
			answer: []string{"fd00--7.db.default.svc.cluster.local. 5 IN AAAA fd00::7"},
		},
		{
			name:   "SRV clusterip",
			q:      query("_http._tcp.web.default.svc.cluster.local.", dns.TypeSRV),
			answer: []string{"_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."},
			extra:  []string{"web.default.svc.cluster.local. 5 IN A 10.96.0.10"},
		},
		{
			name:   "SRV udp port",
			q:      query("_dns._udp.web.default.svc.cluster.local.", dns.TypeSRV),
			answer: []string{"_dns._udp.web.default.svc.cluster.local. 5 IN SRV 0 100 53 web.default.svc.cluster.local."},
			extra:  []string{"web.default.svc.cluster.local. 5 IN A 10.96.0.10"},
		},
		{
			name:  "SRV wrong proto is NXDOMAIN",
			q:     query("_http._udp.web.default.svc.cluster.local.", dns.TypeSRV),
			rcode: dns.RcodeNameError,
			ns:    soa,
		},
		{
			name: "SRV headless: one per endpoint with the target port",
			q:    query("_pg._tcp.db.default.svc.cluster.local.", dns.TypeSRV),
			answer: []string{
				"_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 5432 db-0.db.default.svc.cluster.local.",
				"_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 5433 db-1.db.default.svc.cluster.local.",
				"_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 5432 fd00--7.db.default.svc.cluster.local.",
			},
			extra: []string{
				"db-0.db.default.svc.cluster.local. 5 IN A 10.0.1.5",
				"db-1.db.default.svc.cluster.local. 5 IN A 10.0.2.6",
				"fd00--7.db.default.svc.cluster.local. 5 IN AAAA fd00::7",
			},
		},
		{
			name: "empty non-terminal _tcp is NODATA",
			q:    query("_tcp.db.default.svc.cluster.local.", dns.TypeSRV),
			ns:   soa,
		},
		{
			name: "SRV name asked for A is NODATA",
			q:    query("_pg._tcp.db.default.svc.cluster.local.", dns.TypeA),
			ns:   soa,
		},
		{
			name: "headless without endpoints is NODATA",
			q:    query("empty.kube-system.svc.cluster.local.", dns.TypeA),
			ns:   soa,
		},
		{
			name:  "unknown service",
			q:     query("nope.default.svc.cluster.local.", dns.TypeA),
			rcode: dns.RcodeNameError,
			ns:    soa,
		},
		{
			name:  "unknown namespace",
			q:     query("web.nope.svc.cluster.local.", dns.TypeA),
			rcode: dns.RcodeNameError,
			ns:    soa,
		},
		{
			name:  "search-path junk stays local",
			q:     query("example.com.default.svc.cluster.local.", dns.TypeAAAA),
			rcode: dns.RcodeNameError,
			ns:    soa,
		},
		{
			name:  "endpoint name of a ClusterIP service does not exist",
			q:     query("10-0-1-1.web.default.svc.cluster.local.", dns.TypeA),
			rcode: dns.RcodeNameError,
			ns:    soa,
		},
		{name: "namespace exists", q: query("default.svc.cluster.local.", dns.TypeA), ns: soa},
		{name: "svc exists", q: query("svc.cluster.local.", dns.TypeA), ns: soa},
		{name: "apex exists", q: query("cluster.local.", dns.TypeA), ns: soa},
		{
			name:   "apex SOA",
			q:      query("cluster.local.", dns.TypeSOA),
			answer: []string{"cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 3 7200 1800 86400 5"},
		},
		{name: "TXT on a service is NODATA", q: query("web.default.svc.cluster.local.", dns.TypeTXT), ns: soa},
		{
			name: "node A",
			q:    query("edge-1.edgewire.internal.", dns.TypeA),
			answer: []string{
				"edge-1.edgewire.internal. 5 IN A 100.64.0.1",
			},
		},
		{
			name:   "node AAAA",
			q:      query("edge-1.edgewire.internal.", dns.TypeAAAA),
			answer: []string{"edge-1.edgewire.internal. 5 IN AAAA fd7a:115c::1"},
		},
		{name: "v4-only node AAAA is NODATA", q: query("cloud-a.edgewire.internal.", dns.TypeAAAA), ns: soa},
		{
			name:  "unknown node",
			q:     query("edge-9.edgewire.internal.", dns.TypeA),
			rcode: dns.RcodeNameError,
			ns:    soa,
		},
		{
			name:  "node with a bad name is not served",
			q:     query("bad_name.edgewire.internal.", dns.TypeA),
			rcode: dns.RcodeNameError,
			ns:    soa,
		},
		{
			name:   "mixed case answers in the client's spelling",
			q:      query("WeB.Default.SVC.Cluster.Local.", dns.TypeA),
			answer: []string{"WeB.Default.SVC.Cluster.Local. 5 IN A 10.96.0.10"},
		},
		{
			name:   "mixed case node",
			q:      query("EDGE-1.EdgeWire.Internal.", dns.TypeA),
			answer: []string{"EDGE-1.EdgeWire.Internal. 5 IN A 100.64.0.1"},
		},
		{
			name:   "over TCP",
			q:      query("web.default.svc.cluster.local.", dns.TypeA),
			tcp:    true,
			answer: []string{"web.default.svc.cluster.local. 5 IN A 10.96.0.10"},
		},
		{
			name: "escaped dot is not a zone boundary",
			q:    query(`x\.cluster.local.`, dns.TypeA),
			// Not in a local zone and no upstreams: SERVFAIL, not NXDOMAIN.
			rcode: dns.RcodeServerFailure,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{tcp: tt.tcp}
			s.ServeDNS(rec, tt.q)
			if rec.packErr != nil {
				t.Fatalf("reply does not pack: %v", rec.packErr)
			}
			if len(rec.msgs) != 1 {
				t.Fatalf("got %d replies, want 1", len(rec.msgs))
			}
			m := rec.msgs[0]
			if m.Rcode != tt.rcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			if m.Id != tt.q.Id {
				t.Errorf("id: got %d, want %d", m.Id, tt.q.Id)
			}
			if len(m.Question) != 1 || m.Question[0].Name != tt.q.Question[0].Name {
				t.Errorf("question: got %v, want %v", m.Question, tt.q.Question)
			}
			if got := rrs(m.Answer); !slices.Equal(got, tt.answer) {
				t.Errorf("answer:\ngot  %q\nwant %q", got, tt.answer)
			}
			gotExtra := rrs(m.Extra)
			slices.Sort(gotExtra)
			wantExtra := slices.Sorted(slices.Values(tt.extra))
			if !slices.Equal(gotExtra, wantExtra) {
				t.Errorf("extra:\ngot  %q\nwant %q", gotExtra, wantExtra)
			}
			if tt.ns == soa {
				if len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
					t.Fatalf("authority: got %v, want one SOA", m.Ns)
				}
				soaRR := m.Ns[0].(*dns.SOA)
				if soaRR.Hdr.Ttl != 5 || soaRR.Minttl != 5 {
					t.Errorf("SOA ttl/minttl: got %d/%d, want 5/5", soaRR.Hdr.Ttl, soaRR.Minttl)
				}
			} else if len(m.Ns) != 0 {
				t.Errorf("authority: got %v, want none", m.Ns)
			}
			if tt.rcode != dns.RcodeServerFailure && !m.Authoritative {
				t.Errorf("local reply without AA")
			}
		})
	}
}

func TestServeMalformed(t *testing.T) {
	s := newTestServer(t, Config{})
	twoQ := query("web.default.svc.cluster.local.", dns.TypeA)
	twoQ.Question = append(twoQ.Question, twoQ.Question[0])
	noQ := query("web.default.svc.cluster.local.", dns.TypeA)
	noQ.Question = nil
	notify := query("cluster.local.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	update := query("cluster.local.", dns.TypeSOA)
	update.Opcode = dns.OpcodeUpdate
	chaos := query("version.bind.", dns.TypeTXT)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	anyQ := query("web.default.svc.cluster.local.", dns.TypeANY)
	axfr := query("cluster.local.", dns.TypeAXFR)
	edns1 := query("web.default.svc.cluster.local.", dns.TypeA)
	edns1.SetEdns0(1232, false)
	edns1.IsEdns0().SetVersion(1)
	resp := query("web.default.svc.cluster.local.", dns.TypeA)
	resp.Response = true

	tests := []struct {
		name    string
		q       *dns.Msg
		replies int
		rcode   int
	}{
		{"two questions", twoQ, 1, dns.RcodeFormatError},
		{"no question", noQ, 1, dns.RcodeFormatError},
		{"notify opcode", notify, 1, dns.RcodeNotImplemented},
		{"update opcode", update, 1, dns.RcodeNotImplemented},
		{"chaos class", chaos, 1, dns.RcodeRefused},
		{"ANY", anyQ, 1, dns.RcodeNotImplemented},
		{"AXFR", axfr, 1, dns.RcodeRefused},
		{"EDNS version 1", edns1, 1, dns.RcodeBadVers},
		{"a response is not answered", resp, 0, 0},
		{"nil message", nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Stats()
			rec := &recorder{}
			s.ServeDNS(rec, tt.q)
			if rec.packErr != nil {
				t.Fatalf("reply does not pack: %v", rec.packErr)
			}
			if len(rec.msgs) != tt.replies {
				t.Fatalf("got %d replies, want %d", len(rec.msgs), tt.replies)
			}
			after := s.Stats()
			if tt.replies == 0 {
				if after.Dropped != before.Dropped+1 {
					t.Errorf("dropped: got %d, want %d", after.Dropped, before.Dropped+1)
				}
				return
			}
			m := rec.msgs[0]
			if m.Rcode != tt.rcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			if !m.Response || m.Id != tt.q.Id {
				t.Errorf("got response=%v id=%d, want true, %d", m.Response, m.Id, tt.q.Id)
			}
			if len(m.Answer) != 0 {
				t.Errorf("answer: got %v, want none", m.Answer)
			}
			if after.Rejected != before.Rejected+1 {
				t.Errorf("rejected: got %d, want %d", after.Rejected, before.Rejected+1)
			}
		})
	}
}

func TestEDNSAndTruncation(t *testing.T) {
	s, err := New(Config{Listen: netip.MustParseAddrPort("169.254.96.16:53")})
	if err != nil {
		t.Fatal(err)
	}
	var eps []services.Endpoint
	for i := range 100 {
		eps = append(eps, services.Endpoint{Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 9, byte(i / 250), byte(i%250 + 1)})}})
	}
	tbl, err := services.NewTable([]*services.Service{{Namespace: "ns", Name: "big", Endpoints: eps}})
	if err != nil {
		t.Fatal(err)
	}
	s.SetServices(tbl)

	plain := query("big.ns.svc.cluster.local.", dns.TypeA)
	edns := query("big.ns.svc.cluster.local.", dns.TypeA)
	edns.SetEdns0(4096, false)
	tests := []struct {
		name      string
		q         *dns.Msg
		tcp       bool
		truncated bool
		answers   int // exact; -1: fewer than 100
		opt       bool
	}{
		{"udp 512", plain, false, true, -1, false},
		{"udp edns capped at 1232", edns, false, true, -1, true},
		{"tcp whole", plain, true, false, 100, false},
		{"tcp edns whole", edns, true, false, 100, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{tcp: tt.tcp}
			s.ServeDNS(rec, tt.q)
			if len(rec.msgs) != 1 || rec.msgs[0] == nil {
				t.Fatalf("got %d replies (pack error %v), want 1", len(rec.msgs), rec.packErr)
			}
			m := rec.msgs[0]
			if m.Truncated != tt.truncated {
				t.Errorf("TC: got %v, want %v", m.Truncated, tt.truncated)
			}
			if tt.answers >= 0 && len(m.Answer) != tt.answers {
				t.Errorf("answers: got %d, want %d", len(m.Answer), tt.answers)
			}
			if tt.answers < 0 && (len(m.Answer) == 0 || len(m.Answer) >= 100) {
				t.Errorf("answers: got %d, want some but not all", len(m.Answer))
			}
			if limit := min(udpSize(tt.q.IsEdns0()), localUDPSize); !tt.tcp && rec.sizes[0] > limit {
				t.Errorf("udp reply is %d bytes, want at most %d", rec.sizes[0], limit)
			}
			if got := m.IsEdns0() != nil; got != tt.opt {
				t.Errorf("OPT in reply: got %v, want %v", got, tt.opt)
			}
			if o := m.IsEdns0(); o != nil && o.UDPSize() != localUDPSize {
				t.Errorf("advertised size: got %d, want %d", o.UDPSize(), localUDPSize)
			}
		})
	}
}

func TestNew(t *testing.T) {
	listen := netip.MustParseAddrPort("169.254.96.16:53")
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{Listen: listen}, ""},
		{"no listen", Config{}, "listen address"},
		{"port 0", Config{Listen: netip.MustParseAddrPort("127.0.0.1:0")}, "listen address"},
		{"bad cluster domain", Config{Listen: listen, ClusterDomain: "clus_ter.local"}, "not a DNS label"},
		{"root mesh domain", Config{Listen: listen, MeshDomain: "."}, "root"},
		{"overlapping domains", Config{Listen: listen, ClusterDomain: "example", MeshDomain: "mesh.example"}, "overlap"},
		{"same domains", Config{Listen: listen, ClusterDomain: "a.b", MeshDomain: "A.B."}, "overlap"},
		{"bad upstream", Config{Listen: listen, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}}, "bad upstream"},
		{"custom domains", Config{Listen: listen, ClusterDomain: "Corp.Example.", MeshDomain: "mesh.corp"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got error %v, want none", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDomainsAndTTL(t *testing.T) {
	s := newTestServer(t, Config{ClusterDomain: "Corp.Example", MeshDomain: "mesh.corp.", TTL: 30})
	tests := []struct {
		q      string
		rcode  int
		answer string
	}{
		{"web.default.svc.corp.example.", dns.RcodeSuccess, "web.default.svc.corp.example. 30 IN A 10.96.0.10"},
		{"cloud-a.mesh.corp.", dns.RcodeSuccess, "cloud-a.mesh.corp. 30 IN A 100.64.0.2"},
		{"nope.mesh.corp.", dns.RcodeNameError, ""},
	}
	for _, tt := range tests {
		t.Run(tt.q, func(t *testing.T) {
			rec := &recorder{}
			s.ServeDNS(rec, query(tt.q, dns.TypeA))
			m := rec.msgs[0]
			if m.Rcode != tt.rcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			var want []string
			if tt.answer != "" {
				want = []string{tt.answer}
			}
			if got := rrs(m.Answer); !slices.Equal(got, want) {
				t.Errorf("answer: got %q, want %q", got, want)
			}
		})
	}
}

func TestSetUpdatesIndex(t *testing.T) {
	s := newTestServer(t, Config{})
	ask := func(name string) int {
		rec := &recorder{}
		s.ServeDNS(rec, query(name, dns.TypeA))
		return rec.msgs[0].Rcode
	}
	if got := ask("web.default.svc.cluster.local."); got != dns.RcodeSuccess {
		t.Fatalf("before: got %s, want NOERROR", dns.RcodeToString[got])
	}
	s.SetServices(nil)
	if got := ask("web.default.svc.cluster.local."); got != dns.RcodeNameError {
		t.Errorf("after removing services: got %s, want NXDOMAIN", dns.RcodeToString[got])
	}
	if got := ask("edge-1.edgewire.internal."); got != dns.RcodeSuccess {
		t.Errorf("nodes survive SetServices: got %s, want NOERROR", dns.RcodeToString[got])
	}
	s.SetNodes(nil)
	if got := ask("edge-1.edgewire.internal."); got != dns.RcodeNameError {
		t.Errorf("after removing nodes: got %s, want NXDOMAIN", dns.RcodeToString[got])
	}
}

// TestConcurrentServeAndSwap runs queries while the index is replaced; with
// -race it checks that shared records are never written.
func TestConcurrentServeAndSwap(t *testing.T) {
	s := newTestServer(t, Config{})
	tbl := testTable(t)
	names := []struct {
		n string
		t uint16
	}{
		{"web.default.svc.cluster.local.", dns.TypeA},
		{"WEB.default.svc.cluster.local.", dns.TypeA},
		{"_pg._tcp.db.default.svc.cluster.local.", dns.TypeSRV},
		{"edge-1.edgewire.internal.", dns.TypeAAAA},
		{"nope.default.svc.cluster.local.", dns.TypeA},
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				q := names[(g+i)%len(names)]
				m := query(q.n, q.t)
				if i%2 == 0 {
					m.SetEdns0(1232, false)
				}
				rec := &recorder{tcp: i%3 == 0}
				s.ServeDNS(rec, m)
				if len(rec.msgs) != 1 || rec.packErr != nil {
					t.Errorf("query %s: %d replies, pack error %v", q.n, len(rec.msgs), rec.packErr)
					return
				}
			}
		})
	}
	for range 50 {
		s.SetServices(tbl)
		s.SetNodes(map[string][]netip.Addr{"edge-1": {ip("fd7a:115c::1")}})
	}
	wg.Wait()
}

func TestStats(t *testing.T) {
	s := newTestServer(t, Config{})
	for _, q := range []*dns.Msg{
		query("web.default.svc.cluster.local.", dns.TypeA),
		query("nope.default.svc.cluster.local.", dns.TypeA),
		query("example.com.", dns.TypeA), // no upstreams: SERVFAIL
		query("web.default.svc.cluster.local.", dns.TypeANY),
	} {
		s.ServeDNS(&recorder{}, q)
	}
	got := s.Stats()
	want := Stats{
		Local: 2, Forwarded: 1, Rejected: 1,
		Rcodes: map[string]uint64{"NOERROR": 1, "NXDOMAIN": 1, "SERVFAIL": 1, "NOTIMP": 1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestInZone(t *testing.T) {
	tests := []struct {
		name, zone string
		want       bool
	}{
		{"cluster.local.", "cluster.local.", true},
		{"a.cluster.local.", "cluster.local.", true},
		{"acluster.local.", "cluster.local.", false},
		{`a\.cluster.local.`, "cluster.local.", false},
		{`a\\.cluster.local.`, "cluster.local.", true},
		{"local.", "cluster.local.", false},
		{"example.com.", "cluster.local.", false},
	}
	for _, tt := range tests {
		if got := inZone(tt.name, tt.zone); got != tt.want {
			t.Errorf("inZone(%q, %q): got %v, want %v", tt.name, tt.zone, got, tt.want)
		}
	}
}

func BenchmarkServeDNS(b *testing.B) {
	var svcs []*services.Service
	for i := range 1000 {
		svcs = append(svcs, &services.Service{
			Namespace:  fmt.Sprintf("ns-%d", i%20),
			Name:       fmt.Sprintf("svc-%d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})},
			Ports:      []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}},
		})
	}
	tbl, err := services.NewTable(svcs)
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(Config{Listen: netip.MustParseAddrPort("169.254.96.16:53")})
	if err != nil {
		b.Fatal(err)
	}
	s.SetServices(tbl)
	q := query("svc-500.ns-0.svc.cluster.local.", dns.TypeA)
	for _, bc := range []struct {
		name string
		w    *discard
	}{
		{"lookup", &discard{}},
		{"lookup+pack", &discard{pack: true, buf: make([]byte, 512)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.ServeDNS(bc.w, q)
			}
		})
	}
}
