package kubestore

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/store/storetest"
	"github.com/edgewire/edgewire/types/key"
)

// A name and an address moving from one node to another in one
// transaction is no clash in the cache, in whichever order the nodes
// are visited (map order: run it often).
func TestCacheHandOver(t *testing.T) {
	a1, a2 := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")
	k1, k2 := storetest.NodeKey(1), storetest.NodeKey(2)
	for range 50 {
		c := newCache()
		c.setNode(k1, nodeEntry{n: store.Node{Key: k1, Name: "alpha", Addresses: []netip.Addr{a1}}, rv: "1"}, slog.Default())
		c.setNodes(map[key.Public]*nodeEntry{
			k1: {n: store.Node{Key: k1, Name: "bravo", Addresses: []netip.Addr{a2}}, rv: "2"},
			k2: {n: store.Node{Key: k2, Name: "alpha", Addresses: []netip.Addr{a1}}, rv: "3"},
		}, slog.Default())
		if c.byName["alpha"] != k2 || c.byName["bravo"] != k1 || c.byAddr[a1] != k2 || c.byAddr[a2] != k1 || c.nodes[k2].bad {
			t.Fatalf("after the hand-over: alpha %v bravo %v, %s %v, %s %v, node 2 bad %v",
				c.byName["alpha"].Short(), c.byName["bravo"].Short(), a1, c.byAddr[a1].Short(), a2, c.byAddr[a2].Short(), c.nodes[k2].bad)
		}
	}
}
