package dnsserver

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/edgewire/edgewire/types/services"
)

// index is an immutable snapshot of every local name and its records.
// Readers share the RRs: nothing may modify them, and every slice is
// clipped (len == cap) so appending to one copies it.
type index struct {
	names map[string]*entry // lowercase FQDN -> records
	zones []*zone           // cluster, mesh
}

// zone is a local zone apex with its SOA, which goes in the authority
// section of NXDOMAIN and NODATA replies (negative-caching TTL).
type zone struct {
	name string
	soa  []dns.RR // one SOA
}

// entry is a name that exists; a nil rrset means NODATA for that type.
type entry struct {
	zone              *zone
	a, aaaa, srv, soa *rrset
}

type rrset struct {
	answer []dns.RR
	extra  []dns.RR // SRV targets' addresses
}

func (e *entry) lookup(qtype uint16) *rrset {
	switch qtype {
	case dns.TypeA:
		return e.a
	case dns.TypeAAAA:
		return e.aaaa
	case dns.TypeSRV:
		return e.srv
	case dns.TypeSOA:
		return e.soa
	}
	return nil
}

// zoneOf returns the local zone name lies in, or nil.
func (x *index) zoneOf(name string) *zone {
	for _, z := range x.zones {
		if inZone(name, z.name) {
			return z
		}
	}
	return nil
}

// inZone reports whether name is zone or below it. Both are lowercase
// FQDNs in presentation format; an escaped dot ("a\.cluster.local.") is
// part of a label, not a boundary.
func inZone(name, zone string) bool {
	if name == zone {
		return true
	}
	i := len(name) - len(zone) - 1 // the dot before the zone
	if i < 0 || !strings.HasSuffix(name, zone) || name[i] != '.' {
		return false
	}
	bs := 0
	for j := i - 1; j >= 0 && name[j] == '\\'; j-- {
		bs++
	}
	return bs%2 == 0
}

// dnsLabel reports whether s is a lowercase RFC 1123 label.
func dnsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// pending is a name's data while the index is built.
type pending struct {
	zone  *zone
	addrs []netip.Addr
	srvs  []srvTarget
}

type srvTarget struct {
	target string // FQDN, itself a name in the index
	port   uint16
}

type builder struct {
	ttl   uint32
	names map[string]*pending
}

func (b *builder) name(n string, z *zone) *pending {
	p := b.names[n]
	if p == nil {
		p = &pending{zone: z}
		b.names[n] = p
	}
	return p
}

func (b *builder) addr(n string, z *zone, a netip.Addr) {
	p := b.name(n, z)
	a = a.Unmap().WithZone("")
	if !slices.Contains(p.addrs, a) {
		p.addrs = append(p.addrs, a)
	}
}

// buildIndex turns the Service table and node table into an index.
// Names (see the package doc):
//
//	<cluster>, svc.<cluster>, <ns>.svc.<cluster>          exist, no records
//	<svc>.<ns>.svc.<cluster>                              A/AAAA: ClusterIPs, or ready endpoints if headless
//	<hostname|dashed-ip>.<svc>.<ns>.svc.<cluster>         A/AAAA of one endpoint (headless only)
//	_<port>._<proto>.<svc>.<ns>.svc.<cluster>             SRV per named port
//	<node>.<mesh>                                         A/AAAA: overlay addresses
//
// Dashed IPs follow CoreDNS: 10-0-0-1, fd00--1.
func buildIndex(cluster, mesh string, ttl, serial uint32, t *services.Table, nodes map[string][]netip.Addr) *index {
	cz := &zone{name: cluster, soa: []dns.RR{soaRR(cluster, ttl, serial)}}
	mz := &zone{name: mesh, soa: []dns.RR{soaRR(mesh, ttl, serial)}}
	b := &builder{ttl: ttl, names: map[string]*pending{}}
	b.name(cluster, cz)
	b.name(mesh, mz)
	b.name("svc."+cluster, cz)

	for _, svc := range t.All() {
		nsName := svc.Namespace + ".svc." + cluster
		b.name(nsName, cz)
		svcName := svc.Name + "." + nsName
		b.name(svcName, cz)
		if !svc.Headless() {
			for _, ip := range svc.ClusterIPs {
				b.addr(svcName, cz, ip)
			}
		}
		// Per-endpoint names of a headless Service.
		var epNames [][]string // by endpoint: the names its SRV records target
		if svc.Headless() {
			epNames = make([][]string, len(svc.Endpoints))
			for i, ep := range svc.Endpoints {
				for _, a := range ep.Addresses {
					b.addr(svcName, cz, a)
				}
				if ep.Hostname != "" {
					n := ep.Hostname + "." + svcName
					for _, a := range ep.Addresses {
						b.addr(n, cz, a)
					}
					epNames[i] = []string{n}
					continue
				}
				for _, a := range ep.Addresses {
					n := dashed(a) + "." + svcName
					b.addr(n, cz, a)
					epNames[i] = append(epNames[i], n)
				}
			}
		}
		for _, port := range svc.Ports {
			if port.Name == "" {
				continue
			}
			protoName := "_" + strings.ToLower(string(port.Protocol)) + "." + svcName
			b.name(protoName, cz) // empty non-terminal: NODATA, not NXDOMAIN
			p := b.name("_"+port.Name+"."+protoName, cz)
			if !svc.Headless() {
				p.srvs = append(p.srvs, srvTarget{target: svcName, port: port.Port})
				continue
			}
			for i, ep := range svc.Endpoints {
				tp, ok := ep.Ports[port.Name]
				if !ok {
					continue
				}
				for _, n := range epNames[i] {
					p.srvs = append(p.srvs, srvTarget{target: n, port: tp})
				}
			}
		}
	}
	for node, addrs := range nodes {
		n := node + "." + mesh
		b.name(n, mz)
		for _, a := range addrs {
			if a.IsValid() {
				b.addr(n, mz, a)
			}
		}
	}
	return b.finish(cz, mz)
}

func (b *builder) finish(cz, mz *zone) *index {
	x := &index{names: make(map[string]*entry, len(b.names)), zones: []*zone{cz, mz}}
	for n, p := range b.names {
		e := &entry{zone: p.zone}
		var a, aaaa []dns.RR
		for _, ip := range p.addrs {
			hdr := dns.RR_Header{Name: n, Class: dns.ClassINET, Ttl: b.ttl}
			if ip.Is4() {
				hdr.Rrtype = dns.TypeA
				a = append(a, &dns.A{Hdr: hdr, A: ip.AsSlice()})
			} else {
				hdr.Rrtype = dns.TypeAAAA
				aaaa = append(aaaa, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
			}
		}
		if len(a) > 0 {
			e.a = &rrset{answer: slices.Clip(a)}
		}
		if len(aaaa) > 0 {
			e.aaaa = &rrset{answer: slices.Clip(aaaa)}
		}
		if n == p.zone.name {
			e.soa = &rrset{answer: p.zone.soa}
		}
		x.names[n] = e
	}
	// SRV records last: their additional sections reuse the targets' A/AAAA.
	for n, p := range b.names {
		if len(p.srvs) == 0 {
			continue
		}
		weight := uint16(max(1, 100/len(p.srvs)))
		var ans, extra []dns.RR
		seen := map[string]bool{}
		for _, t := range p.srvs {
			ans = append(ans, &dns.SRV{
				Hdr:      dns.RR_Header{Name: n, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: b.ttl},
				Priority: 0,
				Weight:   weight,
				Port:     t.port,
				Target:   t.target,
			})
			if seen[t.target] {
				continue
			}
			seen[t.target] = true
			if te := x.names[t.target]; te != nil {
				if te.a != nil {
					extra = append(extra, te.a.answer...)
				}
				if te.aaaa != nil {
					extra = append(extra, te.aaaa.answer...)
				}
			}
		}
		x.names[n].srv = &rrset{answer: slices.Clip(ans), extra: slices.Clip(extra)}
	}
	return x
}

func soaRR(zone string, ttl, serial uint32) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      "ns.dns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  serial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  ttl, // negative answers are cached this long (RFC 2308)
	}
}

// dashed is an endpoint address as a DNS label: 10-0-0-1, fd00--1.
func dashed(a netip.Addr) string {
	if a.Is4() {
		return strings.ReplaceAll(a.String(), ".", "-")
	}
	return strings.ReplaceAll(a.String(), ":", "-")
}
