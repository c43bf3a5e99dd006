package netmap

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/coordinator/store"
)

func TestSetPodCIDRs(t *testing.T) {
	r := New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")})
	var ka, kb store.NodeKey
	ka[0], kb[0] = 1, 2
	r.Upsert(store.Node{Key: ka, Name: "a"})
	r.Upsert(store.Node{Key: kb, Name: "b", Routes: []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}})
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	if err := r.SetPodCIDRs("a", pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	v := r.Version()
	for _, tc := range []struct {
		name, node string
		cidrs      []netip.Prefix
		want       string
	}{
		{"overlay", "b", pfx("100.64.5.0/24"), "overlay prefix"},
		{"another node's pod CIDR", "b", pfx("10.244.0.0/16"), "node a's pod CIDR"},
		{"another node's route", "a", pfx("192.168.50.128/25"), "advertised by node b"},
		{"host bits", "b", []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24")}, "host bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.SetPodCIDRs(tc.node, tc.cidrs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error mentioning %q", err, tc.want)
			}
			if r.Version() != v {
				t.Errorf("a refused change bumped the version: got %d, want %d", r.Version(), v)
			}
		})
	}
	var aRoutes []string
	for _, n := range r.Nodes() {
		if n.Name == "a" {
			aRoutes = n.Routes
		}
	}
	if len(aRoutes) != 1 || aRoutes[0] != "10.244.1.0/24" {
		t.Errorf("node a routes: got %v, want [10.244.1.0/24]", aRoutes)
	}
}

func TestCheckRoutes(t *testing.T) {
	r := New(nil)
	var ka store.NodeKey
	ka[0] = 1
	r.Upsert(store.Node{Key: ka, Name: "a", Routes: []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}})
	if err := r.SetPodCIDRs("a", []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		node, route string
		ok          bool
	}{
		{"b", "192.168.50.0/25", false},
		{"b", "10.244.0.0/16", false},
		{"b", "192.168.51.0/24", true},
		{"a", "192.168.50.0/24", true}, // its own route
	} {
		err := r.CheckRoutes(tc.node, []netip.Prefix{netip.MustParsePrefix(tc.route)})
		if (err == nil) != tc.ok {
			t.Errorf("CheckRoutes(%s, %s): got %v, want ok=%v", tc.node, tc.route, err, tc.ok)
		}
	}
}
