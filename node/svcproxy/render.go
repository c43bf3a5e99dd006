package svcproxy

import (
	"cmp"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgewire/edgewire/node/services"
)

// Fixed chain names. Per-port and per-endpoint chains add a hash (see
// chainName).
const (
	chainServices    = "EDGEWIRE-SERVICES"    // nat: ClusterIP matches; filter: REJECTs
	chainPostrouting = "EDGEWIRE-POSTROUTING" // nat: MASQUERADE of marked traffic
	chainMSS         = "EDGEWIRE-MSS"         // mangle: TCP MSS clamping
	prefixSVC        = "EDGEWIRE-SVC-"        // nat: one per Service port
	prefixSEP        = "EDGEWIRE-SEP-"        // nat: one per Service port endpoint
	chainPrefix      = "EDGEWIRE-"            // every chain this package owns

	// masqMark marks DNATed packets for EDGEWIRE-POSTROUTING. It is the bit
	// kube-proxy uses for the same purpose.
	masqMark = "0x4000"

	// jumpComment tags the rules in built-in chains that jump to our chains.
	jumpComment = "edgewire"

	// hashLen keeps "EDGEWIRE-SVC-" + hash at 28 characters, the longest
	// chain name iptables accepts (29 with kube-proxy's 16 is refused).
	hashLen = 15

	// defaultAffinityTimeout is Kubernetes' default ClientIP affinity timeout.
	defaultAffinityTimeout = 3 * time.Hour
)

// Table names, in the order Apply restores them: filter and mangle before
// nat, so that a nat failure never leaves DNAT to endpoints whose REJECTs
// or clamping are missing.
const (
	tableFilter = "filter"
	tableMangle = "mangle"
	tableNAT    = "nat"
)

// jump is a rule in a built-in chain that hands packets to one of ours.
type jump struct {
	table, chain, target string
}

// jumps lists every jump rule, in table order.
var jumps = []jump{
	{tableFilter, "OUTPUT", chainServices},
	{tableFilter, "FORWARD", chainServices},
	{tableMangle, "FORWARD", chainMSS},
	{tableMangle, "OUTPUT", chainMSS},
	{tableNAT, "PREROUTING", chainServices},
	{tableNAT, "OUTPUT", chainServices},
	{tableNAT, "POSTROUTING", chainPostrouting},
}

// spec is the rule as iptables -C/-D take it (after the chain name).
func (j jump) spec() []string {
	return []string{"-m", "comment", "--comment", jumpComment, "-j", j.target}
}

// insertLine is the iptables-restore line that adds the jump first in its chain.
func (j jump) insertLine() string {
	return "-I " + j.chain + " 1 " + strings.Join(j.spec(), " ")
}

// tableRules is the rendered content of our chains in one table.
type tableRules struct {
	name   string
	chains []string          // our chains, in declaration order
	rules  map[string]string // chain -> its "-A" lines, newline terminated
}

// input returns iptables-restore --noflush input that writes chains (each
// flushed by its declaration, then refilled), inserts jumps after the
// chains they target are filled, and flushes and deletes stale chains.
// Chains of tr not listed are left as the kernel has them.
func (tr *tableRules) input(chains, jumps, stale []string) string {
	n := 32 + 64*len(stale) + 80*len(jumps)
	for _, c := range chains {
		n += 32 + len(tr.rules[c])
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString("*" + tr.name + "\n")
	for _, c := range chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range stale {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range chains {
		b.WriteString(tr.rules[c])
	}
	for _, j := range jumps {
		b.WriteString(j + "\n")
	}
	for _, c := range stale {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// batches splits chains into restore transactions of about maxLines
// lines each (see maxRestoreLines). A cut only falls before an SVC chain,
// so each SVC chain travels with the SEP chains that follow it; the fixed
// chains (the portal chain that makes new Services visible) go in the
// last batch.
func (tr *tableRules) batches(chains []string, maxLines int) [][]string {
	var out [][]string
	var cur, fixed []string
	lines := 0
	for _, c := range chains {
		if !strings.HasPrefix(c, prefixSVC) && !strings.HasPrefix(c, prefixSEP) {
			fixed = append(fixed, c)
			continue
		}
		if strings.HasPrefix(c, prefixSVC) && lines >= maxLines {
			out = append(out, cur)
			cur, lines = nil, 0
		}
		cur = append(cur, c)
		lines += 1 + strings.Count(tr.rules[c], "\n")
	}
	return append(out, append(cur, fixed...))
}

// Render returns the iptables-restore --noflush input for each table: our
// chains and their rules, without the jumps from built-in chains (Apply
// adds those when missing) and without stale-chain removal (Apply knows
// which chains exist). The output depends only on t and iface.
func Render(t *services.Table, iface string) (filter, mangle, nat string) {
	r := render(t, iface, slog.New(slog.DiscardHandler))
	return r[0].input(r[0].chains, nil, nil), r[1].input(r[1].chains, nil, nil), r[2].input(r[2].chains, nil, nil)
}

// render builds the three tables, filter first.
func render(t *services.Table, iface string, log *slog.Logger) [3]*tableRules {
	filter := &tableRules{name: tableFilter, chains: []string{chainServices}, rules: map[string]string{}}
	mangle := &tableRules{name: tableMangle, chains: []string{chainMSS}, rules: map[string]string{}}
	nat := &tableRules{name: tableNAT, chains: []string{chainServices, chainPostrouting}, rules: map[string]string{}}

	if iface != "" {
		mangle.rules[chainMSS] = "-A " + chainMSS + " -o " + iface + " -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n" +
			"-A " + chainMSS + " -i " + iface + " -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n"
	}
	post := "-A " + chainPostrouting
	if iface != "" {
		post += " -o " + iface
	}
	nat.rules[chainPostrouting] = post + " -m mark --mark " + masqMark + "/" + masqMark + " -j MASQUERADE\n"

	var rejects, portals, b strings.Builder
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
		timeout := s.AffinityTimeout
		if timeout <= 0 {
			timeout = defaultAffinityTimeout
		}
		seconds := strconv.FormatInt(int64((timeout+time.Second-1)/time.Second), 10)

		for _, p := range s.Ports {
			proto := strings.ToLower(string(p.Protocol))
			id := s.Namespace + "/" + s.Name + "/" + p.Name + "/" + string(p.Protocol)
			comment := s.Key()
			if p.Name != "" {
				comment += ":" + p.Name
			}
			match := " -p " + proto + " -m comment --comment " + comment + " -m " + proto + " --dport " + strconv.Itoa(int(p.Port))

			eps := endpointsFor(s, p, log)
			if len(eps) == 0 {
				for _, ip := range cips {
					rejects.WriteString("-A " + chainServices + " -d " + ip.String() + "/32" + match + " -j REJECT\n")
				}
				continue
			}

			svc := chainName(prefixSVC, id)
			for _, ip := range cips {
				portals.WriteString("-A " + chainServices + " -d " + ip.String() + "/32" + match + " -j " + svc + "\n")
			}
			seps := make([]string, len(eps))
			for i, ep := range eps {
				seps[i] = chainName(prefixSEP, id+"/"+ep.String())
			}
			b.Reset()
			if s.ClientIPAffinity {
				for _, sep := range seps {
					b.WriteString("-A " + svc + " -m recent --name " + sep + " --rcheck --seconds " + seconds + " --reap -j " + sep + "\n")
				}
			}
			for i, sep := range seps {
				b.WriteString("-A " + svc)
				if n := len(seps); i < n-1 {
					fmt.Fprintf(&b, " -m statistic --mode random --probability %0.10f", 1/float64(n-i))
				}
				b.WriteString(" -j " + sep + "\n")
			}
			nat.chains = append(nat.chains, svc)
			nat.rules[svc] = b.String()
			for i, sep := range seps {
				b.Reset()
				b.WriteString("-A " + sep + " -j MARK --or-mark " + masqMark + "\n")
				b.WriteString("-A " + sep + " -p " + proto)
				if s.ClientIPAffinity {
					b.WriteString(" -m recent --name " + sep + " --set")
				}
				b.WriteString(" -j DNAT --to-destination " + eps[i].String() + "\n")
				nat.chains = append(nat.chains, sep)
				nat.rules[sep] = b.String()
			}
		}
	}
	filter.rules[chainServices] = rejects.String()
	nat.rules[chainServices] = portals.String()
	return [3]*tableRules{filter, mangle, nat}
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

// chainName is prefix + the first hashLen base32 characters of
// sha256(id): stable across restarts, so an unchanged Service keeps its
// chains, and short enough for iptables.
func chainName(prefix, id string) string {
	sum := sha256.Sum256([]byte(id))
	return prefix + base32.StdEncoding.EncodeToString(sum[:])[:hashLen]
}
