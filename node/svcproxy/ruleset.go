package svcproxy

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgewire/edgewire/types/services"
)

// Names in our table. Base chains and sets are fixed; per-Service-port
// and per-endpoint chains and affinity sets are named after what they
// serve (see svcKey), so `nft list table ip edgewire` reads like the
// Service map.
const (
	tableName = "edgewire"

	chainNATPrerouting  = "nat-prerouting"  // nat hook prerouting, dstnat: portal lookup
	chainNATOutput      = "nat-output"      // nat hook output, dstnat: portal lookup
	chainNATPostrouting = "nat-postrouting" // nat hook postrouting, srcnat: masquerade marked traffic
	chainFilterOutput   = "filter-output"   // filter hook output: reject, MSS clamping
	chainFilterForward  = "filter-forward"  // filter hook forward: reject, MSS clamping
	chainFilterInput    = "filter-input"    // filter hook input: traffic to local-only servers goes to local-only
	chainLocalOnly      = "local-only"      // accept from lo, drop from the overlay, accept local pods, drop the rest
	chainLocalPods      = "local-pods"      // accept from each local pod CIDR (rewritten when they change)

	mapServices = "services"     // vmap ipv4_addr . inet_proto . inet_service : goto svc-<key>
	setNoEps    = "no-endpoints" // set  ipv4_addr . inet_proto . inet_service (rejected)

	prefixSvc = "svc-" // chain per Service port with ready endpoints
	prefixEp  = "ep-"  // chain per Service port endpoint: mark, [affinity update], dnat
	prefixAff = "aff-" // dynamic set per endpoint of a ClientIP-affinity Service port: client addresses

	// masqMark marks DNATed packets for nat-postrouting. It is the bit
	// kube-proxy uses for the same purpose.
	masqMark = 0x4000

	// affinitySetSize bounds each affinity set (clients per endpoint).
	affinitySetSize = 65535

	// defaultAffinityTimeout is Kubernetes' default ClientIP affinity timeout.
	defaultAffinityTimeout = 3 * time.Hour
)

// ErrConflict is returned (wrapped) by Apply when two Service ports claim
// the same cluster IP, protocol and port. Nothing is applied.
var ErrConflict = errors.New("services claim the same cluster IP, protocol and port")

// portal is a Service port's address: a key of the services map.
type portal struct {
	ip    netip.Addr // IPv4
	proto services.Protocol
	port  uint16
}

func (p portal) String() string {
	return netip.AddrPortFrom(p.ip, p.port).String() + "/" + string(p.proto)
}

// chainSpec is the content of one regular chain: equal specs (see
// equal) render equal rules.
type chainSpec struct {
	// svc chain with ClientIP affinity: a lookup in each target's
	// affinity set, then a random spread over the targets.
	targets []string // endpoint chains, sorted by endpoint
	affSets []string // affinity set of each target

	// svc chain without affinity: mark, random dnat to one of eps.
	// ep chain: mark, update affSet, dnat to eps[0].
	proto   services.Protocol
	eps     []netip.AddrPort // sorted
	affSet  string
	timeout time.Duration
}

func (s *chainSpec) equal(o *chainSpec) bool {
	return s.proto == o.proto && s.affSet == o.affSet && s.timeout == o.timeout &&
		slices.Equal(s.eps, o.eps) && slices.Equal(s.targets, o.targets) && slices.Equal(s.affSets, o.affSets)
}

// ruleset is the rendered desired content of our table, apart from the
// fixed base chains.
type ruleset struct {
	// services: the Service part (nat and filter base chains, the two
	// portal sets, the chains below) is in the table.
	services bool
	chains   map[string]*chainSpec // svc-* and ep-* chains
	sets     map[string]bool       // aff-* sets
	portals  map[portal]string     // services map: portal -> svc chain
	rejects  map[portal]bool       // no-endpoints set

	// guard: the input guard chains are in the table.
	guard bool
	pods  []netip.Prefix // rules of local-pods; sorted IPv4 prefixes (see podCIDRs)
}

func emptyRuleset() *ruleset {
	return &ruleset{chains: map[string]*chainSpec{}, sets: map[string]bool{}, portals: map[portal]string{}, rejects: map[portal]bool{}}
}

// podCIDRs normalises local pod CIDRs for the guard: IPv4 only, masked,
// sorted, without duplicates or prefixes inside others.
func podCIDRs(in []netip.Prefix) []netip.Prefix {
	var ps []netip.Prefix
	for _, p := range in {
		a, bits := p.Addr(), p.Bits()
		if !p.IsValid() {
			continue
		}
		if a.Is4In6() {
			if bits < 96 {
				continue
			}
			a, bits = a.Unmap(), bits-96
		}
		if a.Is4() {
			ps = append(ps, netip.PrefixFrom(a, bits).Masked())
		}
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(cmp.Compare(a.Bits(), b.Bits()), a.Addr().Compare(b.Addr()))
	})
	var out []netip.Prefix
	for _, p := range ps {
		covered := false
		for _, o := range out {
			if o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return out
}

// svcKey names a Service port: "<ns>/<name>/<proto>" for an unnamed
// port, "<ns>/<name>/<proto>/<port name>" for a named one. Names are DNS
// labels, so keys never collide.
func svcKey(s *services.Service, p services.Port) string {
	k := s.Namespace + "/" + s.Name + "/" + strings.ToLower(string(p.Protocol))
	if p.Name != "" {
		k += "/" + p.Name
	}
	return k
}

// render builds the ruleset for t. Only IPv4 is programmed: IPv6 cluster
// IPs and endpoints are skipped (logged at debug level). Two Service
// ports with the same portal are an error wrapping ErrConflict.
func render(t *services.Table, log *slog.Logger) (*ruleset, error) {
	rs := emptyRuleset()
	owner := map[portal]string{} // portal -> Service key, for conflict messages
	for _, s := range t.All() {
		if s.Headless() {
			continue
		}
		var cips []netip.Addr
		for _, ip := range s.ClusterIPs {
			if ip = ip.Unmap(); ip.Is4() {
				cips = append(cips, ip)
			} else {
				log.Debug("skipping IPv6 cluster IP", "service", s.Key(), "ip", ip)
			}
		}
		if len(cips) == 0 {
			continue
		}
		var timeout time.Duration
		if s.ClientIPAffinity {
			timeout = s.AffinityTimeout
			if timeout <= 0 {
				timeout = defaultAffinityTimeout
			}
			timeout = timeout.Round(time.Second)
		}
		for _, p := range s.Ports {
			key := svcKey(s, p)
			eps := endpointsFor(s, p, log)
			svc := prefixSvc + key
			for _, ip := range cips {
				pt := portal{ip, p.Protocol, p.Port}
				if prev, ok := owner[pt]; ok {
					return nil, fmt.Errorf("%w: %s and %s both want %s", ErrConflict, prev, s.Key(), pt)
				}
				owner[pt] = s.Key()
				if len(eps) == 0 {
					rs.rejects[pt] = true
				} else {
					rs.portals[pt] = svc
				}
			}
			if len(eps) == 0 {
				continue
			}
			if timeout == 0 {
				// No affinity: the svc chain picks and DNATs in one rule.
				rs.chains[svc] = &chainSpec{proto: p.Protocol, eps: eps}
				continue
			}
			spec := &chainSpec{}
			for _, e := range eps {
				// nft's parser takes "/", "_" and "." in names, not ":".
				epKey := key + "__" + e.Addr().String() + "/" + strconv.Itoa(int(e.Port()))
				ep := prefixEp + epKey
				spec.targets = append(spec.targets, ep)
				es := &chainSpec{proto: p.Protocol, eps: []netip.AddrPort{e}, timeout: timeout, affSet: prefixAff + epKey}
				spec.affSets = append(spec.affSets, es.affSet)
				rs.sets[es.affSet] = true
				rs.chains[ep] = es
			}
			rs.chains[svc] = spec
		}
	}
	return rs, nil
}

// endpointsFor returns the IPv4 ip:port targets of port p, sorted and
// without duplicates so the rendering does not depend on endpoint order.
// An endpoint contributes its first IPv4 address; one without an IPv4
// address or without the port is skipped.
func endpointsFor(s *services.Service, p services.Port, log *slog.Logger) []netip.AddrPort {
	var eps []netip.AddrPort
	for _, e := range s.Endpoints {
		port, ok := e.Ports[p.Name]
		if !ok {
			continue
		}
		var v4 netip.Addr
		for _, a := range e.Addresses {
			if a = a.Unmap(); a.Is4() {
				v4 = a
				break
			}
		}
		if !v4.IsValid() {
			log.Debug("skipping endpoint without an IPv4 address", "service", s.Key(), "port", p.Name, "addresses", e.Addresses)
			continue
		}
		eps = append(eps, netip.AddrPortFrom(v4, port))
	}
	slices.SortFunc(eps, func(a, b netip.AddrPort) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Port(), b.Port()))
	})
	return slices.Compact(eps)
}

// plan is what one Apply sends, in the order the batch carries it: every
// reference to an object is dropped before the object goes, and every
// object exists before something refers to it.
type plan struct {
	pods       bool     // rewrite the local-pods chain
	delPortals []portal // services map elements to delete
	delRejects []portal // no-endpoints elements to delete
	flush      []string // chains whose rules go (changed or removed)
	delChains  []string
	delSets    []string
	addSets    []string
	addChains  []string // new chains, created empty
	fill       []string // chains to fill with rules (new or changed)
	addPortals []portal
	addRejects []portal
}

// empty reports whether p changes nothing.
func (p *plan) empty() bool {
	return !p.pods && len(p.delPortals)+len(p.delRejects)+len(p.flush)+len(p.delChains)+len(p.delSets)+
		len(p.addSets)+len(p.addChains)+len(p.fill)+len(p.addPortals)+len(p.addRejects) == 0
}

// diff plans the change from old (what the kernel holds) to cur. Each
// list is sorted, so a plan depends only on its inputs.
func diff(old, cur *ruleset) *plan {
	p := &plan{pods: cur.guard && !slices.Equal(old.pods, cur.pods)}
	for pt, c := range old.portals {
		if nc, ok := cur.portals[pt]; !ok || nc != c {
			p.delPortals = append(p.delPortals, pt)
		}
	}
	for pt, c := range cur.portals {
		if oc, ok := old.portals[pt]; !ok || oc != c {
			p.addPortals = append(p.addPortals, pt)
		}
	}
	for pt := range old.rejects {
		if !cur.rejects[pt] {
			p.delRejects = append(p.delRejects, pt)
		}
	}
	for pt := range cur.rejects {
		if !old.rejects[pt] {
			p.addRejects = append(p.addRejects, pt)
		}
	}
	for name, os := range old.chains {
		ns, ok := cur.chains[name]
		switch {
		case !ok:
			p.flush = append(p.flush, name)
			p.delChains = append(p.delChains, name)
		case !ns.equal(os):
			p.flush = append(p.flush, name)
			p.fill = append(p.fill, name)
		}
	}
	for name := range cur.chains {
		if _, ok := old.chains[name]; !ok {
			p.addChains = append(p.addChains, name)
			p.fill = append(p.fill, name)
		}
	}
	for name := range old.sets {
		if !cur.sets[name] {
			p.delSets = append(p.delSets, name)
		}
	}
	for name := range cur.sets {
		if !old.sets[name] {
			p.addSets = append(p.addSets, name)
		}
	}
	for _, l := range [][]portal{p.delPortals, p.addPortals, p.delRejects, p.addRejects} {
		slices.SortFunc(l, comparePortals)
	}
	for _, l := range [][]string{p.flush, p.delChains, p.delSets, p.addSets, p.addChains, p.fill} {
		slices.Sort(l)
	}
	return p
}

func comparePortals(a, b portal) int {
	return cmp.Or(a.ip.Compare(b.ip), cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
}

// counts summarises a plan for logs.
func (p *plan) counts() []any {
	return []any{"pod_cidrs_rewritten", p.pods, "chains_added", len(p.addChains), "chains_rewritten", len(p.fill) - len(p.addChains),
		"chains_deleted", len(p.delChains), "portals_added", len(p.addPortals), "portals_deleted", len(p.delPortals),
		"rejects_added", len(p.addRejects), "rejects_deleted", len(p.delRejects)}
}
