package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/edgewire/edgewire/dataplane/linkconf"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/node/pathsel"
)

// The agent checks every route of its network map again before it
// installs it: the coordinator refuses bad routes, but a map can also
// come from disk (saved before an upgrade, or edited), and no map may cut
// the node off the addresses it needs underneath the overlay. A refused
// route gets neither a kernel route nor WireGuard allowed IPs.

// markedDial opens edgewire's own TCP connections (coordinator, relays)
// with linkconf.Mark, so that they use the main routing table whatever
// routes the overlay holds.
func markedDial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: 30 * time.Second, Control: linkconf.MarkSocket}
	return d.DialContext(ctx, network, addr)
}

// resolveTTL is how long a resolved coordinator, relay or STUN name is
// trusted before it is looked up again; resolveTimeout bounds a lookup.
const (
	resolveTTL     = 5 * time.Minute
	resolveTimeout = 2 * time.Second
)

// hostCache resolves the names of the coordinator, relays and STUN
// servers for the route check. A name that stops resolving keeps its
// last addresses.
type hostCache struct {
	mu    sync.Mutex // guards hosts
	hosts map[string]resolved
}

type resolved struct {
	addrs []netip.Addr
	at    time.Time
}

func (c *hostCache) lookup(host string) []netip.Addr {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}
	}
	c.mu.Lock()
	r, ok := c.hosts[host]
	c.mu.Unlock()
	if ok && time.Since(r.at) < resolveTTL {
		return r.addrs
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil && ok {
		return r.addrs
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hosts == nil {
		c.hosts = map[string]resolved{}
	}
	if len(c.hosts) > 256 {
		clear(c.hosts) // names come from the map; bound them anyway
	}
	c.hosts[host] = resolved{addrs: addrs, at: time.Now()}
	return addrs
}

// routePolicy is what peer routes must pass on this node: the overlay
// prefixes, and no route may cover the coordinator, a relay, a STUN
// server, a peer's underlay endpoint, a default gateway or a subnet the
// host is attached to (its LAN: a peer's route must not claim a neighbour).
func (a *Agent) routePolicy(prefixes []netip.Prefix, peers []mapstate.Peer, stun []string, regions []string) *routeguard.Policy {
	p := &routeguard.Policy{Overlay: prefixes}
	protect := func(addr netip.Addr) {
		if addr.IsValid() {
			p.Protected = append(p.Protected, routeguard.Host(addr))
		}
	}
	hosts := append(append([]string{a.enr.Coordinator}, stun...), regions...)
	for _, hp := range hosts {
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			host = hp
		}
		for _, addr := range a.hosts.lookup(host) {
			protect(addr)
		}
	}
	for _, peer := range peers {
		for _, ep := range peer.Endpoints {
			protect(ep.Addr())
		}
		if path := a.trav.Path(peer.Key); path.Kind == pathsel.Direct {
			protect(path.Endpoint.Addr())
		}
	}
	gws, subnets, err := linkconf.Underlay(a.cfg.Interface)
	if err != nil {
		a.log.Warn("list host routes for the route check", "err", err)
	}
	p.Protected = append(p.Protected, gws...)
	p.Local = subnets
	return p
}

// refusedRoutes remembers which refusals were logged, so a map that keeps
// a bad route logs it once, not at every reconcile.
type refusedRoutes struct {
	mu     sync.Mutex // guards logged
	logged map[string]bool
}

// filter returns the routes of peer that pol allows, logging new refusals.
func (a *Agent) filterRoutes(pol *routeguard.Policy, peer mapstate.Peer) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(peer.Routes))
	for _, r := range peer.Routes {
		err := pol.Check(r)
		if err == nil {
			out = append(out, r)
			continue
		}
		key := fmt.Sprintf("%x %s", peer.Key[:8], r)
		a.refused.mu.Lock()
		if a.refused.logged == nil || len(a.refused.logged) > 4096 {
			a.refused.logged = map[string]bool{}
		}
		first := !a.refused.logged[key]
		a.refused.logged[key] = true
		a.refused.mu.Unlock()
		if first {
			a.log.Warn("not installing a peer's route", "peer", peer.Name, "route", r, "err", err)
		}
	}
	return out
}

// installRules sets up policy routing (see linkconf): overlay routes in
// their own table, edgewire's own marked sockets on the main table.
func installRules(table int) (func(), error) {
	if err := linkconf.InstallRules(table); err != nil {
		return func() {}, err
	}
	return func() { linkconf.RemoveRules() }, nil
}
