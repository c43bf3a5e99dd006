package agent

import (
	"net/netip"

	"github.com/edgewire/edgewire/dataplane/wgdev"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

// A plan is what the data plane should hold for one network map and the
// peers' current paths: WireGuard peers, the overlay interface's
// addresses and routes. Planning is pure (no I/O, no clock, no locks), so
// every decision about peers and routes is table-tested; reconcile
// gathers the inputs, plans and applies the result.

// plan is the data plane's desired state.
type plan struct {
	peers   []wgdev.PeerConfig
	addrs   []netip.Prefix // the node's overlay addresses, with the overlay prefix's length
	routes  []netip.Prefix // through the overlay interface
	refused []refusal      // map routes the policy refused
	waiting bool           // some peer's keepalive waits for its first handshake
}

// refusal is a peer's route that is not installed, and why.
type refusal struct {
	peer  mapstate.Peer
	route netip.Prefix
	err   error
}

// underlay is what a node must reach without the overlay: addresses no
// route may cover (the coordinator's, relays', STUN servers', default
// gateways) and the subnets it is attached to.
type underlay struct {
	protected []netip.Addr
	gateways  []netip.Prefix
	subnets   []netip.Prefix
}

// routePolicy is what peer routes must pass on this node: not the
// overlay, nothing covering the underlay's addresses or a peer's underlay
// endpoint (from the map, or its current direct path), nothing inside a
// subnet the host is attached to (a peer's route must not claim a
// neighbour), besides routeguard's special ranges and minimum lengths.
func routePolicy(prefixes []netip.Prefix, peers []mapstate.Peer, paths map[key.Public]pathsel.Path, u underlay) *routeguard.Policy {
	p := &routeguard.Policy{Overlay: prefixes, Local: u.subnets}
	protect := func(a netip.Addr) {
		if a.IsValid() {
			p.Protected = append(p.Protected, routeguard.Host(a))
		}
	}
	for _, a := range u.protected {
		protect(a)
	}
	p.Protected = append(p.Protected, u.gateways...)
	for _, peer := range peers {
		for _, ep := range peer.Endpoints {
			// An endpoint inside the peer's own routes (its pod bridge's
			// gateway, reported by an older agent) cannot be reached
			// through the underlay; protecting it would refuse the very
			// route it lies in.
			if !inAny(ep.Addr(), peer.Routes) {
				protect(ep.Addr())
			}
		}
		if path := paths[peer.Key]; path.Kind == pathsel.Direct {
			protect(path.Endpoint.Addr())
		}
	}
	return p
}

// makePlan plans the data plane for self and peers (sorted) under the
// overlay prefixes, given each peer's path and the route policy.
//
// waiting reports peers whose first handshake this node leaves to the
// peer (nil: none): their keepalive stays off until a handshake is done,
// so the two sides do not both initiate the moment the relay comes up.
// Crossed first initiations leave wireguard-go, now and then, with one
// direction that nothing decrypts until the 15 s retry (seen in the lab
// as a pair that drops every packet one way right after coming up).
func makePlan(self mapstate.Self, peers []mapstate.Peer, prefixes []netip.Prefix, paths map[key.Public]pathsel.Path, pol *routeguard.Policy, waiting func(key.Public) bool) plan {
	var out plan
	for _, p := range peers {
		pc := wgdev.PeerConfig{PublicKey: p.Key, Name: p.Name}
		for _, addr := range p.Addresses {
			if len(prefixes) > 0 && !inAny(addr, prefixes) {
				continue // an overlay address outside the overlay: the map is not to be trusted there
			}
			pc.AllowedIPs = append(pc.AllowedIPs, netip.PrefixFrom(addr, addr.BitLen()))
		}
		for _, r := range p.Routes {
			if err := pol.Check(r); err != nil {
				out.refused = append(out.refused, refusal{peer: p, route: r, err: err})
				continue
			}
			pc.AllowedIPs = append(pc.AllowedIPs, r)
			out.routes = append(out.routes, r)
		}
		if path := paths[p.Key]; path.Kind != pathsel.None {
			pc.Endpoint = path.Endpoint // the peer's address, or its synthetic relay endpoint
			// Keepalive only with a path: turning it on makes WireGuard send
			// at once, so the first handshake goes out the moment a path
			// exists instead of after a failed attempt's 5 s back-off.
			pc.Keepalive = keepalive
			if waiting != nil && waiting(p.Key) {
				pc.Keepalive = 0
				out.waiting = true
			}
		}
		out.peers = append(out.peers, pc)
	}
	for _, addr := range self.Addresses {
		bits := addr.BitLen()
		for _, p := range prefixes {
			if p.Contains(addr) {
				bits = p.Bits() // the prefix route covers the whole overlay
			}
		}
		out.addrs = append(out.addrs, netip.PrefixFrom(addr, bits))
	}
	return out
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
