package svcproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/edgewire/edgewire/types/services"
)

var (
	ourTable = &nftables.Table{Name: tableName, Family: nftables.TableFamilyIPv4}

	// portalType is the key of the services map and the no-endpoints set:
	// ip daddr . meta l4proto . th dport, each field padded to 4 bytes.
	portalType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
)

// Fresh Set values per batch: the library writes IDs into them.
func servicesMap() *nftables.Set {
	return &nftables.Set{Table: ourTable, Name: mapServices, IsMap: true, Concatenation: true,
		KeyType: portalType, DataType: nftables.TypeVerdict}
}

func noEpsSet() *nftables.Set {
	return &nftables.Set{Table: ourTable, Name: setNoEps, Concatenation: true, KeyType: portalType}
}

// baseChain is a chain hooked into netfilter.
type baseChain struct {
	name  string
	typ   nftables.ChainType
	hook  *nftables.ChainHook
	prio  *nftables.ChainPriority
	rules func(iface string) [][]expr.Any
}

var baseChains = []baseChain{
	{chainNATPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, portalRules},
	{chainNATOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest, portalRules},
	{chainNATPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, masqRules},
	{chainFilterOutput, nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter, filterRules(false)},
	{chainFilterForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter, filterRules(true)},
}

// loadPortal loads ip daddr . meta l4proto . th dport into registers 1,
// 9 and 10 (the 16-byte register 1 is 32-bit registers 8-11).
func loadPortal() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
		&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// portalRules: ip daddr . meta l4proto . th dport vmap @services
func portalRules(string) [][]expr.Any {
	return [][]expr.Any{append(loadPortal(), &expr.Lookup{SourceRegister: 1, SetName: mapServices, IsDestRegSet: true, DestRegister: 0})}
}

func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}

func nativeU32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// masqRules: meta mark & 0x4000 != 0 oifname IFACE masquerade
func masqRules(iface string) [][]expr.Any {
	return [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(masqMark), Xor: nativeU32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeU32(0)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(iface)},
		&expr.Masq{},
	}}
}

// filterRules: ip daddr . meta l4proto . th dport @no-endpoints reject,
// then TCP MSS clamping to the route MTU for SYNs leaving (and, when
// forwarding, entering) through the overlay interface.
func filterRules(forward bool) func(string) [][]expr.Any {
	return func(iface string) [][]expr.Any {
		reject := append(loadPortal(), &expr.Lookup{SourceRegister: 1, SetName: setNoEps},
			&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}) // ICMP port unreachable, as iptables' REJECT
		rules := [][]expr.Any{reject, mssRule(expr.MetaKeyOIFNAME, iface)}
		if forward {
			rules = append(rules, mssRule(expr.MetaKeyIIFNAME, iface))
		}
		return rules
	}
}

// mssRule: {i,o}ifname IFACE tcp flags & (syn|rst) == syn tcp option maxseg size set rt mtu
func mssRule(dir expr.MetaKey, iface string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: dir, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(iface)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02 | 0x04}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}

func protoNum(p services.Protocol) byte {
	if p == services.UDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// portalKey encodes p as a portalType key.
func portalKey(p portal) []byte {
	k := make([]byte, 12)
	a := p.ip.As4()
	copy(k, a[:])
	k[4] = protoNum(p.proto)
	binary.BigEndian.PutUint16(k[8:], p.port)
	return k
}

func chainRef(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: ourTable} }

func affSet(name string) *nftables.Set {
	return &nftables.Set{Table: ourTable, Name: name, KeyType: nftables.TypeIPAddr, Dynamic: true, HasTimeout: true, Size: affinitySetSize}
}

// batch accumulates one Apply's messages on c and counts them.
type batch struct {
	c             *nftables.Conn
	n             int    // messages queued
	setID         uint32 // last set ID used in this batch
	svcMap, noEps *nftables.Set
}

// newBatch starts a batch on c. Every set the batch creates gets an ID
// from the batch (the library would otherwise draw one from a global
// counter, unsynchronised across connections).
func newBatch(c *nftables.Conn) *batch {
	return &batch{c: c, svcMap: servicesMap(), noEps: noEpsSet()}
}

func (b *batch) addRule(chain string, exprs []expr.Any) {
	b.c.AddRule(&nftables.Rule{Table: ourTable, Chain: chainRef(chain), Exprs: exprs})
	b.n++
}

// fillChain queues the rules of one svc-* or ep-* chain.
func (b *batch) fillChain(name string, s *chainSpec) error {
	if len(s.eps) > 0 {
		// svc chain without affinity, or ep chain:
		//   meta l4proto P meta mark set meta mark | 0x4000
		//   [update @aff { ip saddr } timeout T]
		//   dnat to EP | dnat to numgen random mod N map { 0 : EP0, ... }
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNum(s.proto)}},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(^uint32(masqMark)), Xor: nativeU32(masqMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}
		if s.affSet != "" {
			exprs = append(exprs,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Dynset{SrcRegKey: 1, SetName: s.affSet, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: s.timeout})
		}
		if len(s.eps) == 1 {
			a := s.eps[0].Addr().As4()
			exprs = append(exprs,
				&expr.Immediate{Register: 1, Data: a[:]},
				&expr.Immediate{Register: 9, Data: binaryutil.BigEndian.PutUint16(s.eps[0].Port())})
		} else {
			// The map's data, ipv4_addr . inet_service, lands in
			// 32-bit registers 8 (address) and 9 (port).
			b.setID++
			pick := &nftables.Set{Table: ourTable, ID: b.setID, Name: "__map%d", Anonymous: true, Constant: true, IsMap: true,
				KeyType: nftables.TypeInteger, DataType: endpointType}
			elems := make([]nftables.SetElement, len(s.eps))
			for i, e := range s.eps {
				elems[i] = nftables.SetElement{Key: spreadKey(i), Val: endpointVal(e)}
			}
			if err := b.c.AddSet(pick, elems); err != nil {
				return fmt.Errorf("endpoint map of %s: %w", name, err)
			}
			b.n += 2
			exprs = append(exprs,
				&expr.Numgen{Register: 1, Modulus: uint32(len(s.eps)), Type: unix.NFT_NG_RANDOM},
				&expr.Lookup{SourceRegister: 1, SetName: pick.Name, SetID: pick.ID, IsDestRegSet: true, DestRegister: 1})
		}
		exprs = append(exprs, &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 9, Specified: true})
		b.addRule(name, exprs)
		return nil
	}
	// svc chain with affinity: first for each endpoint
	//   ip saddr @aff-EP goto ep-EP
	// then
	//   numgen random mod N vmap { 0 : goto ep-EP0, ... }
	for i, set := range s.affSets {
		b.addRule(name, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: set},
			&expr.Verdict{Kind: expr.VerdictGoto, Chain: s.targets[i]},
		})
	}
	b.setID++
	spread := &nftables.Set{Table: ourTable, ID: b.setID, Name: "__map%d", Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
	elems := make([]nftables.SetElement, len(s.targets))
	for i, t := range s.targets {
		elems[i] = nftables.SetElement{Key: spreadKey(i), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: t}}
	}
	if err := b.c.AddSet(spread, elems); err != nil {
		return fmt.Errorf("spread map of %s: %w", name, err)
	}
	b.n += 2
	b.addRule(name, []expr.Any{
		&expr.Numgen{Register: 1, Modulus: uint32(len(s.targets)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, SetName: spread.Name, SetID: spread.ID, IsDestRegSet: true, DestRegister: 0},
	})
	return nil
}

// spreadKey is key i of a numgen map. numgen writes its number in host
// byte order, so the keys are too. (The library marks anonymous sets
// big endian, so `nft list` shows key 1 as 16777216 on little-endian
// machines; the kernel compares bytes and is not misled.)
func spreadKey(i int) []byte { return binaryutil.NativeEndian.PutUint32(uint32(i)) }

// endpointType is the data of an endpoint map: ipv4_addr . inet_service.
var endpointType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)

func endpointVal(e netip.AddrPort) []byte {
	v := make([]byte, 8)
	a := e.Addr().As4()
	copy(v, a[:])
	binary.BigEndian.PutUint16(v[4:], e.Port())
	return v
}

// guardPortRule: [ip daddr A] meta l4proto P th dport N goto local-only
func guardPortRule(lp LocalPort) []expr.Any {
	var exprs []expr.Any
	if a := lp.Addr.Addr(); !a.IsUnspecified() {
		a4 := a.As4()
		exprs = append(exprs,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a4[:]})
	}
	return append(exprs,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNum(lp.Proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(lp.Addr.Port())},
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: chainLocalOnly})
}

// localOnlyRules:
//
//	iifname "lo" accept
//	iifname IFACE counter drop
//	jump local-pods
//	counter drop
func localOnlyRules(iface string) [][]expr.Any {
	return [][]expr.Any{
		{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
			&expr.Verdict{Kind: expr.VerdictAccept}},
		{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(iface)},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop}},
		{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainLocalPods}},
		{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}},
	}
}

// podRule: ip saddr PFX fib saddr . iif oif != 0 accept. The fib check
// is strict reverse-path: a source in the pod CIDR counts only if it
// arrived on the interface its pods are routed through, so a neighbour
// cannot claim a pod address.
func podRule(p netip.Prefix) []expr.Any {
	a := p.Addr().As4()
	exprs := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}}
	if p.Bits() < 32 {
		m := netip.PrefixFrom(netip.AddrFrom4([4]byte{0xff, 0xff, 0xff, 0xff}), p.Bits()).Masked().Addr().As4()
		exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m[:], Xor: []byte{0, 0, 0, 0}})
	}
	return append(exprs,
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
		&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictAccept})
}

// queue adds p's changes, in plan order (see plan), towards rs.
func (b *batch) queue(p *plan, rs *ruleset) error {
	c := b.c
	if p.pods {
		// One batch: packets see the old rules or the new, never none.
		c.FlushChain(chainRef(chainLocalPods))
		b.n++
		for _, pfx := range rs.pods {
			b.addRule(chainLocalPods, podRule(pfx))
		}
	}
	if err := b.elems(c.SetDeleteElements, b.svcMap, p.delPortals, nil); err != nil {
		return err
	}
	if err := b.elems(c.SetDeleteElements, b.noEps, p.delRejects, nil); err != nil {
		return err
	}
	for _, ch := range p.flush {
		c.FlushChain(chainRef(ch))
		b.n++
	}
	for _, ch := range p.delChains {
		c.DelChain(chainRef(ch))
		b.n++
	}
	for _, s := range p.delSets {
		c.DelSet(affSet(s))
		b.n++
	}
	for _, s := range p.addSets {
		b.setID++
		set := affSet(s)
		set.ID = b.setID
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("set %s: %w", s, err)
		}
		b.n++
	}
	for _, ch := range p.addChains {
		c.AddChain(chainRef(ch))
		b.n++
	}
	for _, ch := range p.fill {
		if err := b.fillChain(ch, rs.chains[ch]); err != nil {
			return err
		}
	}
	if err := b.elems(c.SetAddElements, b.svcMap, p.addPortals, rs.portals); err != nil {
		return err
	}
	return b.elems(c.SetAddElements, b.noEps, p.addRejects, nil)
}

// maxElemsPerMsg keeps a set element message's element list, a netlink
// attribute with a 16-bit length, well below 64 KiB (a services map
// element with its chain name is about 100 bytes).
const maxElemsPerMsg = 256

// elems queues ps as element messages of at most maxElemsPerMsg each.
func (b *batch) elems(op func(*nftables.Set, []nftables.SetElement) error, s *nftables.Set, ps []portal, targets map[portal]string) error {
	for len(ps) > 0 {
		n := min(len(ps), maxElemsPerMsg)
		if err := op(s, portalElems(ps[:n], targets)); err != nil {
			return fmt.Errorf("%s elements: %w", s.Name, err)
		}
		b.n++
		ps = ps[n:]
	}
	return nil
}

// portalElems makes set elements of ps; with targets, vmap elements
// that goto each portal's chain.
func portalElems(ps []portal, targets map[portal]string) []nftables.SetElement {
	out := make([]nftables.SetElement, len(ps))
	for i, p := range ps {
		out[i] = nftables.SetElement{Key: portalKey(p)}
		if targets != nil {
			out[i].VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: targets[p]}
		}
	}
	return out
}

// queueTable replaces our table (deleting it first if exists) with one
// holding, with services, the base chains, their rules and the two
// portal sets, and with guard ports the input guard (local-pods is
// created empty; queue fills it). Not deleting a table that is not there
// spares the kernel a teardown, which the next batch would wait for.
func (b *batch) queueTable(iface string, exists, services bool, guard []LocalPort) error {
	c := b.c
	if exists {
		// "add; delete" makes the delete succeed even if the table went
		// since we looked.
		c.AddTable(ourTable)
		c.DelTable(ourTable)
		b.n += 2
	}
	c.AddTable(ourTable)
	b.n++
	accept := nftables.ChainPolicyAccept
	if services {
		for _, s := range []*nftables.Set{b.svcMap, b.noEps} {
			b.setID++
			s.ID = b.setID
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("set %s: %w", s.Name, err)
			}
			b.n++
		}
		for _, bc := range baseChains {
			c.AddChain(&nftables.Chain{Name: bc.name, Table: ourTable, Type: bc.typ, Hooknum: bc.hook, Priority: bc.prio, Policy: &accept})
			b.n++
			for _, r := range bc.rules(iface) {
				b.addRule(bc.name, r)
			}
		}
	}
	if len(guard) > 0 {
		// Regular chains first: the base chain's rules refer to them.
		c.AddChain(chainRef(chainLocalPods))
		c.AddChain(chainRef(chainLocalOnly))
		b.n += 2
		for _, r := range localOnlyRules(iface) {
			b.addRule(chainLocalOnly, r)
		}
		c.AddChain(&nftables.Chain{Name: chainFilterInput, Table: ourTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		b.n++
		for _, lp := range guard {
			b.addRule(chainFilterInput, guardPortRule(lp))
		}
	}
	return nil
}

// conn opens a netlink connection for one operation, in the configured
// namespace. Socket buffers are sized for msgs messages (sent in one
// batch, acknowledged one by one) and the socket gives up at ctx's
// deadline.
func (p *Proxy) conn(ctx context.Context, msgs *int) (*nftables.Conn, func(), error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		if d, ok := ctx.Deadline(); ok {
			if err := c.SetDeadline(d); err != nil {
				return err
			}
		}
		n := 1
		if msgs != nil {
			n = *msgs
		}
		// Acks are queued whole until we read them; the kernel's
		// default buffers hold a few hundred. Forcing needs
		// CAP_NET_ADMIN, which programming rules needs anyway.
		size := 1<<20 + n*2048
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size))
		}); err != nil {
			return err
		}
		return serr
	})}
	closeNS := func() {}
	if p.cfg.NetNS != "" {
		f, err := os.Open(p.cfg.NetNS)
		if err != nil {
			return nil, nil, fmt.Errorf("network namespace: %w", err)
		}
		closeNS = func() { f.Close() }
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		closeNS()
		return nil, nil, err
	}
	return c, closeNS, nil
}

// tableUse returns our table's use count (chains and named sets), or
// -1 when the table does not exist. nftables v0.3.0 decodes the
// big-endian NFTA_TABLE_USE in host byte order, so callers compare with
// useMatches.
func tableUse(c *nftables.Conn) (int64, error) {
	tabs, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return 0, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tabs {
		if t.Name == tableName {
			return int64(t.Use), nil
		}
	}
	return -1, nil
}

// useMatches reports whether a use count from tableUse is want, in
// either byte order (so a library that fixes the decoding keeps working).
func useMatches(use int64, want int) bool {
	return use >= 0 && (use == int64(want) || int64(bits.ReverseBytes32(uint32(use))) == int64(want))
}

// wantUse is the table use count of a table holding rs: its chains and
// named sets (anonymous sets belong to their rule and are not counted).
func wantUse(rs *ruleset) int {
	n := len(rs.chains) + len(rs.sets)
	if rs.services {
		n += len(baseChains) + 2
	}
	if rs.guard {
		n += 3 // filter-input, local-only, local-pods
	}
	return n
}

// kubeProxyPresent reports whether kube-proxy programs this namespace
// through nftables: its nftables-mode table "kube-proxy", or its
// iptables-mode chain KUBE-SERVICES in an iptables-nft table.
func kubeProxyPresent(c *nftables.Conn) (bool, error) {
	tabs, err := c.ListTables()
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tabs {
		if t.Name == "kube-proxy" {
			return true, nil
		}
	}
	chains, err := c.ListChains()
	if err != nil {
		return false, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Name == "KUBE-SERVICES" {
			return true, nil
		}
	}
	return false, nil
}

// legacyPrefix names the chains the iptables backend (before nftables)
// created in the nat, filter and mangle tables.
const legacyPrefix = "EDGEWIRE-"

// removeLegacy deletes chains and jump rules an agent of the iptables
// era left in iptables-nft's tables, in one batch. It reports how many
// chains it removed.
func removeLegacy(c *nftables.Conn) (int, error) {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return 0, fmt.Errorf("list chains: %w", err)
	}
	ours := map[string][]*nftables.Chain{} // table -> EDGEWIRE-* chains
	var builtin []*nftables.Chain
	for _, ch := range chains {
		switch t := ch.Table.Name; {
		case t != "nat" && t != "filter" && t != "mangle":
		case strings.HasPrefix(ch.Name, legacyPrefix):
			ours[t] = append(ours[t], ch)
		case ch.Hooknum != nil:
			builtin = append(builtin, ch)
		}
	}
	if len(ours) == 0 {
		return 0, nil
	}
	n := 0
	for _, ch := range builtin {
		if len(ours[ch.Table.Name]) == 0 {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return 0, fmt.Errorf("rules of %s %s: %w", ch.Table.Name, ch.Name, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if v, ok := e.(*expr.Verdict); ok && strings.HasPrefix(v.Chain, legacyPrefix) {
					if err := c.DelRule(r); err != nil {
						return 0, err
					}
					break
				}
			}
		}
	}
	for _, list := range ours {
		for _, ch := range list {
			c.FlushChain(ch)
		}
	}
	for _, list := range ours {
		for _, ch := range list {
			c.DelChain(ch)
			n++
		}
	}
	if err := c.Flush(); err != nil {
		return 0, fmt.Errorf("nftables batch: %w", err)
	}
	return n, nil
}
