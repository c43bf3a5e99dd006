package netmap

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/types/key"
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func routesOf(r *Registry, name string) []string {
	for _, n := range r.Nodes() {
		if n.Name == name {
			return n.Routes
		}
	}
	return nil
}

func TestSetKubeNode(t *testing.T) {
	r := New(pfx("100.64.0.0/10"))
	r.SetRoutePolicy(routeguard.Policy{Protected: pfx("203.0.113.10/32")})
	var ka, kb key.Public
	ka[0], kb[0] = 1, 2
	r.Upsert(store.Node{Key: ka, Name: "a", KubeNode: "a"})
	r.Upsert(store.Node{Key: kb, Name: "b", Routes: pfx("192.168.50.0/24")})
	if err := r.SetKubeNode("a", pfx("10.244.1.0/24")); err != nil {
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
		{"special range", "b", pfx("127.0.0.0/8"), "loopback"},
		{"protected address", "b", pfx("203.0.113.0/24"), "203.0.113.10"},
		{"too broad", "b", pfx("10.0.0.0/7"), "broader"},
		{"host bits", "b", []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24")}, "valid masked prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.SetKubeNode(tc.node, tc.cidrs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error mentioning %q", err, tc.want)
			}
			if r.Version() != v {
				t.Errorf("a refused change bumped the version: got %d, want %d", r.Version(), v)
			}
		})
	}
	if got := routesOf(r, "a"); !slices.Equal(got, []string{"10.244.1.0/24"}) {
		t.Errorf("node a routes: got %v, want [10.244.1.0/24]", got)
	}
	if !r.IsKubeNode("a") || r.IsKubeNode("b") {
		t.Errorf("IsKubeNode(a, b) = %v, %v; want true, false", r.IsKubeNode("a"), r.IsKubeNode("b"))
	}
	r.DeleteKubeNode("a")
	if got := routesOf(r, "a"); len(got) != 0 || r.IsKubeNode("a") {
		t.Errorf("after DeleteKubeNode: routes %v, IsKubeNode %v; want none, false", got, r.IsKubeNode("a"))
	}
}

// TestPodCIDRFollowsIdentity is the name-squatting attack: a node that
// merely calls itself after a Kubernetes Node gets none of its pod
// CIDRs; the node verified to be that Node does, whatever its name.
func TestPodCIDRFollowsIdentity(t *testing.T) {
	r := New(pfx("100.64.0.0/10"))
	var squatter, real key.Public
	squatter[0], real[0] = 1, 2
	r.Upsert(store.Node{Key: squatter, Name: "worker-3"})
	if err := r.SetKubeNode("worker-3", pfx("10.244.3.0/24")); err != nil {
		t.Fatal(err)
	}
	if got := routesOf(r, "worker-3"); len(got) != 0 {
		t.Errorf("squatter named worker-3 got routes %v, want none", got)
	}
	r.Upsert(store.Node{Key: real, Name: "w3-real", KubeNode: "worker-3"})
	if got := routesOf(r, "w3-real"); !slices.Equal(got, []string{"10.244.3.0/24"}) {
		t.Errorf("verified node routes: got %v, want [10.244.3.0/24]", got)
	}
}

// TestPodCIDRShadowsRoutes: Kubernetes decides where pods live. An
// approved route of another node that overlaps a pod CIDR is not routed,
// and comes back when the pod CIDR goes.
func TestPodCIDRShadowsRoutes(t *testing.T) {
	r := New(pfx("100.64.0.0/10"))
	var ka, kb key.Public
	ka[0], kb[0] = 1, 2
	r.Upsert(store.Node{Key: ka, Name: "claimer", Routes: pfx("10.244.0.0/16", "192.168.9.0/24")})
	r.Upsert(store.Node{Key: kb, Name: "w1", KubeNode: "w1"})
	if err := r.SetKubeNode("w1", pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	if got := routesOf(r, "claimer"); !slices.Equal(got, []string{"192.168.9.0/24"}) {
		t.Errorf("claimer routes with w1's pod CIDR present: got %v, want [192.168.9.0/24]", got)
	}
	if got := routesOf(r, "w1"); !slices.Equal(got, []string{"10.244.1.0/24"}) {
		t.Errorf("w1 routes: got %v, want [10.244.1.0/24]", got)
	}
	r.DeleteKubeNode("w1")
	if got := routesOf(r, "claimer"); !slices.Equal(got, []string{"10.244.0.0/16", "192.168.9.0/24"}) {
		t.Errorf("claimer routes after w1 left: got %v, want both", got)
	}
}

func TestCheckRoutes(t *testing.T) {
	r := New(nil)
	var ka key.Public
	ka[0] = 1
	r.Upsert(store.Node{Key: ka, Name: "a", KubeNode: "a", Routes: pfx("192.168.50.0/24")})
	if err := r.SetKubeNode("a", pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	kb := key.Public{2}
	for _, tc := range []struct {
		node        key.Public
		kube, route string
		ok          bool
	}{
		{kb, "", "192.168.50.0/25", false},
		{kb, "", "10.244.0.0/16", false},
		{kb, "", "192.168.51.0/24", true},
		{ka, "a", "192.168.50.0/24", true}, // its own route
		{ka, "a", "10.244.1.0/24", true},   // its own pod CIDR
		{ka, "", "10.244.1.0/24", false},   // not its own without the identity
	} {
		err := r.CheckRoutes(tc.node, tc.kube, pfx(tc.route))
		if (err == nil) != tc.ok {
			t.Errorf("CheckRoutes(%s, %s): got %v, want ok=%v", tc.node, tc.route, err, tc.ok)
		}
	}
}
