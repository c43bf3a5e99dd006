package agent

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/edgewire/edgewire/dataplane/wgdev"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

var (
	overlay = pfx("100.64.0.0/10")
	kA      = key.Public{1}
	kB      = key.Public{2}
)

func TestMakePlan(t *testing.T) {
	self := mapstate.Self{Name: "me", Addresses: addrs("100.64.0.1", "fd7a::1")}
	direct := pathsel.Path{Kind: pathsel.Direct, Endpoint: netip.MustParseAddrPort("198.51.100.7:51820")}
	relayed := pathsel.Path{Kind: pathsel.Relay, Endpoint: netip.MustParseAddrPort("127.77.0.1:1")}
	tests := []struct {
		name        string
		peers       []mapstate.Peer
		paths       map[key.Public]pathsel.Path
		u           underlay
		wantPeers   []wgdev.PeerConfig
		wantRoutes  []netip.Prefix
		wantRefused []error
	}{
		{
			name:  "direct peer with a route",
			peers: []mapstate.Peer{{Key: kA, Name: "a", Addresses: addrs("100.64.0.2"), Routes: pfx("10.244.1.0/24")}},
			paths: map[key.Public]pathsel.Path{kA: direct},
			wantPeers: []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32", "10.244.1.0/24"),
				Endpoint: direct.Endpoint, Keepalive: keepalive}},
			wantRoutes: pfx("10.244.1.0/24"),
		},
		{
			name:      "relayed peer",
			peers:     []mapstate.Peer{{Key: kA, Name: "a", Addresses: addrs("100.64.0.2")}},
			paths:     map[key.Public]pathsel.Path{kA: relayed},
			wantPeers: []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32"), Endpoint: relayed.Endpoint, Keepalive: keepalive}},
		},
		{
			// No path: the peer only answers handshakes (wgdev drops its
			// allowed IPs), and gets no keepalive.
			name:      "peer without a path",
			peers:     []mapstate.Peer{{Key: kA, Name: "a", Addresses: addrs("100.64.0.2")}},
			wantPeers: []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32")}},
		},
		{
			name: "routes that would cut the node off are refused",
			peers: []mapstate.Peer{{Key: kA, Name: "a", Addresses: addrs("100.64.0.2"),
				Routes: pfx("203.0.113.10/32", "192.168.1.5/32", "192.168.0.0/16", "172.16.0.0/12", "128.0.0.0/1", "100.64.5.0/24", "10.9.0.0/16")}},
			paths: map[key.Public]pathsel.Path{kA: direct},
			// The coordinator at 203.0.113.10, the gateway at 172.16.0.1,
			// the LAN 192.168.1.0/24: a route inside the LAN is refused, a
			// broader one passes (the LAN's own route still wins).
			u: underlay{protected: addrs("203.0.113.10"), gateways: pfx("172.16.0.1/32"),
				subnets: pfx("192.168.1.0/24")},
			wantPeers: []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32", "192.168.0.0/16", "10.9.0.0/16"),
				Endpoint: direct.Endpoint, Keepalive: keepalive}},
			wantRoutes:  pfx("192.168.0.0/16", "10.9.0.0/16"),
			wantRefused: []error{routeguard.ErrProtected, routeguard.ErrLocal, routeguard.ErrProtected, routeguard.ErrSpecial, routeguard.ErrOverlay},
		},
		{
			name: "a route covering another peer's endpoint is refused",
			peers: []mapstate.Peer{
				{Key: kA, Name: "a", Addresses: addrs("100.64.0.2"), Routes: pfx("198.51.100.0/24")},
				{Key: kB, Name: "b", Addresses: addrs("100.64.0.3"), Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.9:51820")}},
			},
			wantPeers:   []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32")}, {PublicKey: kB, AllowedIPs: pfx("100.64.0.3/32")}},
			wantRefused: []error{routeguard.ErrProtected},
		},
		{
			// An older agent reports its pod bridge's gateway as an
			// endpoint: that must not cost it its own pod CIDR.
			name: "a peer's endpoint inside its own route does not refuse the route",
			peers: []mapstate.Peer{
				{Key: kA, Name: "a", Addresses: addrs("100.64.0.2"), Routes: pfx("10.245.1.0/24"),
					Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.245.1.1:51820"), netip.MustParseAddrPort("203.0.113.7:51820")}},
			},
			wantPeers:  []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32", "10.245.1.0/24")}},
			wantRoutes: pfx("10.245.1.0/24"),
		},
		{
			name:  "a route covering a peer's current direct endpoint is refused",
			peers: []mapstate.Peer{{Key: kA, Name: "a", Addresses: addrs("100.64.0.2"), Routes: pfx("198.51.100.0/24")}},
			paths: map[key.Public]pathsel.Path{kA: direct},
			wantPeers: []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32"),
				Endpoint: direct.Endpoint, Keepalive: keepalive}},
			wantRefused: []error{routeguard.ErrProtected},
		},
		{
			// A map may not make a peer own addresses outside the overlay.
			name:      "peer address outside the overlay is dropped",
			peers:     []mapstate.Peer{{Key: kA, Name: "a", Addresses: addrs("100.64.0.2", "8.8.8.8")}},
			wantPeers: []wgdev.PeerConfig{{PublicKey: kA, AllowedIPs: pfx("100.64.0.2/32")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := makePlan(self, tt.peers, overlay, tt.paths, routePolicy(overlay, tt.peers, tt.paths, tt.u), nil)
			if len(pl.peers) != len(tt.wantPeers) {
				t.Fatalf("got %d peers, want %d", len(pl.peers), len(tt.wantPeers))
			}
			for i, got := range pl.peers {
				if want := tt.wantPeers[i]; !got.Equal(want) {
					t.Errorf("peer %d: got %+v, want %+v", i, got, want)
				}
			}
			if !slices.Equal(pl.routes, tt.wantRoutes) {
				t.Errorf("routes: got %v, want %v", pl.routes, tt.wantRoutes)
			}
			if len(pl.refused) != len(tt.wantRefused) {
				t.Fatalf("refused: got %v, want %d refusals", pl.refused, len(tt.wantRefused))
			}
			for i, r := range pl.refused {
				if !errors.Is(r.err, tt.wantRefused[i]) {
					t.Errorf("refusal %d (%s): got %v, want %v", i, r.route, r.err, tt.wantRefused[i])
				}
			}
			// The node's own addresses carry the overlay prefix's length.
			if want := pfx("100.64.0.1/10", "fd7a::1/128"); !slices.Equal(pl.addrs, want) {
				t.Errorf("addresses: got %v, want %v", pl.addrs, want)
			}
		})
	}
}

// A peer whose first handshake this node waits for gets no keepalive
// (no initiation from here) until the handshake is done; the plan says
// so, to be re-made soon.
func TestMakePlanWaitsForFirstHandshake(t *testing.T) {
	direct := pathsel.Path{Kind: pathsel.Direct, Endpoint: netip.MustParseAddrPort("198.51.100.7:51820")}
	peers := []mapstate.Peer{{Key: kA, Name: "a", Addresses: addrs("100.64.0.2")}, {Key: kB, Name: "b", Addresses: addrs("100.64.0.3")}}
	paths := map[key.Public]pathsel.Path{kA: direct, kB: direct}
	pl := makePlan(mapstate.Self{}, peers, overlay, paths, routePolicy(overlay, peers, paths, underlay{}), func(k key.Public) bool { return k == kB })
	if pl.peers[0].Keepalive != keepalive || pl.peers[1].Keepalive != 0 || !pl.waiting {
		t.Errorf("keepalives %v, %v, waiting %v; want %v, 0, true", pl.peers[0].Keepalive, pl.peers[1].Keepalive, pl.waiting, keepalive)
	}
	if pl.peers[1].Endpoint != direct.Endpoint {
		t.Errorf("the waiting peer lost its endpoint: %v", pl.peers[1].Endpoint)
	}
	pl = makePlan(mapstate.Self{}, peers, overlay, paths, routePolicy(overlay, peers, paths, underlay{}), func(key.Public) bool { return false })
	if pl.peers[1].Keepalive != keepalive || pl.waiting {
		t.Errorf("after the handshake: keepalive %v, waiting %v", pl.peers[1].Keepalive, pl.waiting)
	}
}
