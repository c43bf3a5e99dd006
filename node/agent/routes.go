package agent

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/edgewire/edgewire/node/control"
	"github.com/edgewire/edgewire/node/homerelay"
	"github.com/edgewire/edgewire/types/key"
)

// The agent checks every route of its network map again before it
// installs it: the coordinator refuses bad routes, but a map can also
// come from disk (saved before an upgrade, or edited), and no map may cut
// the node off the addresses it needs underneath the overlay. A refused
// route gets neither a kernel route nor WireGuard allowed IPs.

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

// underlay gathers what the node must reach without the overlay: the
// coordinator's, STUN servers' and relays' addresses (names resolved,
// cached) and the host's gateways and attached subnets.
func (a *Agent) underlay(stun []string, regions []homerelay.Region) underlay {
	var u underlay
	hosts, _ := control.Addrs(a.enr.Coordinator)
	hosts = append(hosts, stun...)
	for _, r := range regions {
		hosts = append(hosts, r.Addr)
	}
	for _, hp := range hosts {
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			host = hp
		}
		u.protected = append(u.protected, a.hosts.lookup(host)...)
	}
	var err error
	if u.gateways, u.subnets, err = a.host.Underlay(a.cfg.Interface); err != nil {
		a.log.Warn("list host routes for the route check", "err", err)
	}
	return u
}

// refusedRoutes remembers which refusals were logged, so a map that keeps
// a bad route logs it once, not at every reconcile.
type refusedRoutes struct {
	mu     sync.Mutex // guards logged
	logged map[string]bool
}

// logRefusals logs refused routes, each once while it stays refused.
func (a *Agent) logRefusals(rs []refusal) {
	a.refused.mu.Lock()
	defer a.refused.mu.Unlock()
	if a.refused.logged == nil || len(a.refused.logged) > 4096 {
		a.refused.logged = map[string]bool{}
	}
	for _, r := range rs {
		k := r.peer.Key.Short() + " " + r.route.String()
		if a.refused.logged[k] {
			continue
		}
		a.refused.logged[k] = true
		a.log.Warn("not installing a peer's route", "peer", key.Named{Name: r.peer.Name, Key: r.peer.Key}, "route", r.route, "err", r.err)
	}
}
