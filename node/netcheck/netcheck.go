// Package netcheck tells how a node's NAT treats UDP, which decides where
// direct paths are possible. It sends STUN binding requests from one
// socket to several STUN endpoints (servers, and second ports of the same
// server) and compares the public address each saw: one mapping for all
// destinations is endpoint-independent (hole punching works), a mapping
// per destination is endpoint-dependent (symmetric), no answer at all is
// UDP blocked.
package netcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v4"
)

// Target is one STUN endpoint to ask.
type Target struct {
	Server string // host:port
	Alt    bool   // the second port of a server (StunServer.alt_port)
}

// Result is one target's answer.
type Result struct {
	Target
	Dest   netip.AddrPort // the resolved address asked; zero if it did not resolve
	Mapped netip.AddrPort // the public address the server saw; valid when Err is nil
	RTT    time.Duration
	Err    error
}

// ErrNoAnswer is a target's error when no answer came in time.
var ErrNoAnswer = errors.New("no answer (UDP blocked?)")

// tries is how many requests each target gets before it counts as silent.
const tries = 2

// Probe asks every target from pc, all at once: a request each, answers
// awaited for wait, then another request to the silent ones, awaited as
// long (less when ctx ends sooner). Results are in target order. Probe
// owns pc's read deadline while it runs.
func Probe(ctx context.Context, pc *net.UDPConn, targets []Target, wait time.Duration) []Result {
	res := make([]Result, len(targets))
	type sent struct {
		i  int
		at time.Time
	}
	byTx := map[[stun.TransactionIDSize]byte]sent{} // every request sent, so a late answer still counts
	pending := 0
	for i, t := range targets {
		res[i].Target = t
		ua, err := net.ResolveUDPAddr("udp4", t.Server)
		if err != nil {
			res[i].Err = fmt.Errorf("resolve: %w", err)
			continue
		}
		res[i].Dest = ua.AddrPort()
		res[i].Dest = netip.AddrPortFrom(res[i].Dest.Addr().Unmap(), res[i].Dest.Port())
		pending++
	}
	buf := make([]byte, 1500)
	for try := 0; try < tries && pending > 0 && ctx.Err() == nil; try++ {
		for i := range res {
			if !res[i].Dest.IsValid() || res[i].Err != nil || res[i].Mapped.IsValid() {
				continue
			}
			req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
			byTx[req.TransactionID] = sent{i, time.Now()}
			if _, err := pc.WriteToUDPAddrPort(req.Raw, res[i].Dest); err != nil {
				res[i].Err = err
				pending--
			}
		}
		deadline := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		pc.SetReadDeadline(deadline)
		for pending > 0 {
			n, _, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // the deadline: next try
			}
			tx, mapped, err := ParseResponse(buf[:n])
			if errors.Is(err, ErrNotSTUN) {
				continue
			}
			s, ok := byTx[tx]
			if !ok || res[s.i].Err != nil || res[s.i].Mapped.IsValid() {
				continue // not ours, or answered already
			}
			if err != nil {
				res[s.i].Err = err
			} else {
				res[s.i].Mapped, res[s.i].RTT = mapped, time.Since(s.at)
			}
			pending--
		}
	}
	pc.SetReadDeadline(time.Time{})
	for i := range res {
		if res[i].Dest.IsValid() && res[i].Err == nil && !res[i].Mapped.IsValid() {
			res[i].Err = ErrNoAnswer
		}
	}
	return res
}

// ErrNotSTUN is ParseResponse's error for bytes that are no STUN message
// (so no transaction to charge an error to).
var ErrNotSTUN = errors.New("not a STUN message")

// ParseResponse reads a STUN answer from the network: its transaction ID
// and, for a binding success, the mapped address (XOR-MAPPED-ADDRESS, or
// MAPPED-ADDRESS from servers that send only that). Anything that is not
// a STUN message is ErrNotSTUN; a STUN message that is not a usable
// binding success is another error, with the transaction ID set.
func ParseResponse(b []byte) (tx [stun.TransactionIDSize]byte, mapped netip.AddrPort, err error) {
	if !stun.IsMessage(b) {
		return tx, mapped, ErrNotSTUN
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return tx, mapped, ErrNotSTUN
	}
	tx = m.TransactionID
	if m.Type != stun.BindingSuccess {
		return tx, mapped, fmt.Errorf("STUN answer of type %v, want a binding success", m.Type)
	}
	var ip net.IP
	var port int
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err == nil {
		ip, port = xor.IP, xor.Port
	} else {
		var plain stun.MappedAddress
		if err := plain.GetFrom(m); err != nil {
			return tx, mapped, fmt.Errorf("no mapped address in the answer: %w", err)
		}
		ip, port = plain.IP, plain.Port
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 65535 || !a.Unmap().IsValid() || a.Unmap().IsUnspecified() {
		return tx, mapped, fmt.Errorf("bad mapped address %v port %d", ip, port)
	}
	return tx, netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}
