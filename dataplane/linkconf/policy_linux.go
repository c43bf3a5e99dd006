package linkconf

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Policy routing keeps edgewire's own traffic off the overlay and the
// overlay's routes out of everything the host already routes:
//
//	5300: fwmark Mark/Mark            lookup main   (edgewire's own sockets)
//	5310: lookup main suppress_prefixlength 0       (the host's specific routes)
//	5320: lookup Table                              (routes through the overlay)
//
// Overlay routes live in their own table. A packet the host routes more
// specifically than its default route (its LAN, its gateway, a container
// bridge) never reaches that table, so a peer's route cannot capture it;
// everything else that an overlay route covers goes through the overlay.
// Sockets that carry the overlay itself (WireGuard's UDP socket, the
// coordinator stream, relay connections and probes) carry Mark and always
// use the main table, so no route in a network map can make the overlay
// tunnel through itself or cut the node off its coordinator and relays.
// This is the scheme Tailscale uses on Linux (its own numbers differ).
const (
	// DefaultTable is the routing table of overlay routes.
	DefaultTable = 51820
	// Mark is the socket mark (a single bit, matched under itself as
	// the mask) of edgewire's own sockets. kube-proxy uses 0x4000 and
	// 0x8000, Cilium 0xf00 and 0xe00; Calico's default mask covers the
	// upper 16 bits, where this bit sits, so Calico nodes need Calico's
	// iptablesMarkMask set to leave it alone.
	Mark = uint32(0x100000)

	prioMark     = 5300
	prioSuppress = 5310
	prioTable    = 5320
)

// rules are the policy rules for one table, in both address families.
func rules(table int) []*netlink.Rule {
	var out []*netlink.Rule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		mark := netlink.NewRule()
		mask := Mark
		mark.Family, mark.Priority, mark.Table, mark.Mark, mark.Mask = fam, prioMark, unix.RT_TABLE_MAIN, Mark, &mask
		suppress := netlink.NewRule()
		suppress.Family, suppress.Priority, suppress.Table, suppress.SuppressPrefixlen = fam, prioSuppress, unix.RT_TABLE_MAIN, 0
		overlay := netlink.NewRule()
		overlay.Family, overlay.Priority, overlay.Table = fam, prioTable, table
		out = append(out, mark, suppress, overlay)
	}
	return out
}

// InstallRules adds the policy rules for table (replacing rules at their
// priorities: a crashed agent's leftovers, or another table number).
func InstallRules(table int) error {
	if err := RemoveRules(); err != nil {
		return err
	}
	for _, r := range rules(table) {
		if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			if r.Family == unix.AF_INET6 && (errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP)) {
				continue // a host without IPv6
			}
			return fmt.Errorf("add policy rule %d: %w", r.Priority, err)
		}
	}
	return nil
}

// RemoveRules deletes every rule at edgewire's priorities.
func RemoveRules() error {
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		have, err := netlink.RuleList(fam)
		if err != nil {
			if fam == unix.AF_INET6 && (errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP)) {
				continue
			}
			return fmt.Errorf("list policy rules: %w", err)
		}
		for _, r := range have {
			switch r.Priority {
			case prioMark, prioSuppress, prioTable:
				r := r
				if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("remove policy rule %d: %w", r.Priority, err)
				}
			}
		}
	}
	return nil
}

// MarkSocket is a net.Dialer/ListenConfig Control function that sets Mark
// on a socket, so its traffic bypasses overlay routes.
func MarkSocket(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(Mark))
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set socket mark: %w", serr)
	}
	return nil
}
