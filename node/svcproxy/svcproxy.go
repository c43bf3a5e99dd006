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
	"regexp"
	"sync"
	"time"

	"github.com/edgewire/edgewire/node/services"
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
	// ModeOff never touches the firewall.
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

// Config configures a Proxy.
type Config struct {
	Mode      Mode   // "" means auto
	Interface string // overlay (WireGuard) interface for MASQUERADE and MSS clamping; required unless Mode is off
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

	mu     sync.Mutex // serialises Apply and Cleanup; guards the fields below
	active *bool      // ModeAuto resolved on the first Apply; nil until then
	loaded *ruleset   // what the kernel holds; nil: unknown, the next Apply replaces the table

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
	if cfg.Mode != ModeOff && !ifaceName.MatchString(cfg.Interface) {
		return nil, fmt.Errorf("services: overlay interface %q is not a valid interface name", cfg.Interface)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Proxy{cfg: cfg, log: cfg.Logger.With("component", "svcproxy")}, nil
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
func (p *Proxy) Apply(ctx context.Context, t *services.Table) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	on, err := p.activeLocked(ctx)
	if err != nil || !on {
		return err
	}
	start := time.Now()
	changed, err := p.applyLocked(ctx, t)
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
	p.log.Info("service rules applied", "services", t.Len(), "duration", d)
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

// applyLocked sends the batch that turns p.loaded into t and reports
// whether it sent one.
func (p *Proxy) applyLocked(ctx context.Context, t *services.Table) (bool, error) {
	want, err := render(t, p.log)
	if err != nil {
		return false, fmt.Errorf("service rules: %w", err)
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
	if full {
		if n, err := removeLegacy(c); err != nil {
			p.log.Warn("could not remove iptables chains of an older edgewire", "err", err)
		} else if n > 0 {
			p.log.Info("removed iptables chains of an older edgewire", "chains", n)
		}
		old = emptyRuleset()
	}
	pl := diff(old, want)
	if !full && pl.empty() {
		return false, nil
	}
	p.loaded = nil // unknown until the batch is in
	b := newBatch(c)
	if full {
		if err := b.queueTable(p.cfg.Interface, use >= 0); err != nil {
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
// left. It is a no-op in mode off.
func (p *Proxy) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Mode == ModeOff {
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
