package svcproxy

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/services"
)

// FuzzRender renders the rules for Service entries decoded from fuzz
// bytes, as the agent gets them in the network map. Whatever the entries,
// rendering either refuses a portal clash or yields a ruleset whose every
// reference resolves, with IPv4 endpoints only, that diffs to nothing
// against itself.
func FuzzRender(f *testing.F) {
	seed := func(svcs ...*api.Service) {
		b, err := proto.Marshal(&api.NetworkMap{Services: svcs})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&api.Service{Namespace: "default", Name: "web", ClusterIps: []string{"10.96.0.10", "fd00::10"},
		Ports: []*api.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}},
		Endpoints: []*api.ServiceEndpoint{{Addresses: []string{"10.244.1.5"}, Ports: map[string]uint32{"http": 8080, "dns": 53}},
			{Addresses: []string{"fd00::5", "10.244.2.5"}, Ports: map[string]uint32{"http": 8080}}}})
	seed(&api.Service{Namespace: "a", Name: "aff", ClusterIps: []string{"10.96.0.11"}, ClientIpAffinity: true,
		Ports:     []*api.ServicePort{{Protocol: "TCP", Port: 443}},
		Endpoints: []*api.ServiceEndpoint{{Addresses: []string{"10.1.0.1"}, Ports: map[string]uint32{"": 8443}}, {Addresses: []string{"10.1.0.2"}, Ports: map[string]uint32{"": 8443}}}},
		&api.Service{Namespace: "b", Name: "clash", ClusterIps: []string{"10.96.0.11"}, Ports: []*api.ServicePort{{Protocol: "TCP", Port: 443}}})

	f.Fuzz(func(t *testing.T, b []byte) {
		var m api.NetworkMap
		if err := proto.Unmarshal(b, &m); err != nil {
			return
		}
		var list []*services.Service
		seen := map[string]bool{}
		for _, p := range m.GetServices() {
			if s, err := services.FromProto(p); err == nil && !seen[s.Key()] {
				seen[s.Key()] = true
				list = append(list, s)
			}
		}
		tbl, err := services.NewTable(list)
		if err != nil {
			t.Fatalf("table: %v", err)
		}
		rs, err := render(tbl, discardLog())
		if err != nil {
			if !errors.Is(err, ErrConflict) {
				t.Fatalf("render refused with %v, want only ErrConflict", err)
			}
			return
		}
		for pt, ch := range rs.portals {
			if !pt.ip.Is4() || rs.chains[ch] == nil || rs.rejects[pt] {
				t.Fatalf("portal %s -> %q: not IPv4, no such chain, or also rejected", pt, ch)
			}
		}
		for name, c := range rs.chains {
			for _, e := range c.eps {
				if !e.Addr().Is4() || e.Port() == 0 {
					t.Fatalf("chain %s: endpoint %s", name, e)
				}
			}
			for i, tg := range c.targets {
				if rs.chains[tg] == nil || !rs.sets[c.affSets[i]] {
					t.Fatalf("chain %s: target %s or set %s missing", name, tg, c.affSets[i])
				}
			}
			if len(name) > 255 {
				t.Fatalf("chain name of %d bytes, longer than nftables takes", len(name))
			}
		}
		if p := diff(rs, rs); !p.empty() {
			t.Fatalf("a ruleset differs from itself: %+v", p)
		}
		if p := diff(emptyRuleset(), rs); len(p.addChains) != len(rs.chains) || len(p.addPortals) != len(rs.portals) {
			t.Fatalf("plan from empty adds %d chains, %d portals; want %d, %d", len(p.addChains), len(p.addPortals), len(rs.chains), len(rs.portals))
		}
	})
}
