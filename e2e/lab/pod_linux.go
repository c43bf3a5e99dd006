package lab

import (
	"encoding/binary"
	"net/netip"
)

// podBridge is the bridge in a node's namespace that its pods hang off.
const podBridge = "pods"

// podNet is a node's pod network: the CIDR and how many pods it has.
type podNet struct {
	cidr netip.Prefix
	n    int // pods so far
}

// AddPod adds a "pod" behind node h: a namespace whose eth0 sits on a
// bridge ("pods") in h's namespace, as a CNI bridge plugin would set it up.
// The first AddPod on h creates the bridge with the first address of cidr
// (an IPv4 prefix of at most /30, e.g. 10.244.2.0/24 -> 10.244.2.1) and
// turns on IP forwarding in h; every pod gets the next free address of
// cidr and a default route via the bridge. Later calls on h must pass the
// same cidr.
func (h *Host) AddPod(name string, cidr netip.Prefix) *Host {
	l := h.lab
	l.t.Helper()
	if !cidr.Addr().Is4() || cidr != cidr.Masked() || cidr.Bits() > 30 {
		l.t.Fatalf("add pod %s on %s: pod CIDR %s, want a masked IPv4 prefix of at most /30", name, h.name, cidr)
	}
	l.mu.Lock()
	pn := l.pods[h]
	first := pn == nil
	if first {
		pn = &podNet{cidr: cidr}
		l.pods[h] = pn
	}
	n := pn.n
	pn.n++
	l.mu.Unlock()
	if pn.cidr != cidr {
		l.t.Fatalf("add pod %s on %s: pod CIDR %s, but %s has pods in %s", name, h.name, cidr, h.name, pn.cidr)
	}
	base := cidr.Addr().As4()
	start := binary.BigEndian.Uint32(base[:])
	size := uint32(1) << (32 - cidr.Bits())
	if uint32(n)+2 >= size-1 { // .0 network, .1 bridge, last broadcast
		l.t.Fatalf("add pod %s on %s: pod CIDR %s is full", name, h.name, cidr)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], start+2+uint32(n))
	ip := netip.AddrFrom4(b)
	gw := cidr.Addr().Next()
	if first {
		l.addBridge(h, podBridge, netip.PrefixFrom(gw, cidr.Bits()))
		l.run("ip", "netns", "exec", h.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	pod := l.newHost(name, netip.PrefixFrom(ip, cidr.Bits()))
	l.plug(h, podBridge, pod, "eth0", gw)
	return pod
}
