package routeguard

import (
	"errors"
	"net/netip"
	"testing"
)

func TestCheck(t *testing.T) {
	p := &Policy{
		Overlay:   []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		Protected: []netip.Prefix{Host(netip.MustParseAddr("203.0.113.10")), netip.MustParsePrefix("192.168.7.0/24")},
	}
	tests := []struct {
		route string
		want  error
	}{
		{"10.42.0.0/16", nil},
		{"10.0.0.0/8", nil},
		{"172.16.5.0/24", nil},
		{"fd00:42::/48", nil},
		{"198.51.100.7/32", nil},
		{"0.0.0.0/0", ErrSpecial},
		{"128.0.0.0/1", ErrSpecial},  // covers multicast and reserved
		{"0.0.0.0/1", ErrSpecial},    // covers 0/8 and loopback
		{"128.0.0.0/3", ErrTooShort}, // no special range, but /3
		{"127.0.0.0/8", ErrSpecial},  //
		{"127.0.0.1/32", ErrSpecial}, //
		{"169.254.96.16/32", ErrSpecial},
		{"224.0.0.0/4", ErrSpecial},
		{"255.255.255.255/32", ErrSpecial},
		{"::/0", ErrSpecial},
		{"::1/128", ErrSpecial},
		{"::ffff:10.0.0.0/104", ErrSpecial},
		{"fe80::/64", ErrSpecial},
		{"ff02::/16", ErrSpecial},
		{"2000::/3", ErrTooShort},
		{"100.64.0.0/16", ErrOverlay},
		{"100.0.0.0/8", ErrOverlay},
		{"203.0.113.0/24", ErrProtected},
		{"203.0.113.10/32", ErrProtected},
		{"192.168.0.0/16", ErrProtected},
		{"192.168.7.128/25", ErrProtected},
	}
	for _, tc := range tests {
		t.Run(tc.route, func(t *testing.T) {
			err := p.Check(netip.MustParsePrefix(tc.route))
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("Check(%s) = %v, want %v", tc.route, err, tc.want)
			}
		})
	}
	local := &Policy{Local: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}}
	for route, want := range map[string]error{
		"192.168.1.5/32": ErrLocal, // a neighbour
		"192.168.1.0/24": ErrLocal, // the whole LAN
		"192.168.0.0/16": nil,      // broader: the LAN's own route still wins
		"192.168.2.0/24": nil,
	} {
		if err := local.Check(netip.MustParsePrefix(route)); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("Check(%s) with a local subnet = %v, want %v", route, err, want)
		}
	}
	if err := p.Check(netip.MustParsePrefix("10.1.2.3/8")); !errors.Is(err, ErrInvalid) {
		t.Errorf("unmasked prefix: got %v, want ErrInvalid", err)
	}
	if err := p.Check(netip.Prefix{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("zero prefix: got %v, want ErrInvalid", err)
	}
}

func TestMinBits(t *testing.T) {
	p := &Policy{MinBits4: 16, MinBits6: 48}
	for _, tc := range []struct {
		route string
		ok    bool
	}{{"10.0.0.0/8", false}, {"10.1.0.0/16", true}, {"fd00::/32", false}, {"fd00:1:2::/48", true}} {
		if err := p.Check(netip.MustParsePrefix(tc.route)); (err == nil) != tc.ok {
			t.Errorf("Check(%s) = %v, want ok=%v", tc.route, err, tc.ok)
		}
	}
	for _, bad := range []Policy{{MinBits4: -1}, {MinBits4: 33}, {MinBits6: 129}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", bad)
		}
	}
}
