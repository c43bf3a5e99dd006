package podnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const tableName = "edgewire-pods"

var ourTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: tableName}

// tableSpec is what the table holds.
type tableSpec struct {
	pods, routed []netip.Prefix
}

func (a *tableSpec) equal(b *tableSpec) bool {
	return a != nil && b != nil && slices.Equal(a.pods, b.pods) && slices.Equal(a.routed, b.routed)
}

// programLocked makes the kernel hold the rules for pods and routed; no
// pods removes the table.
func (m *Manager) programLocked(pods, routed []netip.Prefix) error {
	want := &tableSpec{pods: pods, routed: v4(append(slices.Clone(routed), pods...))}
	if len(pods) == 0 {
		if m.loaded != nil && len(m.loaded.pods) == 0 {
			return nil
		}
		if err := m.removeTable(); err != nil {
			return err
		}
		m.loaded = want
		return nil
	}
	if want.equal(m.loaded) {
		return nil
	}
	c, done, err := m.conn()
	if err != nil {
		return err
	}
	defer done()
	m.loaded = nil
	// Replace whole, atomically: the batch either applies or changes
	// nothing.
	c.AddTable(ourTable)
	c.DelTable(ourTable)
	c.AddTable(ourTable)
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: ourTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	masq := c.AddChain(&nftables.Chain{Name: "masq", Table: ourTable})
	for _, p := range want.pods {
		c.AddRule(&nftables.Rule{Table: ourTable, Chain: post, Exprs: append(matchPrefix(12, p), &expr.Verdict{Kind: expr.VerdictGoto, Chain: "masq"})})
	}
	for _, p := range want.routed {
		c.AddRule(&nftables.Rule{Table: ourTable, Chain: masq, Exprs: append(matchPrefix(16, p), &expr.Verdict{Kind: expr.VerdictReturn})})
	}
	c.AddRule(&nftables.Rule{Table: ourTable, Chain: masq, Exprs: []expr.Any{&expr.Masq{}}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("pod network: masquerade rules refused, nothing applied: %w", err)
	}
	m.loaded = want
	m.log.Info("pod masquerade rules applied", "pod_cidrs", want.pods, "not_masqueraded", want.routed)
	return nil
}

// matchPrefix matches the IPv4 address at offset (12 source, 16
// destination) of the network header against p.
func matchPrefix(offset uint32, p netip.Prefix) []expr.Any {
	a := p.Masked().Addr().As4()
	exprs := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		m := netip.PrefixFrom(netip.AddrFrom4([4]byte{0xff, 0xff, 0xff, 0xff}), p.Bits()).Masked().Addr().As4()
		exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m[:], Xor: []byte{0, 0, 0, 0}})
	}
	return append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]})
}

// removeTable deletes our table if it is there.
func (m *Manager) removeTable() error {
	c, done, err := m.conn()
	if err != nil {
		return err
	}
	defer done()
	c.AddTable(ourTable)
	c.DelTable(ourTable)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("pod network: remove table ip %s: %w", tableName, err)
	}
	return nil
}

// removeBridge deletes our bridge if it is there.
func (m *Manager) removeBridge() error {
	h, done, err := m.handle()
	if err != nil {
		return err
	}
	defer done()
	l, err := h.LinkByName(m.cfg.Bridge)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	if l.Type() != "bridge" {
		return fmt.Errorf("pod network: %s is a %s, not our bridge; left alone", m.cfg.Bridge, l.Type())
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("pod network: delete bridge %s: %w", m.cfg.Bridge, err)
	}
	m.log.Info("pod bridge removed", "bridge", m.cfg.Bridge)
	return nil
}

func (m *Manager) conn() (*nftables.Conn, func(), error) {
	if m.cfg.NetNS == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	f, err := os.Open(m.cfg.NetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("pod network: namespace: %w", err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return c, func() { f.Close() }, nil
}

func (m *Manager) handle() (*netlink.Handle, func(), error) {
	if m.cfg.NetNS == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, nil, err
		}
		return h, h.Close, nil
	}
	ns, err := netns.GetFromPath(m.cfg.NetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("pod network: namespace: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, nil, err
	}
	return h, func() { h.Close(); ns.Close() }, nil
}

// unattached returns the prefixes of ps that no interface other than our
// bridge has an address in, logging the others once.
func (m *Manager) unattached(ps []netip.Prefix) ([]netip.Prefix, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	h, done, err := m.handle()
	if err != nil {
		return nil, err
	}
	defer done()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("pod network: list links: %w", err)
	}
	var attached []netip.Prefix
	var where []string
	for _, l := range links {
		if l.Attrs().Name == m.cfg.Bridge {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("pod network: list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IPNet.IP)
			if !ok {
				continue
			}
			bits, _ := a.IPNet.Mask.Size()
			attached = append(attached, netip.PrefixFrom(ip.Unmap(), bits).Masked())
			where = append(where, l.Attrs().Name)
		}
	}
	var out []netip.Prefix
	for _, p := range ps {
		i := slices.IndexFunc(attached, p.Overlaps)
		if i < 0 {
			out = append(out, p)
			continue
		}
		if why := p.String() + " " + where[i]; !m.skipped[why] {
			m.log.Info("not a pod CIDR: an interface is attached to it", "prefix", p, "interface", where[i])
			m.skipped[why] = true
		}
	}
	return out, nil
}
