package topology

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
	"github.com/edgewire/edgewire/types/topoview"
)

func k(b byte) key.Public { return key.Public{b} }

func kb(b byte) []byte { kk := k(b); return kk[:] }

func peer(b byte, path string) *api.PeerPath {
	kk := k(b)
	return &api.PeerPath{PublicKey: kk[:], Path: path}
}

func TestParse(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	many := make([]*api.PeerPath, MaxPeers+1)
	for i := range many {
		kk := key.Public{byte(i), byte(i >> 8), 1}
		many[i] = &api.PeerPath{PublicKey: kk[:], Path: "direct"}
	}
	tests := []struct {
		name string
		m    *api.PathReport
		err  string // substring; "": accepted
	}{
		{name: "empty", m: &api.PathReport{}},
		{name: "full", m: &api.PathReport{HomeRelay: "fra", HomeRelayMs: 11.5,
			Nat:   &api.NATReport{Measured: true, Udp: true, Mapping: "endpoint-independent", PublicAddr: "203.0.113.5"},
			Peers: []*api.PeerPath{{PublicKey: kb(2), Path: "direct", LocalCandidate: "srflx", RemoteCandidate: "host", RttMs: 3.2, SinceUnixMs: now.Add(-time.Minute).UnixMilli()}}}},
		{name: "too many peers", m: &api.PathReport{Peers: many}, err: "peers, at most"},
		{name: "short key", m: &api.PathReport{Peers: []*api.PeerPath{{PublicKey: []byte{1, 2}, Path: "direct"}}}, err: "key of 2 bytes"},
		{name: "itself", m: &api.PathReport{Peers: []*api.PeerPath{peer(1, "direct")}}, err: "itself"},
		{name: "twice", m: &api.PathReport{Peers: []*api.PeerPath{peer(2, "direct"), peer(2, "relay")}}, err: "twice"},
		{name: "unknown path", m: &api.PathReport{Peers: []*api.PeerPath{peer(2, "teleport")}}, err: "path"},
		{name: "unknown candidate", m: &api.PathReport{Peers: []*api.PeerPath{{PublicKey: kb(2), Path: "direct", LocalCandidate: "magic"}}}, err: "candidate"},
		{name: "NaN RTT", m: &api.PathReport{Peers: []*api.PeerPath{{PublicKey: kb(2), Path: "direct", RttMs: float32(math.NaN())}}}, err: "RTT"},
		{name: "negative RTT", m: &api.PathReport{Peers: []*api.PeerPath{{PublicKey: kb(2), Path: "direct", RttMs: -1}}}, err: "RTT"},
		{name: "long failure", m: &api.PathReport{Peers: []*api.PeerPath{{PublicKey: kb(2), Path: "none", LastFailure: strings.Repeat("x", 300)}}}, err: "failure"},
		{name: "control characters", m: &api.PathReport{HomeRelay: "fra\x1b[31m"}, err: "printable"},
		{name: "bad mapping", m: &api.PathReport{Nat: &api.NATReport{Mapping: "sometimes"}}, err: "mapping"},
		{name: "bad public address", m: &api.PathReport{Nat: &api.NATReport{PublicAddr: "not-an-ip"}}, err: "public address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(k(1), tt.m, now)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrBadReport)) {
				t.Fatalf("Parse: %v, want %q", err, tt.err)
			}
		})
	}
	// A time from the future (the node's clock ahead) is taken as now.
	r, err := Parse(k(1), &api.PathReport{Peers: []*api.PeerPath{{PublicKey: kb(2), Path: "direct", SinceUnixMs: now.Add(time.Hour).UnixMilli()}}}, now)
	if err != nil || !r.Peers[k(2)].Since.Equal(now) {
		t.Errorf("future since: %v %v, want now", r.Peers[k(2)].Since, err)
	}
}

func TestView(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := New()
	put := func(self byte, at time.Time, nat topoview.NAT, peers ...*api.PeerPath) {
		t.Helper()
		r, err := Parse(k(self), &api.PathReport{Peers: peers, HomeRelay: "fra"}, at)
		if err != nil {
			t.Fatal(err)
		}
		r.NAT = nat
		if !s.Put(k(self), r) {
			t.Fatalf("report of %d dropped", self)
		}
	}
	eim := topoview.NAT{Measured: true, UDP: true, Mapping: "endpoint-independent"}
	sym := topoview.NAT{Measured: true, UDP: true, Mapping: "endpoint-dependent"}
	relayed := func(b byte) *api.PeerPath {
		p := peer(b, "relay")
		p.Relay = "fra"
		return p
	}
	// a-b direct both ways; c-d relayed; a-c: a direct, c relay (relay
	// wins); e offline; b's report of e (offline) ignored; f reports
	// nothing.
	put(1, now, eim, peer(2, "direct"), peer(3, "direct"))
	put(2, now, eim, peer(1, "direct"), peer(5, "direct"))
	put(3, now, sym, relayed(4), relayed(1))
	put(4, now, sym, relayed(3))
	put(5, now, eim, peer(2, "direct"))
	nodes := []NodeInfo{
		{Key: k(1), Name: "a", Online: true, Tags: []string{"site-x"}},
		{Key: k(2), Name: "b", Online: true, Tags: []string{"site-x"}},
		{Key: k(3), Name: "c", Online: true},
		{Key: k(4), Name: "d", Online: true},
		{Key: k(5), Name: "e", Online: false},
		{Key: k(6), Name: "f", Online: true},
	}
	v := s.View(nodes, []RelayInfo{{ID: 1, Name: "fra"}}, now)
	got := map[string]string{}
	for _, p := range v.Pairs {
		got[p.A+"-"+p.B] = p.Path
	}
	want := map[string]string{"a-b": "direct", "c-d": "relay", "a-c": "relay"}
	if len(got) != len(want) {
		t.Errorf("pairs %v, want %v", got, want)
	}
	for pair, path := range want {
		if got[pair] != path {
			t.Errorf("pair %s: %q, want %q (all: %v)", pair, got[pair], path, got)
		}
	}
	if c := v.Summary.Pairs; c.Total != 3 || c.Direct != 1 || c.Relay != 2 {
		t.Errorf("summary %+v", c)
	}
	if len(v.Summary.ByTag) != 1 || v.Summary.ByTag[0].Tag != "site-x" || v.Summary.ByTag[0].Counts.Total != 2 {
		t.Errorf("by tag %+v, want site-x with a-b and a-c", v.Summary.ByTag)
	}
	if len(v.Relays) != 1 || v.Relays[0].Relayed != 2 || v.Relays[0].HomeOf != 4 {
		t.Errorf("relays %+v, want fra relaying 2 pairs, home of the 4 online reporters", v.Relays)
	}
	kinds := map[string]int{}
	for _, kc := range v.Summary.NATKinds {
		kinds[kc.Kind] = kc.Nodes
	}
	if kinds["eim"] != 3 || kinds["symmetric"] != 2 || kinds["unknown"] != 1 {
		t.Errorf("NAT kinds %v", kinds)
	}
	if v.Nodes[5].Name != "f" || v.Nodes[5].Reported != nil {
		t.Errorf("f: %+v, want no report", v.Nodes[5])
	}

	// Too soon: dropped. Stale: ignored. Forgotten: gone.
	r, _ := Parse(k(1), &api.PathReport{}, now.Add(100*time.Millisecond))
	if s.Put(k(1), r) {
		t.Error("a report 100 ms after the last one was taken")
	}
	if v := s.View(nodes, nil, now.Add(StaleAfter+time.Second)); len(v.Pairs) != 0 {
		t.Errorf("stale reports make pairs %+v", v.Pairs)
	}
	for _, b := range []byte{1, 2, 3, 4, 5} {
		s.Forget(k(b))
	}
	if v := s.View(nodes, nil, now); len(v.Pairs) != 0 {
		t.Errorf("forgotten reports make pairs %+v", v.Pairs)
	}
}

func FuzzParse(f *testing.F) {
	seed, _ := proto.Marshal(&api.PathReport{HomeRelay: "fra", Peers: []*api.PeerPath{{PublicKey: kb(2), Path: "direct"}}})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m api.PathReport
		if err := proto.Unmarshal(b, &m); err != nil {
			return
		}
		r, err := Parse(k(1), &m, time.Unix(1_800_000_000, 0))
		if err != nil {
			return
		}
		if len(r.Peers) > MaxPeers {
			t.Fatalf("%d peers taken", len(r.Peers))
		}
	})
}
