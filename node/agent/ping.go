package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

var pingSeq atomic.Uint32

// Ping sends one ICMP echo to a peer's overlay address and reports the
// path it took (implements localapi.Backend). target is the peer's node
// name or one of its overlay addresses.
func (a *Agent) Ping(ctx context.Context, target string) (localapi.PingResult, error) {
	var res localapi.PingResult
	a.mu.Lock()
	p, dst, ok := pingTarget(a.state.Peers, target)
	a.mu.Unlock()
	if !ok {
		return res, fmt.Errorf("%w: %q", localapi.ErrNoPeer, target)
	}
	nk, name := p.Key, p.Name
	res.Peer, res.Address = name, dst.String()
	if !dst.Is4() {
		return res, errors.New("ping: IPv6 overlay addresses are not supported yet")
	}
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return res, fmt.Errorf("open ICMP socket: %w", err)
	}
	defer c.Close()
	seq := int(pingSeq.Add(1) & 0xffff)
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("edgewire-ping")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return res, err
	}
	deadline := time.Now().Add(2 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	start := time.Now()
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return res, fmt.Errorf("send echo: %w", err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			res.Path, res.Relay = a.pathOf(nk)
			return res, fmt.Errorf("no reply from %s (%s) within %v", name, dst, time.Until(deadline)+time.Since(start))
		}
		rm, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || rm.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := rm.Body.(*icmp.Echo); !ok || e.Seq != seq || e.ID != id || from.String() != dst.String() {
			continue
		}
		res.RTTMs = float64(time.Since(start).Microseconds()) / 1000
		res.Path, res.Relay = a.pathOf(nk)
		if st, err := a.dev.Stats(); err == nil {
			if s, ok := st[nk]; ok && s.Endpoint.IsValid() {
				res.Endpoint = s.Endpoint.String()
			}
		}
		return res, nil
	}
}

// pingTarget finds the peer target names: a node name, or an overlay
// address of a peer (names are DNS labels, so never an address). It
// returns the address to ping: the one given, or the peer's first.
func pingTarget(peers map[key.Public]mapstate.Peer, target string) (mapstate.Peer, netip.Addr, bool) {
	ip, err := netip.ParseAddr(target)
	isAddr := err == nil
	for _, p := range peers {
		if len(p.Addresses) == 0 {
			continue
		}
		if !isAddr && p.Name == target {
			return p, p.Addresses[0], true
		}
		if isAddr && slices.Contains(p.Addresses, ip.Unmap()) {
			return p, ip.Unmap(), true
		}
	}
	return mapstate.Peer{}, netip.Addr{}, false
}

func (a *Agent) pathOf(nk key.Public) (string, string) {
	p := a.trav.Path(nk)
	if p.Kind == pathsel.Relay {
		return p.Kind.String(), a.home.Status().Home
	}
	return p.Kind.String(), ""
}
