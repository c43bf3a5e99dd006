package netcheck

import (
	"fmt"
	"net/netip"
)

// Mapping values (localapi.Netcheck.Mapping). Scripts may match them.
const (
	MappingIndependent = "endpoint-independent"
	MappingDependent   = "endpoint-dependent"
	MappingUnknown     = "unknown"
)

// Verdict is what the answers say about the node's network.
type Verdict struct {
	UDP        bool           // some STUN endpoint answered
	PublicAddr netip.AddrPort // the first answer's mapped address
	NoNAT      bool           // the mapped address is the node's own
	Mapping    string         // one of the Mapping values
	Meaning    string         // in plain words, what it means for direct paths
}

// Classify reads results of one Probe (one socket). local reports whether
// an address is the probing socket's own (so no NAT is on the way).
func Classify(results []Result, local func(netip.AddrPort) bool) Verdict {
	var v Verdict
	var ok []Result
	for _, r := range results {
		if r.Err == nil && r.Mapped.IsValid() {
			ok = append(ok, r)
		}
	}
	if len(results) == 0 {
		v.Mapping = MappingUnknown
		v.Meaning = "no STUN server known yet (no network map from the coordinator?): nothing to test against"
		return v
	}
	if len(ok) == 0 {
		v.Mapping = MappingUnknown
		v.Meaning = "UDP blocked: no STUN server answered over UDP, so every peer is reached through a relay (over TCP/TLS)"
		return v
	}
	v.UDP, v.PublicAddr = true, ok[0].Mapped
	dests := map[netip.AddrPort]bool{}
	destIPs := map[netip.Addr]bool{}
	same := true
	for _, r := range ok {
		dests[r.Dest] = true
		destIPs[r.Dest.Addr()] = true
		same = same && r.Mapped == ok[0].Mapped
	}
	switch {
	case !same:
		v.Mapping = MappingDependent
		v.Meaning = "symmetric NAT (endpoint-dependent mapping): it gives this node a new public port for every destination, " +
			"so a peer never learns the port it would have to use; direct paths only to peers with a public address or " +
			"an endpoint-independent NAT, the others go through a relay"
	case len(dests) < 2:
		v.Mapping = MappingUnknown
		v.Meaning = fmt.Sprintf("only one STUN endpoint answered (%s); telling how the NAT maps needs two "+
			"(the coordinator's second STUN port, --stun-listen-alt, or a second STUN server)", ok[0].Server)
	case local != nil && local(ok[0].Mapped):
		v.Mapping, v.NoNAT = MappingIndependent, true
		v.Meaning = "no NAT: this node's own address is public, so every peer that can send UDP reaches it directly"
	default:
		v.Mapping = MappingIndependent
		v.Meaning = "endpoint-independent NAT (a typical home router): one public port per socket whatever the destination, " +
			"so hole punching works and most peers connect directly (relay only to peers behind symmetric NATs or blocked UDP)"
		if len(destIPs) == 1 {
			v.Meaning += "; tested on two ports of one server, so a rare NAT that maps per destination address only would look the same"
		}
	}
	return v
}
