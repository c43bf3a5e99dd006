// Package svcpath decides how this node reaches each Service endpoint.
// An endpoint's address alone does not say where it is: every site's
// default bridge may hand out 172.17.0.2, and every site's LAN may number
// its host 192.168.1.10. The endpoint's node name does, so the node name
// wins over the address:
//
//   - local: the endpoint's node is this node; DNAT to its address.
//   - l3: its node routes a prefix covering the address over the overlay
//     (a pod CIDR, an advertised route); DNAT to the address.
//   - host: a hostNetwork endpoint (its node's own address); DNAT to
//     that node's overlay address, the same port.
//   - forward: its node is in the overlay but the address is not routable
//     there (a runtime's default bridge, a CNI range nobody advertises);
//     the connection is handed to that node's agent, which connects
//     locally (package svcfwd). DNAT to this node's forwarding port.
//   - address: no node name (an EndpointSlice written by hand for a
//     host outside the cluster); DNAT to the address as kube-proxy does.
//   - none: left out, with the reason (its node is not in the overlay and
//     no route covers the address; its node is offline for a forward; an
//     IPv6-only endpoint, which the rules do not program yet).
//
// Resolve is pure; Rewrite turns its decisions into the tables the DNAT
// rules and the DNS server serve.
package svcpath

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/edgewire/edgewire/types/services"
)

// Path is how an endpoint is reached.
type Path string

const (
	Local   Path = "local"
	L3      Path = "l3"
	Host    Path = "host"
	Forward Path = "forward"
	Address Path = "address"
	None    Path = "none"
)

// Node is a node of the overlay as the map shows it.
type Node struct {
	Name     string         // edgewire node name
	KubeNode string         // the Kubernetes Node it is verified to be, "" if none
	Overlay  netip.Addr     // its IPv4 overlay address (invalid if none)
	Routes   []netip.Prefix // the prefixes this node routes to it
	Online   bool
}

// Decision is how one endpoint is reached.
type Decision struct {
	Service  string     // namespace/name
	Endpoint netip.Addr // the endpoint's (first) address
	KubeNode string     // the endpoint's node name
	Node     string     // the overlay node it is reached through, "" if none
	Path     Path
	// Target is the address DNAT sends to: the endpoint (local, l3,
	// address), its node's overlay address (host, forward).
	Target netip.Addr
	Why    string // one line for `edgewire services`
}

// Resolve decides each endpoint of t, in the table's order. self is this
// node; peers the others.
func Resolve(t *services.Table, self Node, peers []Node) []Decision {
	byKube := map[string]*Node{}
	if self.KubeNode != "" {
		byKube[self.KubeNode] = &self
	}
	for i := range peers {
		if k := peers[i].KubeNode; k != "" {
			byKube[k] = &peers[i]
		}
	}
	var out []Decision
	for _, s := range t.All() {
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			d := decide(e, &self, byKube, peers)
			d.Service = s.Key()
			out = append(out, d)
		}
	}
	return out
}

func decide(e *services.Endpoint, self *Node, byKube map[string]*Node, peers []Node) Decision {
	d := Decision{KubeNode: e.NodeName}
	a, ok := firstV4(e.Addresses)
	if !ok {
		d.Endpoint = e.Addresses[0]
		d.Path, d.Why = None, "IPv6 endpoints are not programmed"
		return d
	}
	d.Endpoint = a
	if e.NodeName == "" {
		if n := router(a, self, peers); n != nil {
			d.Node, d.Path, d.Target, d.Why = n.Name, L3, a, fmt.Sprintf("no node name; %s routes it", n.Name)
			return d
		}
		d.Path, d.Target, d.Why = Address, a, "no node name: sent to the address as given"
		return d
	}
	n := byKube[e.NodeName]
	if n == nil {
		// A node outside the overlay (a cloud node whose CNI range a
		// gateway node advertises) is reachable if someone routes it.
		if r := router(a, self, peers); r != nil {
			d.Node, d.Path, d.Target, d.Why = r.Name, L3, a, fmt.Sprintf("node %s is not in the overlay; %s routes the address", e.NodeName, r.Name)
			return d
		}
		d.Path, d.Why = None, fmt.Sprintf("node %s is not in the overlay and no node routes %s", e.NodeName, a)
		return d
	}
	d.Node = n.Name
	switch {
	case n == self:
		d.Path, d.Target, d.Why = Local, a, "on this node"
	case covers(n.Routes, a):
		d.Path, d.Target, d.Why = L3, a, "its node routes the address"
	case !n.Overlay.IsValid():
		d.Path, d.Why = None, fmt.Sprintf("node %s has no IPv4 overlay address", n.Name)
	case e.HostNetwork:
		d.Path, d.Target, d.Why = Host, n.Overlay, "hostNetwork: through its node's overlay address"
	case !n.Online:
		d.Path, d.Why = None, fmt.Sprintf("address not routable and node %s is offline (forwarding needs its agent)", n.Name)
	default:
		d.Path, d.Target, d.Why = Forward, n.Overlay, "address not routable over the overlay: forwarded by its node's agent"
	}
	return d
}

func firstV4(addrs []netip.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func covers(routes []netip.Prefix, a netip.Addr) bool {
	for _, p := range routes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// router returns the node with the longest route covering a, self
// included, or nil.
func router(a netip.Addr, self *Node, peers []Node) *Node {
	var best *Node
	bits := -1
	try := func(n *Node) {
		for _, p := range n.Routes {
			if p.Contains(a) && p.Bits() > bits {
				best, bits = n, p.Bits()
			}
		}
	}
	try(self)
	for i := range peers {
		try(&peers[i])
	}
	return best
}

// Forwarding is one endpoint port a forward decision needs: the
// endpoint on its node, reached through Via (the node's overlay
// address).
type Forwarding struct {
	Via   netip.Addr
	To    netip.AddrPort
	Proto services.Protocol
}

// Forwardings lists what the forward decisions need, once each, sorted.
func Forwardings(t *services.Table, ds []Decision) []Forwarding {
	seen := map[Forwarding]bool{}
	var out []Forwarding
	i := 0
	for _, s := range t.All() {
		for _, e := range s.Endpoints {
			d := ds[i]
			i++
			if d.Path != Forward {
				continue
			}
			for _, p := range s.Ports {
				port, ok := targetPort(&e, p)
				if !ok {
					continue
				}
				f := Forwarding{Via: d.Target, To: netip.AddrPortFrom(d.Endpoint, port), Proto: p.Protocol}
				if !seen[f] {
					seen[f] = true
					out = append(out, f)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].less(out[j]) })
	return out
}

func (f Forwarding) less(o Forwarding) bool {
	if c := f.Via.Compare(o.Via); c != 0 {
		return c < 0
	}
	if c := f.To.Compare(o.To); c != 0 {
		return c < 0
	}
	return f.Proto < o.Proto
}

// targetPort is an endpoint's port for Service port p: by name, or the
// only one for an unnamed port.
func targetPort(e *services.Endpoint, p services.Port) (uint16, bool) {
	port, ok := e.Ports[p.Name]
	return port, ok && port != 0
}

// Rewrite returns the tables the node serves from t and Resolve's
// decisions ds:
//
//   - rules, for the DNAT rules: each endpoint's address replaced by its
//     target; a forwarded endpoint becomes local (this node's forwarding
//     address local, with the ports ports gives it, one per Service port);
//     endpoints left out (none, or a forward without a port) are dropped.
//   - dns, for the DNS server's headless answers: endpoints reachable by
//     address (local, l3, address), hostNetwork ones as their node's
//     overlay address; forwarded and left-out ones are not answered,
//     since their addresses would reach the wrong host or none.
//
// The Services are copies; t is not modified.
func Rewrite(t *services.Table, ds []Decision, local netip.Addr, ports func(Forwarding) (uint16, bool)) (rules, dns *services.Table, err error) {
	var rs, ns []*services.Service
	i := 0
	for _, s := range t.All() {
		r, n := *s, *s
		r.Endpoints, n.Endpoints = nil, nil
		for _, e := range s.Endpoints {
			d := ds[i]
			i++
			switch d.Path {
			case Local, L3, Address, Host:
				re := e
				re.Addresses = []netip.Addr{d.Target}
				r.Endpoints = appendUnique(r.Endpoints, re)
				n.Endpoints = append(n.Endpoints, re)
			case Forward:
				re := e
				re.Addresses = []netip.Addr{local}
				re.Ports = map[string]uint16{}
				for _, p := range s.Ports {
					tp, ok := targetPort(&e, p)
					if !ok {
						continue
					}
					if lp, ok := ports(Forwarding{Via: d.Target, To: netip.AddrPortFrom(d.Endpoint, tp), Proto: p.Protocol}); ok {
						re.Ports[p.Name] = lp
					}
				}
				if len(re.Ports) > 0 && local.IsValid() {
					r.Endpoints = appendUnique(r.Endpoints, re)
				}
			}
		}
		rs, ns = append(rs, &r), append(ns, &n)
	}
	if rules, err = services.NewTable(rs); err != nil {
		return nil, nil, err
	}
	if dns, err = services.NewTable(ns); err != nil {
		return nil, nil, err
	}
	return rules, dns, nil
}

// appendUnique appends e unless an endpoint with the same address and
// ports is there (two decisions that reach the same target are one
// endpoint to the rules).
func appendUnique(eps []services.Endpoint, e services.Endpoint) []services.Endpoint {
	for _, o := range eps {
		if o.Addresses[0] == e.Addresses[0] && maps.Equal(o.Ports, e.Ports) {
			return eps
		}
	}
	return append(eps, e)
}

// Count returns how many endpoints take each path.
func Count(ds []Decision) map[Path]int {
	out := map[Path]int{}
	for _, p := range allPaths {
		out[p] = 0
	}
	for _, d := range ds {
		out[d.Path]++
	}
	return out
}

// Paths lists every path, for metrics labels.
func Paths() []Path { return slices.Clone(allPaths) }

var allPaths = []Path{Local, L3, Host, Forward, Address, None}
