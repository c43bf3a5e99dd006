package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/node/netcheck"
)

// netcheckWait is how long netcheck waits for STUN answers per round (two
// rounds).
const netcheckWait = 1500 * time.Millisecond

// Netcheck probes the node's network: whether UDP gets out, the public
// address STUN servers see, whether the NAT maps one socket to the same
// public port for different destinations (endpoint-independent mapping,
// what hole punching needs), and the latency to each relay. One socket
// asks every STUN server and every second STUN port, so one coordinator
// with a second port is enough to tell the mapping.
func (a *Agent) Netcheck(ctx context.Context) (localapi.Netcheck, error) {
	a.mu.Lock()
	targets := a.netcheckTargets()
	a.mu.Unlock()
	var nc localapi.Netcheck
	pc, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return nc, fmt.Errorf("open UDP socket: %w", err)
	}
	defer pc.Close()
	results := netcheck.Probe(ctx, pc, targets, netcheckWait)
	for _, r := range results {
		sr := localapi.STUNResult{Server: r.Server, Alt: r.Alt}
		if r.Err != nil {
			sr.Error = r.Err.Error()
		} else {
			sr.Mapped, sr.RTTMs = r.Mapped.String(), float64(r.RTT.Microseconds())/1000
		}
		nc.STUN = append(nc.STUN, sr)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	v := netcheck.Classify(results, func(m netip.AddrPort) bool {
		return int(m.Port()) == port && slices.Contains(a.hostAddrs(), m.Addr())
	})
	nc.UDP, nc.Mapping, nc.Meaning, nc.NoNAT = v.UDP, v.Mapping, v.Meaning, v.NoNAT
	if v.PublicAddr.IsValid() {
		nc.PublicAddr = v.PublicAddr.Addr().String()
	}
	hs := a.home.Status()
	nc.PreferredRelay = hs.Home
	for name, d := range hs.Latency {
		nc.RelayLatencyMs = append(nc.RelayLatencyMs, localapi.RelayLatency{Name: name, LatencyMs: float64(d.Microseconds()) / 1000})
	}
	return nc, nil
}

// netcheckTargets lists what netcheck asks: every STUN server of the map
// and of its relays, and the second port of those that have one (ICE
// uses only the first: stunServers). Called with mu held.
func (a *Agent) netcheckTargets() []netcheck.Target {
	var out []netcheck.Target
	add := func(host string, port uint16, alt bool) {
		hp := net.JoinHostPort(a.mapHost(host), fmt.Sprint(port))
		if port != 0 && !slices.ContainsFunc(out, func(t netcheck.Target) bool { return t.Server == hp }) {
			out = append(out, netcheck.Target{Server: hp, Alt: alt})
		}
	}
	for _, st := range a.state.STUN {
		add(st.Host, st.Port, false)
		add(st.Host, st.AltPort, true)
	}
	for _, r := range a.state.Relays {
		add(r.Host, r.STUNPort, false)
	}
	return out
}
