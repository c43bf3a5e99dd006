// Package svcproxy makes Kubernetes Service ClusterIPs work on a node
// without kube-proxy: it programs ClusterIP:port -> ready endpoint DNAT
// into edgewire's own nftables table, talking netlink directly, so an edge
// node reaches Services over the overlay.
//
// Each Apply renders the desired table, diffs it against what the last
// Apply loaded and sends the difference as one netlink batch, which the
// kernel applies atomically: a batch that fails changes nothing. One
// endpoint change touches only that Service port's chains; an Apply with
// nothing to change sends no batch (one netlink query checks the table is
// still there). The first Apply (and the first after an error, or after
// someone removed our table or chains) replaces the whole table in one
// batch. Cleanup deletes the table. Only IPv4 is programmed: IPv6
// cluster IPs and endpoints are skipped (logged at debug level).
//
// The same table holds the input guard of the agent's servers for local
// clients (DNS, SOCKS5; Config.LocalOnly): traffic to them that arrives
// on the overlay interface, or from anything but lo and the node's local
// pod CIDRs, is dropped, so an overlay peer or a LAN neighbour that
// routes the DNS address through this node gets nothing. The guard is
// there in every mode, off included (then it is all the table holds),
// its pod rules are swapped in one batch when the pod CIDRs change
// (SetPodCIDRs), and Cleanup removes it with the rest.
//
// Layout of table ip edgewire (<key> is <ns>/<name>/<proto>[/<port name>],
// <ep> is <ip>/<port>; endpoints are sorted by address and port):
//
//	map services       ipv4_addr . inet_proto . inet_service : verdict
//	                     per portal of a Service port with ready endpoints: goto svc-<key>
//	set no-endpoints   ipv4_addr . inet_proto . inet_service
//	                     per portal of a Service port without ready endpoints
//	chain nat-prerouting, nat-output (nat, dstnat priority)
//	                     ip daddr . meta l4proto . th dport vmap @services
//	chain nat-postrouting (nat, srcnat priority)
//	                     meta mark & 0x4000 != 0 oifname <iface> masquerade
//	chain filter-output, filter-forward (filter priority)
//	                     ip daddr . meta l4proto . th dport @no-endpoints reject
//	                     {o,i}ifname <iface> tcp flags & (syn|rst) == syn tcp option maxseg size set rt mtu
//	chain svc-<key>    without affinity, one rule:
//	                     meta l4proto <proto> meta mark set meta mark | 0x4000
//	                       dnat to numgen random mod N map { 0 : <ip0> . <port0>, ... }
//	                     (dnat to <ip>:<port> for one endpoint)
//	                   with ClientIP affinity, first for each endpoint
//	                     ip saddr @aff-<key>__<ep> goto ep-<key>__<ep>
//	                   then
//	                     numgen random mod N vmap { 0 : goto ep-<key>__<ep0>, ... }
//	chain ep-<key>__<ep> (affinity only)
//	                     meta l4proto <proto> meta mark set meta mark | 0x4000
//	                       update @aff-<key>__<ep> { ip saddr timeout T } dnat to <ip>:<port>
//	set aff-<key>__<ep> ipv4_addr, dynamic, timeout: clients recently sent to <ep>
//	chain filter-input (filter priority, hook input; guard only)
//	                     per local-only port: [ip daddr A] meta l4proto P th dport N goto local-only
//	chain local-only   iifname "lo" accept
//	                   iifname <iface> counter drop
//	                   jump local-pods
//	                   counter drop
//	chain local-pods   per local pod CIDR:
//	                     ip saddr <cidr> fib saddr . iif oif != 0 accept (strict reverse path)
//
// Without Service rules (mode off, or kube-proxy found in mode auto) the
// table holds only the guard chains.
//
// Without affinity a Service port is three kernel objects (chain, rule,
// endpoint map) whatever its endpoint count, which is what makes 1,000
// Services x 10 endpoints one quick batch; per-endpoint chains exist only
// where affinity needs them, as in kube-proxy's nftables mode.
//
// `nft list` shows numgen map keys after the first as multiples of
// 16777216 on little-endian machines (see spreadKey); the kernel is not
// misled. An endpoint contributes its first IPv4 address. The masquerade mark is
// kube-proxy's bit; with --services=on on a node that also runs
// kube-proxy, kube-proxy masquerades our marked traffic too. Chains an
// agent of the iptables era left behind (EDGEWIRE-* in iptables-nft's
// nat, filter and mangle tables) are removed by the first Apply and by
// Cleanup.
package svcproxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/edgewire/edgewire/types/services"
)

// Mode is the --services setting.
type Mode string

const (
	// ModeAuto programs rules unless kube-proxy already serves the node
	// (its nftables table "kube-proxy" exists, or its nat chain
	// KUBE-SERVICES in iptables-nft or iptables-legacy).
	ModeAuto Mode = "auto"
	// ModeOn always programs rules.
	ModeOn Mode = "on"
	// ModeOff programs no Service rules. (The input guard of
	// Config.LocalOnly is programmed in every mode.)
	ModeOff Mode = "off"
)

// ParseMode parses a --services flag value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeOn, ModeOff:
		return m, nil
	}
	return "", fmt.Errorf("services mode %q: want auto, on or off", s)
}

// LocalPort is a server port on this node that serves local clients
// only (the agent's DNS and SOCKS5).
type LocalPort struct {
	Addr  netip.AddrPort    // IPv4 address (0.0.0.0: every local address) and port
	Proto services.Protocol // TCP or UDP
}

func (lp LocalPort) String() string { return lp.Addr.String() + "/" + string(lp.Proto) }

// Config configures a Proxy.
type Config struct {
	Mode Mode // "" means auto
	// Interface is the overlay (WireGuard) interface: MASQUERADE and MSS
	// clamping, and the guard drops what arrives on it. Required unless
	// Mode is off and LocalOnly is empty.
	Interface string
	// LocalOnly are the ports of servers for local clients only. The
	// input guard drops traffic to them that arrives on Interface, or
	// from a source other than lo and the local pod CIDRs (SetPodCIDRs),
	// in every mode, off included. IPv4 only, like the rest of the
	// table: IPv6 ports are skipped (logged).
	LocalOnly []LocalPort
	Logger    *slog.Logger
	// NetNS is the path of the network namespace to program, such as
	// /var/run/netns/NAME; "" is the caller's. Tests and benchmarks use
	// it to work inside a lab namespace.
	NetNS string
}

// Stats counts Apply outcomes.
type Stats struct {
	Applies           int64         // applies that loaded rules
	Skipped           int64         // applies with nothing to change
	Errors            int64         // failed applies
	LastApplyDuration time.Duration // of the last apply that loaded rules
}

// Proxy programs a services.Table into nftables. Its methods are safe for
// concurrent use; Apply and Cleanup run one at a time.
type Proxy struct {
	cfg Config
	log *slog.Logger

	guard []LocalPort // IPv4 ports of cfg.LocalOnly

	mu     sync.Mutex      // serialises Apply, SetPodCIDRs and Cleanup; guards the fields below
	active *bool           // ModeAuto resolved on the first Apply; nil until then
	loaded *ruleset        // what the kernel holds; nil: unknown, the next Apply replaces the table
	table  *services.Table // of the last successful Apply
	pods   []netip.Prefix  // local pod CIDRs, normalised (podCIDRs)

	// breakBatch (tests only) ends each batch with a message the kernel
	// refuses, to show a failed batch changes nothing.
	breakBatch bool

	statsMu sync.Mutex // guards stats
	stats   Stats
}

var ifaceName = regexp.MustCompile(`^[A-Za-z0-9_.@+-]{1,15}$`)

// New validates cfg and returns a Proxy. It does not touch the firewall.
func New(cfg Config) (*Proxy, error) {
	if cfg.Mode == "" {
		cfg.Mode = ModeAuto
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	if (cfg.Mode != ModeOff || len(cfg.LocalOnly) > 0) && !ifaceName.MatchString(cfg.Interface) {
		return nil, fmt.Errorf("services: overlay interface %q is not a valid interface name", cfg.Interface)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger.With("src", "svcproxy")}
	for _, lp := range cfg.LocalOnly {
		if lp.Proto != services.TCP && lp.Proto != services.UDP {
			return nil, fmt.Errorf("services: local-only port %s: protocol %q, want TCP or UDP", lp, lp.Proto)
		}
		if !lp.Addr.IsValid() || lp.Addr.Port() == 0 {
			return nil, fmt.Errorf("services: local-only port %s needs an address and a port", lp)
		}
		lp.Addr = netip.AddrPortFrom(lp.Addr.Addr().Unmap(), lp.Addr.Port())
		if !lp.Addr.Addr().Is4() {
			p.log.Warn("local-only guard is IPv4 only; this port is guarded by its server alone", "port", lp)
			continue
		}
		if !slices.Contains(p.guard, lp) {
			p.guard = append(p.guard, lp)
		}
	}
	return p, nil
}

// Enabled reports whether rules should be programmed: Mode on or off, or
// for auto whether kube-proxy is absent. It checks afresh on each call.
func (p *Proxy) Enabled(ctx context.Context) (bool, error) {
	switch p.cfg.Mode {
	case ModeOn:
		return true, nil
	case ModeOff:
		return false, nil
	}
	c, done, err := p.conn(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("detect kube-proxy: %w", err)
	}
	defer done()
	present, err := kubeProxyPresent(c)
	if err == nil && !present {
		present, err = p.legacyKubeProxy(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("detect kube-proxy: %w", err)
	}
	return !present, nil
}

// Apply makes the kernel's rules match t. It is a no-op in mode off, and
// in mode auto when the first Apply found kube-proxy (the decision is kept
// for the Proxy's lifetime). On error nothing of t is applied, the
// previous rules stay in force, and the next Apply replaces the whole
// table.
//
// Without Service rules (mode off, or kube-proxy found) Apply still
// keeps the input guard of Config.LocalOnly in place.
func (p *Proxy) Apply(ctx context.Context, t *services.Table) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.syncLocked(ctx, t, p.pods); err != nil {
		return err
	}
	p.table = t
	return nil
}

// SetPodCIDRs replaces the local pod CIDRs the input guard accepts
// (besides lo) and programs them at once, in one batch with nothing
// else: the guard's pod rules are swapped atomically. Unchanged CIDRs
// cost nothing. The first call also installs the guard (and, with
// Service rules, an empty Service map), so the agent calls it before
// its servers listen. IPv6 prefixes are ignored.
func (p *Proxy) SetPodCIDRs(ctx context.Context, cidrs []netip.Prefix) error {
	pods := podCIDRs(cidrs)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.guard) == 0 {
		p.pods = pods // nothing programs them
		return nil
	}
	if p.loaded != nil && slices.Equal(p.pods, pods) && slices.Equal(p.loaded.pods, pods) {
		return nil
	}
	if err := p.syncLocked(ctx, p.table, pods); err != nil {
		return err
	}
	p.pods = pods
	return nil
}

// syncLocked makes the kernel hold t and pods, counting the outcome.
func (p *Proxy) syncLocked(ctx context.Context, t *services.Table, pods []netip.Prefix) error {
	svcOn, err := p.activeLocked(ctx)
	if err != nil {
		return err
	}
	if !svcOn && len(p.guard) == 0 {
		return nil
	}
	start := time.Now()
	changed, err := p.applyLocked(ctx, t, svcOn, pods)
	if err != nil {
		p.count(func(s *Stats) { s.Errors++ })
		return err
	}
	if !changed {
		p.count(func(s *Stats) { s.Skipped++ })
		return nil
	}
	d := time.Since(start)
	p.count(func(s *Stats) { s.Applies++; s.LastApplyDuration = d })
	if svcOn {
		p.log.Info("service rules applied", "services", t.Len(), "pod_cidrs", pods, "duration", d)
	} else {
		p.log.Info("local-only guard applied", "ports", p.guard, "pod_cidrs", pods, "duration", d)
	}
	return nil
}

func (p *Proxy) activeLocked(ctx context.Context) (bool, error) {
	if p.cfg.Mode == ModeOff {
		return false, nil
	}
	if p.active == nil {
		on, err := p.Enabled(ctx)
		if err != nil {
			return false, err
		}
		if !on {
			p.log.Info("kube-proxy serves this node; not programming Services")
		}
		p.active = &on
	}
	return *p.active, nil
}

// applyLocked sends the batch that turns p.loaded into t (with Service
// rules) and pods (with the guard) and reports whether it sent one.
func (p *Proxy) applyLocked(ctx context.Context, t *services.Table, svcOn bool, pods []netip.Prefix) (bool, error) {
	want := emptyRuleset()
	if svcOn {
		var err error
		if want, err = render(t, p.log); err != nil {
			return false, fmt.Errorf("service rules: %w", err)
		}
	}
	want.services = svcOn
	want.guard = len(p.guard) > 0
	if want.guard {
		want.pods = pods
	}
	var msgs int
	c, done, err := p.conn(ctx, &msgs)
	if err != nil {
		return false, fmt.Errorf("service rules: %w", err)
	}
	defer done()

	// Our table is ours alone, but a firewall reload (nft flush ruleset)
	// can remove it, or someone its chains: one netlink round trip
	// notices. (Rules flushed from chains that remain go unnoticed until
	// a full replace.)
	use, err := tableUse(c)
	if err != nil {
		return false, fmt.Errorf("service rules: %w", err)
	}
	old := p.loaded
	if old != nil && !useMatches(use, wantUse(old)) {
		p.log.Warn("service rules table changed behind our back; replacing it", "chains_and_sets", use, "want", wantUse(old))
		old = nil
	}
	full := old == nil
	if full && svcOn {
		if n, err := removeLegacy(c); err != nil {
			p.log.Warn("could not remove iptables chains of an older edgewire", "err", err)
		} else if n > 0 {
			p.log.Info("removed iptables chains of an older edgewire", "chains", n)
		}
	}
	if full {
		old = emptyRuleset()
	}
	pl := diff(old, want)
	if !full && pl.empty() {
		return false, nil
	}
	p.loaded = nil // unknown until the batch is in
	b := newBatch(c)
	if full {
		if err := b.queueTable(p.cfg.Interface, use >= 0, svcOn, p.guard); err != nil {
			return false, fmt.Errorf("service rules: %w", err)
		}
	}
	if err := b.queue(pl, want); err != nil {
		return false, fmt.Errorf("service rules: %w", err)
	}
	if p.breakBatch {
		c.DelChain(chainRef("no-such-chain"))
		b.n++
	}
	msgs = b.n
	sent := time.Now()
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("service rules: nftables batch of %d messages refused, nothing applied: %w", b.n, err)
	}
	p.loaded = want
	p.log.Debug("service rules batch loaded", append([]any{"full", full, "messages", b.n, "batch_duration", time.Since(sent)}, pl.counts()...)...)
	return true, nil
}

// Cleanup deletes our table and any iptables chains an older edgewire
// left (those only outside mode off). In mode off without LocalOnly
// ports it is a no-op.
func (p *Proxy) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Mode == ModeOff && len(p.guard) == 0 {
		return nil
	}
	p.loaded = nil
	msgs := 3
	c, done, err := p.conn(ctx, &msgs)
	if err != nil {
		return fmt.Errorf("remove service rules: %w", err)
	}
	defer done()
	c.AddTable(ourTable)
	c.DelTable(ourTable)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove service rules: delete table ip %s: %w", tableName, err)
	}
	if p.cfg.Mode == ModeOff {
		p.log.Info("local-only guard removed")
		return nil
	}
	if _, err := removeLegacy(c); err != nil {
		return fmt.Errorf("remove service rules: %w", err)
	}
	p.log.Info("service rules removed")
	return nil
}

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	return p.stats
}

func (p *Proxy) count(f func(*Stats)) {
	p.statsMu.Lock()
	f(&p.stats)
	p.statsMu.Unlock()
}
