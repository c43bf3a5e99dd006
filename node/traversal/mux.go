package traversal

import (
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/pion/ice/v4"
)

// Mux is pion's universal UDP mux over the shared socket, with host
// candidates limited to the addresses the agent chooses (never the
// overlay interface's own address).
type Mux struct {
	*ice.UniversalUDPMuxDefault
	port  func() uint16
	hosts func() []netip.Addr
}

// NewMux muxes ICE over pc. port returns the socket's port; hosts
// returns the addresses to offer as host candidates.
func NewMux(pc net.PacketConn, port func() uint16, hosts func() []netip.Addr, log *slog.Logger) *Mux {
	m := ice.NewUniversalUDPMuxDefault(ice.UniversalUDPMuxParams{
		UDPConn: pc,
		Logger:  pionLogs{log}.NewLogger("mux"),
		// pion caches the server-reflexive address per STUN server (25 s
		// by default). After a NAT rebinding a stale mapping would be
		// offered to every peer; keep the cache just long enough to share
		// one answer between the sessions started together.
		XORMappedAddrCacheTTL: 2 * time.Second,
	})
	return &Mux{UniversalUDPMuxDefault: m, port: port, hosts: hosts}
}

// GetListenAddresses implements ice.UDPMux.
func (m *Mux) GetListenAddresses() []net.Addr {
	var out []net.Addr
	p := m.port()
	for _, a := range m.hosts() {
		out = append(out, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, p)))
	}
	return out
}

var _ ice.UniversalUDPMux = (*Mux)(nil)
