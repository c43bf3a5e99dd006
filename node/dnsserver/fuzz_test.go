package dnsserver

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzServeDNS feeds arbitrary packets to ServeDNS: whatever unpacks must
// get at most one reply, and that reply must pack. The server has no
// upstreams, so nothing leaves the process.
func FuzzServeDNS(f *testing.F) {
	seed := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(b, true)
	}
	for _, q := range []struct {
		n string
		t uint16
	}{
		{"web.default.svc.cluster.local.", dns.TypeA},
		{"Dual.default.svc.cluster.local.", dns.TypeAAAA},
		{"_pg._tcp.db.default.svc.cluster.local.", dns.TypeSRV},
		{"db-0.db.default.svc.cluster.local.", dns.TypeA},
		{"nope.svc.cluster.local.", dns.TypeA},
		{"cluster.local.", dns.TypeSOA},
		{"edge-1.edgewire.internal.", dns.TypeAAAA},
		{"example.com.", dns.TypeMX},
		{"cluster.local.", dns.TypeANY},
	} {
		m := query(q.n, q.t)
		seed(m)
		m.SetEdns0(4096, true)
		seed(m)
	}
	m := query("web.default.svc.cluster.local.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	seed(m)
	f.Add([]byte{0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false) // header only
	m = query("example.com.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: ednsLoopCode, Data: []byte{loopVersion, 1, 2, 3, 4, 5, 6, 7, 8}})
	seed(m)

	s, err := New(Config{Listen: netip.MustParseAddrPort("169.254.96.16:53")})
	if err != nil {
		f.Fatal(err)
	}
	s.SetServices(testTable(f))
	s.SetNodes(map[string][]netip.Addr{"edge-1": {ip("100.64.0.1"), ip("fd7a:115c::1")}})

	f.Fuzz(func(t *testing.T, b []byte, tcp bool) {
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			return
		}
		rec := &recorder{tcp: tcp}
		s.ServeDNS(rec, r)
		if len(rec.msgs) > 1 {
			t.Fatalf("got %d replies, want at most 1", len(rec.msgs))
		}
		if rec.packErr != nil {
			t.Fatalf("reply does not pack: %v", rec.packErr)
		}
		if len(rec.msgs) == 1 && rec.msgs[0].Id != r.Id {
			t.Fatalf("reply id %d, want %d", rec.msgs[0].Id, r.Id)
		}

		// What a forward would send upstream: it packs, and its loop
		// marker is the client's ids (if well formed) with ours last.
		if r.Response || len(r.Question) != 1 {
			return
		}
		opt := r.IsEdns0()
		ids, ok := loopIDs(opt)
		if !ok {
			ids = nil
		}
		fq := s.upstreamQuery(r, opt, ids)
		if _, err := fq.Pack(); err != nil {
			t.Fatalf("upstream query does not pack: %v", err)
		}
		got, ok := loopIDs(fq.IsEdns0())
		if !ok || len(got) != len(ids)+1 || got[len(got)-1] != s.id {
			t.Fatalf("upstream marker %x (ok %v), want %x then our id", got, ok, ids)
		}
		// And the answer handed back carries no marker and the client's id.
		resp := fq.Copy()
		resp.Response = true
		out := clientReply(resp, r, opt, !tcp)
		if _, err := out.Pack(); err != nil {
			t.Fatalf("client reply does not pack: %v", err)
		}
		if out.Id != r.Id || (opt == nil && out.IsEdns0() != nil) {
			t.Fatalf("client reply id %d OPT %v, want id %d and OPT only if the client sent one", out.Id, out.IsEdns0() != nil, r.Id)
		}
		if o := out.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if op.Option() == ednsLoopCode {
					t.Fatalf("loop marker in the client's reply")
				}
			}
		}
	})
}

// FuzzParseResolvConf checks the resolv.conf parser never panics and only
// returns usable upstreams.
func FuzzParseResolvConf(f *testing.F) {
	f.Add("nameserver 10.0.0.2\nsearch a b\noptions ndots:5\n")
	f.Add("nameserver fe80::1%eth0 # x\n;nameserver 1.1.1.1")
	f.Fuzz(func(t *testing.T, in string) {
		ups, err := ParseResolvConf(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, u := range ups {
			if !u.IsValid() || u.Port() != 53 || u.Addr().Is4In6() {
				t.Fatalf("bad upstream %v", u)
			}
		}
	})
}
