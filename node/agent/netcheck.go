package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v4"

	"github.com/edgewire/edgewire/node/localapi"
)

// Netcheck probes the node's network: whether UDP gets out, the public
// address STUN servers see, whether the NAT maps one socket to the same
// public port for different destinations (endpoint-independent mapping,
// what hole punching needs), and the latency to each relay.
func (a *Agent) Netcheck(ctx context.Context) (localapi.Netcheck, error) {
	a.mu.Lock()
	servers := a.stunServers()
	a.mu.Unlock()
	var nc localapi.Netcheck
	pc, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return nc, fmt.Errorf("open UDP socket: %w", err)
	}
	defer pc.Close()
	var mapped []netip.AddrPort
	for _, s := range servers {
		r := localapi.STUNResult{Server: s}
		m, rtt, err := stunProbe(ctx, pc, s)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Mapped, r.RTTMs = m.String(), float64(rtt.Microseconds())/1000
			mapped = append(mapped, m)
		}
		nc.STUN = append(nc.STUN, r)
	}
	nc.UDP = len(mapped) > 0
	if len(mapped) > 0 {
		nc.PublicAddr = mapped[0].Addr().String()
	}
	switch {
	case len(mapped) < 2:
		nc.Mapping = "unknown (needs answers from two STUN servers)"
	case allSamePort(mapped):
		nc.Mapping = "endpoint-independent"
	default:
		nc.Mapping = "endpoint-dependent (symmetric): direct paths only to public peers; others use the relay"
	}
	hs := a.home.Status()
	nc.PreferredRelay = hs.Home
	for name, d := range hs.Latency {
		nc.RelayLatencyMs = append(nc.RelayLatencyMs, localapi.RelayLatency{Name: name, LatencyMs: float64(d.Microseconds()) / 1000})
	}
	return nc, nil
}

func allSamePort(m []netip.AddrPort) bool {
	for _, x := range m[1:] {
		if x != m[0] {
			return false
		}
	}
	return true
}

// stunProbe sends a binding request to server from pc and returns the
// mapped address (two tries, 1.5 s each).
func stunProbe(ctx context.Context, pc *net.UDPConn, server string) (netip.AddrPort, time.Duration, error) {
	ua, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	buf := make([]byte, 1500)
	for try := 0; try < 2; try++ {
		req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		start := time.Now()
		if _, err := pc.WriteToUDP(req.Raw, ua); err != nil {
			return netip.AddrPort{}, 0, err
		}
		deadline := start.Add(1500 * time.Millisecond)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		pc.SetReadDeadline(deadline)
		for {
			n, _, err := pc.ReadFromUDP(buf)
			if err != nil {
				break // timeout: next try
			}
			resp := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if resp.Decode() != nil || resp.TransactionID != req.TransactionID {
				continue
			}
			var xor stun.XORMappedAddress
			if err := xor.GetFrom(resp); err != nil {
				return netip.AddrPort{}, 0, fmt.Errorf("no mapped address in the answer: %w", err)
			}
			a, ok := netip.AddrFromSlice(xor.IP)
			if !ok {
				return netip.AddrPort{}, 0, fmt.Errorf("bad mapped address %v", xor.IP)
			}
			return netip.AddrPortFrom(a.Unmap(), uint16(xor.Port)), time.Since(start), nil
		}
	}
	return netip.AddrPort{}, 0, fmt.Errorf("no answer (UDP blocked?)")
}
