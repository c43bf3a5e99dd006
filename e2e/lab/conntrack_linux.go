package lab

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// UDPMappings returns the distinct public addresses the site's router now
// maps the UDP source inner to, read from its conntrack table: the
// reply-direction destination of every UDP entry whose original source is
// inner and which the router translated to its WAN address (PublicIP).
// inner is the source as this router sees it: a node's LAN address and
// port or, at the outer router of a double NAT, the inner router's WAN
// address and the port it mapped the node to. An endpoint-independent NAT
// has one mapping per inner source; a symmetric one may have one per
// destination. The result is sorted and empty when nothing is mapped.
func (s *Site) UDPMappings(ctx context.Context, inner netip.AddrPort) ([]netip.AddrPort, error) {
	// stdout alone: conntrack prints its summary on stderr, which a
	// combined pipe can put in the middle of a flow line.
	out, err := s.router.Output(ctx, "conntrack", "-L", "-p", "udp")
	if err != nil {
		return nil, fmt.Errorf("site %s: list conntrack: %w", s.router.name, err)
	}
	flows, err := parseConntrack(out)
	if err != nil {
		return nil, fmt.Errorf("site %s: %w", s.router.name, err)
	}
	var maps []netip.AddrPort
	for _, f := range flows {
		if f.origSrc == inner && f.replyDst.Addr() == s.PublicIP() && !slices.Contains(maps, f.replyDst) {
			maps = append(maps, f.replyDst)
		}
	}
	slices.SortFunc(maps, netip.AddrPort.Compare)
	return maps, nil
}

// RemapUDP makes the site's router map UDP from its LAN to ports lo-hi of
// its WAN address (other protocols keep the plain mapping; a symmetric
// site stays symmetric) and then forgets every existing mapping
// (conntrack -F), as a NAT that reboots or loses its table does: peers see
// the site's nodes from new ports, the NAT rebinding case. It replaces the
// router's whole nat POSTROUTING chain, which the lab owns.
func (s *Site) RemapUDP(ctx context.Context, lo, hi int) error {
	if s.kind == NATNone {
		return fmt.Errorf("site %s: remap udp: site does no NAT", s.router.name)
	}
	if lo < 1 || hi > 65535 || lo > hi {
		return fmt.Errorf("site %s: remap udp: port range %d-%d, want 1 <= lo <= hi <= 65535", s.router.name, lo, hi)
	}
	nat := []string{"iptables", "-w", "-t", "nat"}
	for _, argv := range [][]string{
		slices.Concat(nat, []string{"-F", "POSTROUTING"}),
		slices.Concat(nat, []string{"-A", "POSTROUTING"}, s.masqRule("-p", "udp"), []string{"--to-ports", fmt.Sprintf("%d-%d", lo, hi)}),
		slices.Concat(nat, []string{"-A", "POSTROUTING"}, s.masqRule()),
		{"conntrack", "-F"},
	} {
		if _, err := s.router.Exec(ctx, argv...); err != nil {
			return fmt.Errorf("site %s: remap udp: %w", s.router.name, err)
		}
	}
	return nil
}

// masqRule is the rule spec (without table and chain) of the site's
// source NAT for its kind, with match inserted before the target.
func (s *Site) masqRule(match ...string) []string {
	r := append([]string{"-o", "wan", "-s", s.lan.String()}, match...)
	r = append(r, "-j", "MASQUERADE")
	if s.kind == NATSymmetric {
		r = append(r, "--random-fully")
	}
	return r
}

// ctFlow is one conntrack entry's original and reply tuples.
type ctFlow struct {
	origSrc, origDst   netip.AddrPort
	replySrc, replyDst netip.AddrPort
}

// parseConntrack reads `conntrack -L` output (default or -o extended):
// per line, the first src=/dst=/sport=/dport= group is the original
// direction, the second the reply. Lines without src= (the summary
// conntrack prints) are skipped.
func parseConntrack(out string) ([]ctFlow, error) {
	var flows []ctFlow
	for line := range strings.Lines(out) {
		if !strings.Contains(line, "src=") {
			continue
		}
		var tup [2]struct {
			src, dst     netip.Addr
			sport, dport uint16
		}
		n := -1 // tuple index, advanced by each src=
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok || (n < 0 && k != "src") {
				continue
			}
			if k == "src" {
				n++
			}
			if n > 1 {
				return nil, fmt.Errorf("conntrack line %q: more than two tuples", strings.TrimSpace(line))
			}
			var err error
			switch k {
			case "src":
				tup[n].src, err = netip.ParseAddr(v)
			case "dst":
				tup[n].dst, err = netip.ParseAddr(v)
			case "sport", "dport":
				var p int
				if _, err = fmt.Sscan(v, &p); err == nil && (p < 0 || p > 65535) {
					err = fmt.Errorf("port %d out of range", p)
				}
				if k == "sport" {
					tup[n].sport = uint16(p)
				} else {
					tup[n].dport = uint16(p)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("conntrack line %q: %s: %w", strings.TrimSpace(line), f, err)
			}
		}
		if n != 1 || !tup[0].dst.IsValid() || !tup[1].dst.IsValid() {
			return nil, fmt.Errorf("conntrack line %q: want an original and a reply tuple", strings.TrimSpace(line))
		}
		flows = append(flows, ctFlow{
			origSrc:  netip.AddrPortFrom(tup[0].src, tup[0].sport),
			origDst:  netip.AddrPortFrom(tup[0].dst, tup[0].dport),
			replySrc: netip.AddrPortFrom(tup[1].src, tup[1].sport),
			replyDst: netip.AddrPortFrom(tup[1].dst, tup[1].dport),
		})
	}
	return flows, nil
}
