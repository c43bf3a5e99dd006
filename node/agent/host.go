package agent

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/edgewire/edgewire/dataplane/linkconf"
)

// Host is what the agent needs from the machine besides the WireGuard
// device: the overlay interface's addresses and routes, policy routing,
// what the host reaches without the overlay, its addresses, and sockets
// that bypass the overlay. linuxHost is the real one (netlink); in-process
// tests use one that only records. Methods are called from the agent's
// reconcile and endpoint loops, never concurrently with themselves.
type Host interface {
	// Configure brings the overlay interface iface up with exactly the
	// addresses addrs and the edgewire routes routes.
	Configure(iface string, addrs, routes []netip.Prefix) error
	// InstallRules sets up policy routing for the overlay's routing
	// table; the returned function removes it.
	InstallRules() (remove func(), err error)
	// Underlay lists the gateways of the host's default routes and the
	// subnets its other interfaces are attached to (see routeguard).
	Underlay(iface string) (gateways, subnets []netip.Prefix, err error)
	// Addrs lists the host's global unicast addresses on up interfaces
	// other than iface: its endpoints and ICE host candidates.
	Addrs(iface string) ([]netip.Addr, error)
	// Dial opens a connection that overlay routes cannot capture (the
	// coordinator stream, relay connections and probes).
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
}

// Env is what Run takes from outside the agent's configuration: the
// host, and optionally the WireGuard device's TUN and UDP socket. The
// zero Env is the real machine (RunWith fills in linuxHost).
type Env struct {
	Host Host
	// TUN, when set, replaces the kernel TUN device (and the UAPI socket
	// with it): in-process tests use wireguard-go's channel TUN.
	TUN tun.Device
	// Bind, when set, is the UDP socket under the agent's Bind (nil:
	// wireguard-go's StdNetBind).
	Bind conn.Bind
	// SameHost lets ICE use loopback candidates and candidates at this
	// host's own addresses: only for peers that run in one process.
	SameHost bool
}

// linuxHost is the real Host: netlink, policy rules, marked sockets.
type linuxHost struct {
	table int // routing table of overlay routes
}

var _ Host = linuxHost{}

func (h linuxHost) Configure(iface string, addrs, routes []netip.Prefix) error {
	return linkconf.Apply(iface, h.table, addrs, routes)
}

func (h linuxHost) InstallRules() (func(), error) {
	if err := linkconf.InstallRules(h.table); err != nil {
		return func() {}, err
	}
	return func() { linkconf.RemoveRules() }, nil
}

func (linuxHost) Underlay(iface string) ([]netip.Prefix, []netip.Prefix, error) {
	return linkconf.Underlay(iface)
}

// Addrs lists global unicast addresses of every up interface but iface
// and loopback.
func (linuxHost) Addrs(iface string) ([]netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Name == iface || ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			ipn, ok := ad.(*net.IPNet)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap().IsGlobalUnicast() {
				out = append(out, ip.Unmap())
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// Dial opens a connection with linkconf.Mark, so it uses the main routing
// table whatever routes the overlay holds.
func (linuxHost) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: 30 * time.Second, Control: linkconf.MarkSocket}
	return d.DialContext(ctx, network, addr)
}
