package agent

import (
	"net/netip"
	"testing"

	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/types/key"
)

// TestPingTarget: ping takes a peer's name or any of its overlay
// addresses, and pings the address given.
func TestPingTarget(t *testing.T) {
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	peers := map[key.Public]mapstate.Peer{
		{1}: {Key: key.Public{1}, Name: "db", Addresses: addrs("100.64.0.8", "fd7a:115c:a1e0::8")},
		{2}: {Key: key.Public{2}, Name: "cam-7", Addresses: addrs("100.64.0.9")},
		{3}: {Key: key.Public{3}, Name: "no-address"},
	}
	for _, tc := range []struct {
		target   string
		wantName string // "": no peer
		wantAddr string
	}{
		{"db", "db", "100.64.0.8"},
		{"cam-7", "cam-7", "100.64.0.9"},
		{"100.64.0.9", "cam-7", "100.64.0.9"},
		{"fd7a:115c:a1e0::8", "db", "fd7a:115c:a1e0::8"},
		{"::ffff:100.64.0.8", "db", "100.64.0.8"},
		{"100.64.0.10", "", ""},
		{"no-address", "", ""},
		{"DB", "", ""},
		{"", "", ""},
	} {
		p, addr, ok := pingTarget(peers, tc.target)
		if tc.wantName == "" {
			if ok {
				t.Errorf("%q: got peer %s at %s, want none", tc.target, p.Name, addr)
			}
			continue
		}
		if !ok || p.Name != tc.wantName || addr.String() != tc.wantAddr {
			t.Errorf("%q: got peer %q at %s (found %v), want %q at %s", tc.target, p.Name, addr, ok, tc.wantName, tc.wantAddr)
		}
	}
}
