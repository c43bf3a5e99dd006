package mapstate

import (
	"maps"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
)

// sums is the agent's own account of the map it holds (api.MapSums), kept
// over the entries as received, self included. Sent in Hello.map_buckets,
// it lets a coordinator that has not the agent's exact map (a new leader
// whose last saved presence is a few seconds old) send only the node
// buckets that differ. Immutable once built: Apply builds a new one.
type sums struct {
	nodes  map[key.Public]api.MapHash
	svcs   map[string]api.MapHash
	s      api.MapSums // Rest is svcSum XOR rest
	svcSum api.MapHash
	// The full map's other fields as received, for rest.
	prefixes []string
	stun     []*api.StunServer
	relays   []*api.RelayRegion
	revs     []byte
}

func newSums() *sums {
	return &sums{nodes: map[key.Public]api.MapHash{}, svcs: map[string]api.MapHash{}}
}

func (x *sums) clone() *sums {
	c := *x
	c.nodes = maps.Clone(x.nodes)
	c.svcs = maps.Clone(x.svcs)
	return &c
}

func (x *sums) setNode(n *api.Node) {
	k := key.Public(n.GetPublicKey())
	x.dropNode(k)
	h := api.HashNode(n)
	x.nodes[k] = h
	x.s.Buckets[api.NodeBucket(k[:])].Xor(h)
}

func (x *sums) dropNode(k key.Public) {
	if h, ok := x.nodes[k]; ok {
		x.s.Buckets[api.NodeBucket(k[:])].Xor(h)
		delete(x.nodes, k)
	}
}

// dropBucket removes every node of bucket b.
func (x *sums) dropBucket(b int) {
	for k := range x.nodes {
		if api.NodeBucket(k[:]) == b {
			delete(x.nodes, k)
		}
	}
	x.s.Buckets[b] = api.MapHash{}
}

func (x *sums) setService(name string, svc *api.Service) {
	x.dropService(name)
	h := api.HashService(svc)
	x.svcs[name] = h
	x.svcSum.Xor(h)
}

func (x *sums) dropService(name string) {
	if h, ok := x.svcs[name]; ok {
		x.svcSum.Xor(h)
		delete(x.svcs, name)
	}
}

// seal computes Rest from the Services and the other fields.
func (x *sums) seal() {
	x.s.Rest = x.svcSum
	x.s.Rest.Xor(api.HashRest(x.prefixes, x.stun, x.relays, x.revs))
}
