package agent

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

func TestPreflight(t *testing.T) {
	ok := hostChecks{
		capEff:    func() (uint64, error) { return 1<<capNetAdmin | 1<<capNetRaw, nil },
		openTUN:   func() error { return nil },
		listenUDP: func(netip.AddrPort) error { return nil },
		sysctl:    func(string) (string, error) { return "1", nil },
	}
	inUse := func(port uint16) func(netip.AddrPort) error {
		return func(ap netip.AddrPort) error {
			if ap.Port() == port {
				return syscall.EADDRINUSE
			}
			if ap.Addr().Is4() && !ap.Addr().IsUnspecified() {
				return syscall.EADDRNOTAVAIL
			}
			return nil
		}
	}
	cfg := Config{ListenPort: 51820, DNSAddr: netip.MustParseAddr("169.254.96.16")}
	v4 := []netip.Prefix{netip.MustParsePrefix("10.42.3.0/24")}
	v6 := []netip.Prefix{netip.MustParsePrefix("fd00:42::/64")}
	tests := []struct {
		name   string
		modify func(*hostChecks)
		env    Env
		cfg    *Config // nil: cfg
		routes []netip.Prefix
		err    string // substring; "" : passes
	}{
		{name: "root, all free", routes: append(v4, v6...)},
		{name: "no CAP_NET_ADMIN", modify: func(h *hostChecks) { h.capEff = func() (uint64, error) { return 0, nil } }, err: "needs CAP_NET_ADMIN"},
		{name: "no TUN", modify: func(h *hostChecks) { h.openTUN = func() error { return syscall.ENOENT } }, err: "modprobe tun"},
		{name: "in-process TUN needs no privileges", env: Env{TUN: tuntest.NewChannelTUN().TUN()},
			modify: func(h *hostChecks) { h.capEff = func() (uint64, error) { return 0, nil } }},
		{name: "WireGuard port taken", modify: func(h *hostChecks) { h.listenUDP = inUse(51820) }, err: "UDP port 51820 is in use"},
		{name: "any port", cfg: &Config{DNSAddr: cfg.DNSAddr}, modify: func(h *hostChecks) { h.listenUDP = inUse(0) }},
		{name: "DNS taken (EdgeMesh)", modify: func(h *hostChecks) { h.listenUDP = inUse(53) }, err: "already serves DNS on 169.254.96.16:53"},
		{name: "DNS address not on the host yet", modify: func(h *hostChecks) {
			h.listenUDP = func(ap netip.AddrPort) error {
				if ap.Port() == 53 {
					return syscall.EADDRNOTAVAIL
				}
				return nil
			}
		}},
		{name: "no DNS", cfg: &Config{ListenPort: 51820}, modify: func(h *hostChecks) { h.listenUDP = inUse(53) }},
		{name: "IPv4 forwarding off", routes: v4, modify: func(h *hostChecks) {
			h.sysctl = func(n string) (string, error) {
				return map[bool]string{true: "0", false: "1"}[n == "net.ipv4.ip_forward"], nil
			}
		}, err: "net.ipv4.ip_forward = 0"},
		{name: "IPv6 forwarding off", routes: v6, modify: func(h *hostChecks) {
			h.sysctl = func(n string) (string, error) {
				return map[bool]string{true: "0", false: "1"}[n == "net.ipv6.conf.all.forwarding"], nil
			}
		}, err: "net.ipv6.conf.all.forwarding = 0"},
		{name: "IPv6 forwarding off, IPv4 routes only", routes: v4, modify: func(h *hostChecks) {
			h.sysctl = func(n string) (string, error) {
				return map[bool]string{true: "0", false: "1"}[n == "net.ipv6.conf.all.forwarding"], nil
			}
		}},
		{name: "forwarding off, no routes", modify: func(h *hostChecks) { h.sysctl = func(string) (string, error) { return "0", nil } }},
		{name: "sysctl unreadable", routes: v4, modify: func(h *hostChecks) { h.sysctl = func(string) (string, error) { return "", errors.New("boom") } }, err: "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := ok
			if tt.modify != nil {
				tt.modify(&h)
			}
			c := cfg
			if tt.cfg != nil {
				c = *tt.cfg
			}
			onHost := tt.env.TUN == nil
			err := preflightPrivileges(tt.env, h)
			if err == nil {
				err = preflightPorts(c, tt.env, onHost, h)
			}
			if err == nil {
				err = preflightForwarding(tt.routes, onHost, h)
			}
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("preflight: %v, want %q", err, tt.err)
			}
		})
	}
}

// The capability set is read from the kernel, and the test's own process
// has one.
func TestReadCapEff(t *testing.T) {
	if _, err := readCapEff(); err != nil {
		t.Fatal(err)
	}
}
