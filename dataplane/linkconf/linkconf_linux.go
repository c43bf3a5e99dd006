// Package linkconf sets an interface's addresses, state and routes with
// netlink, as diffs: it adds what is missing and removes only what it
// added before (routes carry the edgewire route protocol number), so it
// never fights other owners of the routing table.
package linkconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks routes edgewire installs ("ew" in rt_protos terms is
// free; any value above RTPROT_STATIC that no routing daemon uses will do).
const RouteProtocol = netlink.RouteProtocol(0x65)

// Apply brings name up and makes its addresses exactly addrs and its
// edgewire routes exactly routes (each a prefix routed out of name, in
// routing table table; see InstallRules). Edgewire routes elsewhere (an
// older version's, in the main table) are removed.
func Apply(name string, table int, addrs, routes []netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if err := applyAddrs(link, addrs); err != nil {
		return err
	}
	return applyRoutes(link, table, routes)
}

func applyAddrs(link netlink.Link, want []netip.Prefix) error {
	have, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	wantSet := map[netip.Prefix]bool{}
	for _, p := range want {
		wantSet[p] = true
	}
	for _, a := range have {
		p, ok := toPrefix(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if wantSet[p] {
			delete(wantSet, p)
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove address %s: %w", p, err)
		}
	}
	for p := range wantSet {
		addr := &netlink.Addr{IPNet: toIPNet(p)}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	return nil
}

func applyRoutes(link netlink.Link, table int, want []netip.Prefix) error {
	wantSet := map[netip.Prefix]bool{}
	for _, p := range want {
		wantSet[p.Masked()] = true
	}
	// Table unspecified with RT_FILTER_TABLE: every table.
	filter := &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: RouteProtocol, Table: unix.RT_TABLE_UNSPEC}
	have, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range have {
		p, ok := toPrefix(r.Dst)
		if ok && wantSet[p] && r.Table == table {
			delete(wantSet, p)
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route %v: %w", r.Dst, err)
		}
	}
	for p := range wantSet {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: toIPNet(p), Protocol: RouteProtocol, Scope: netlink.SCOPE_LINK, Table: table}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s: %w", p, err)
		}
	}
	return nil
}

// Underlay lists what the host reaches without the overlay interface
// exclude: the gateways of its default routes (as host prefixes) and the
// subnets its other interfaces are attached to, from the main table. A
// peer's route must not cover the former nor lie inside the latter.
func Underlay(exclude string) (gateways, subnets []netip.Prefix, err error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, fmt.Errorf("list routes: %w", err)
	}
	own := -1
	if l, err := netlink.LinkByName(exclude); err == nil {
		own = l.Attrs().Index
	}
	for _, r := range routes {
		if r.LinkIndex == own || r.Protocol == RouteProtocol {
			continue
		}
		if r.Dst == nil || isDefault(r.Dst) {
			if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
				gw = gw.Unmap()
				gateways = append(gateways, netip.PrefixFrom(gw, gw.BitLen()))
			}
			continue
		}
		if dst, ok := toPrefix(r.Dst); ok && r.Gw == nil && r.Scope == netlink.SCOPE_LINK && !dst.Addr().IsLinkLocalUnicast() {
			subnets = append(subnets, dst.Masked())
		}
	}
	return gateways, subnets, nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// HostAddress puts addr on a dummy interface named name (created if
// needed), or, where the kernel has no dummy driver, on the loopback
// interface. The agent's DNS and SOCKS5 listen there: an address that
// exists only on this host. The returned function removes what was added.
func HostAddress(name string, addr netip.Prefix) (remove func() error, err error) {
	link, err := netlink.LinkByName(name)
	created := false
	if err != nil {
		err = netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
		switch {
		case err == nil || errors.Is(err, unix.EEXIST):
			created = err == nil
			if link, err = netlink.LinkByName(name); err != nil {
				return nil, fmt.Errorf("find %s: %w", name, err)
			}
		case errors.Is(err, unix.EOPNOTSUPP):
			// No dummy driver (a minimal kernel): use loopback.
			if link, err = netlink.LinkByName("lo"); err != nil {
				return nil, fmt.Errorf("find lo: %w", err)
			}
		default:
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
	} else if link.Type() != "dummy" {
		return nil, fmt.Errorf("interface %s exists and is a %s, not a dummy", name, link.Type())
	}
	a := &netlink.Addr{IPNet: toIPNet(addr)}
	if link.Attrs().Name == "lo" {
		a.Scope = int(netlink.SCOPE_HOST)
	}
	if err := netlink.AddrReplace(link, a); err != nil {
		return nil, fmt.Errorf("add %s to %s: %w", addr, link.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
	}
	return func() error {
		if created {
			return netlink.LinkDel(link)
		}
		if err := netlink.AddrDel(link, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return err
		}
		return nil
	}, nil
}
