// Package routeguard decides which prefixes may be routed through the
// overlay. The coordinator checks every advertised route and pod CIDR with
// it, and every agent checks its network map again before installing a
// route, so neither a token holder nor a bad (or saved, or forged) map can
// route special-purpose ranges, huge prefixes, or the addresses a node
// needs to reach the coordinator, its relays and its peers underneath the
// overlay.
package routeguard

import (
	"errors"
	"fmt"
	"net/netip"
)

// Errors a refused prefix wraps.
var (
	ErrSpecial   = errors.New("special-purpose range")
	ErrTooShort  = errors.New("prefix too short")
	ErrOverlay   = errors.New("overlaps the overlay")
	ErrProtected = errors.New("covers an address that must stay off the overlay")
	ErrLocal     = errors.New("lies inside a subnet this host is attached to")
	ErrInvalid   = errors.New("not a valid masked prefix")
)

// special are ranges no node may route: "this network", loopback,
// link-local, multicast, reserved and broadcast, and their IPv6
// counterparts (including IPv4-mapped addresses). Private ranges (RFC
// 1918, ULA) and CGNAT space are what sites and pods use, so they pass.
var special = []struct {
	p    netip.Prefix
	name string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network (0.0.0.0/8)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved and broadcast (240.0.0.0/4)"},
	{netip.MustParsePrefix("::/8"), "unspecified, loopback and IPv4-mapped (::/8)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)"},
}

// Default minimum prefix lengths: nothing broader may be routed.
const (
	DefaultMinBits4 = 8
	DefaultMinBits6 = 32
)

// Policy is what a prefix is checked against. The zero value refuses
// special-purpose ranges and the default minimum lengths only.
type Policy struct {
	// MinBits4 and MinBits6 are the shortest prefix lengths allowed
	// (0: the defaults).
	MinBits4, MinBits6 int
	// Overlay are the overlay prefixes: routes must not overlap them.
	Overlay []netip.Prefix
	// Protected are addresses or prefixes no route may cover or overlap:
	// the coordinator, relays, STUN servers, underlay endpoints, gateways.
	Protected []netip.Prefix
	// Local are subnets the host is attached to: a route inside one would
	// claim a neighbour. A broader route passes (the host's own, more
	// specific route keeps its subnet local).
	Local []netip.Prefix
}

// Check returns nil if r may be routed, or an error wrapping one of the
// errors above that names the reason.
func (p *Policy) Check(r netip.Prefix) error {
	if !r.IsValid() || r != r.Masked() {
		return fmt.Errorf("%s: %w", r, ErrInvalid)
	}
	for _, s := range special {
		if s.p.Overlaps(r) {
			return fmt.Errorf("%s overlaps %s: %w", r, s.name, ErrSpecial)
		}
	}
	if min := p.minBits(r.Addr().Is4()); r.Bits() < min {
		return fmt.Errorf("%s is broader than /%d: %w", r, min, ErrTooShort)
	}
	for _, o := range p.Overlay {
		if o.Overlaps(r) {
			return fmt.Errorf("%s overlaps the overlay prefix %s: %w", r, o, ErrOverlay)
		}
	}
	for _, q := range p.Protected {
		if q.Overlaps(r) {
			return fmt.Errorf("%s covers %s: %w", r, describe(q), ErrProtected)
		}
	}
	for _, q := range p.Local {
		if r.Bits() >= q.Bits() && q.Contains(r.Addr()) {
			return fmt.Errorf("%s is inside %s: %w", r, q, ErrLocal)
		}
	}
	return nil
}

func (p *Policy) minBits(v4 bool) int {
	if v4 {
		if p.MinBits4 > 0 {
			return p.MinBits4
		}
		return DefaultMinBits4
	}
	if p.MinBits6 > 0 {
		return p.MinBits6
	}
	return DefaultMinBits6
}

// Validate checks the policy's own settings.
func (p *Policy) Validate() error {
	if p.MinBits4 < 0 || p.MinBits4 > 32 {
		return fmt.Errorf("minimum IPv4 route length /%d: want 0 to 32", p.MinBits4)
	}
	if p.MinBits6 < 0 || p.MinBits6 > 128 {
		return fmt.Errorf("minimum IPv6 route length /%d: want 0 to 128", p.MinBits6)
	}
	return nil
}

// Host returns the single-address prefix of a, for Protected.
func Host(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

func describe(q netip.Prefix) string {
	if q.IsSingleIP() {
		return q.Addr().String()
	}
	return q.String()
}
