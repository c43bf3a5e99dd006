// Package svcproxy makes Kubernetes Service ClusterIPs work on a node
// without kube-proxy: it programs ClusterIP:port -> ready endpoint DNAT as
// iptables rules in edgewire's own chains, the way kube-proxy's iptables
// mode does, so an edge node reaches Services over the overlay.
//
// Each Apply renders the whole rule set and loads what changed with
// `iptables-restore --noflush`, per table in the order filter, mangle, nat
// (so a nat failure never leaves DNAT without its REJECTs and clamping).
// Only chains whose rules differ from the last load are written; chains no
// longer rendered are flushed and deleted in the same transaction; an
// Apply with nothing to change runs no restore. A table's changes are one
// atomic transaction up to maxRestoreLines lines; bigger rewrites (the
// first Apply of a large cluster) are split into batches, because
// iptables-nft's restore time grows superlinearly with transaction size
// (see applyTable for the ordering that keeps every batch consistent).
// Cleanup removes everything. Only IPv4 is programmed: IPv6 cluster IPs
// and endpoints are skipped (logged at debug level).
//
// Layout (<h>: the first 15 base32 characters of a sha256, see chainName;
// rules also carry -m comment --comment <ns>/<name>[:<port>]):
//
//	nat     PREROUTING, OUTPUT    -m comment --comment edgewire -j EDGEWIRE-SERVICES
//	nat     POSTROUTING           -m comment --comment edgewire -j EDGEWIRE-POSTROUTING
//	nat     EDGEWIRE-SERVICES     per Service port with an IPv4 cluster IP and ready endpoints:
//	                                -d <clusterIP>/32 -p <proto> --dport <port> -j EDGEWIRE-SVC-<h(ns/name/port/PROTO)>
//	nat     EDGEWIRE-SVC-<h>      with ClientIP affinity, first for each endpoint:
//	                                -m recent --name EDGEWIRE-SEP-<h> --rcheck --seconds <timeout> --reap -j EDGEWIRE-SEP-<h>
//	                              then for endpoint i of n (sorted by ip:port), the last unconditional:
//	                                -m statistic --mode random --probability 1/(n-i) -j EDGEWIRE-SEP-<h>
//	nat     EDGEWIRE-SEP-<h>      per endpoint, <h(ns/name/port/PROTO/ip:port)>:
//	                                -j MARK --or-mark 0x4000
//	                                -p <proto> [-m recent --name EDGEWIRE-SEP-<h> --set] -j DNAT --to-destination <ip:port>
//	nat     EDGEWIRE-POSTROUTING  -o <iface> -m mark --mark 0x4000/0x4000 -j MASQUERADE
//	filter  OUTPUT, FORWARD       -m comment --comment edgewire -j EDGEWIRE-SERVICES
//	filter  EDGEWIRE-SERVICES     per Service port with an IPv4 cluster IP and no ready endpoint:
//	                                -d <clusterIP>/32 -p <proto> --dport <port> -j REJECT
//	mangle  FORWARD, OUTPUT       -m comment --comment edgewire -j EDGEWIRE-MSS
//	mangle  EDGEWIRE-MSS          -o <iface> -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
//	                              -i <iface> -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
//
// An endpoint contributes its first IPv4 address. Chain names are at most
// 28 characters, the iptables limit (kube-proxy's 16-character hash would
// make "EDGEWIRE-SVC-" names 29).
//
// Jump rules are inserted first in their built-in chain, only when
// `iptables -C` does not find them, so applies never duplicate them.
// The masquerade mark is kube-proxy's bit; with --services=on on a node
// that also runs kube-proxy, kube-proxy masquerades our marked traffic too.
package svcproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgewire/edgewire/node/services"
)

// Mode is the --services setting.
type Mode string

const (
	// ModeAuto programs rules unless kube-proxy already serves the node
	// (its nat chain KUBE-SERVICES exists).
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
	// Exec runs a command and returns its combined output (nil: os/exec).
	// Tests use it to run inside a namespace ("ip netns exec NS ..." prefix).
	Exec func(ctx context.Context, argv ...string) ([]byte, error)
}

// Stats counts Apply outcomes.
type Stats struct {
	Applies           int64         // applies that loaded rules
	Skipped           int64         // applies with nothing to change
	Errors            int64         // failed applies
	LastApplyDuration time.Duration // of the last apply that loaded rules
}

// Proxy programs a services.Table into iptables. Its methods are safe for
// concurrent use; Apply and Cleanup run one at a time.
type Proxy struct {
	cfg  Config
	log  *slog.Logger
	exec func(ctx context.Context, argv ...string) ([]byte, error)

	mu     sync.Mutex // serialises Apply and Cleanup; guards the fields below
	active *bool      // ModeAuto resolved on the first Apply; nil until then
	state  map[string]*tableState

	statsMu sync.Mutex // guards stats
	stats   Stats
}

// tableState is what Proxy knows is loaded in one table: each of our
// chains and its rules. A missing entry means unknown (first apply, or
// after an error): the next apply reads the chain names from iptables-save
// and rewrites every chain.
type tableState struct {
	chains map[string]string // chain -> rules as rendered
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
	if cfg.Exec == nil {
		cfg.Exec = runCommand
	}
	return &Proxy{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "svcproxy"),
		exec:  cfg.Exec,
		state: map[string]*tableState{},
	}, nil
}

func runCommand(ctx context.Context, argv ...string) ([]byte, error) {
	return exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
}

// Enabled reports whether rules should be programmed: Mode on or off, or
// for auto whether kube-proxy's nat chain KUBE-SERVICES is absent. It
// checks afresh on each call.
func (p *Proxy) Enabled(ctx context.Context) (bool, error) {
	switch p.cfg.Mode {
	case ModeOn:
		return true, nil
	case ModeOff:
		return false, nil
	}
	out, err := p.exec(ctx, "iptables-save", "-t", tableNAT)
	if err != nil {
		return false, fmt.Errorf("detect kube-proxy: iptables-save -t nat: %w: %s", err, trim(out))
	}
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, ":KUBE-SERVICES ") {
			return false, nil
		}
	}
	return true, nil
}

// Apply makes the kernel's rules match t. It is a no-op in mode off, and
// in mode auto when the first Apply found kube-proxy (the decision is kept
// for the Proxy's lifetime). On error the failed table keeps its previous
// rules (tables restored before it keep their new ones) and the next
// Apply retries from what the kernel holds.
func (p *Proxy) Apply(ctx context.Context, t *services.Table) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	on, err := p.activeLocked(ctx)
	if err != nil || !on {
		return err
	}
	start := time.Now()
	loaded := 0
	for _, tr := range render(t, p.cfg.Interface, p.log) {
		changed, err := p.applyTable(ctx, tr)
		if err != nil {
			p.count(func(s *Stats) { s.Errors++ })
			return err
		}
		if changed {
			loaded++
		}
	}
	if loaded == 0 {
		p.count(func(s *Stats) { s.Skipped++ })
		return nil
	}
	d := time.Since(start)
	p.count(func(s *Stats) { s.Applies++; s.LastApplyDuration = d })
	p.log.Info("service rules applied", "services", t.Len(), "tables", loaded, "duration", d)
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
			p.log.Info("kube-proxy serves this node (nat chain KUBE-SERVICES exists); not programming Services")
		}
		p.active = &on
	}
	return *p.active, nil
}

// maxRestoreLines bounds one iptables-restore transaction. iptables-nft
// 1.8.9 takes superlinear time in the size of a transaction (measured in a
// namespace, 1,000 Services x 10 endpoints, about 42,000 lines: 24-42 s
// as one transaction, 2.9 s as eleven of at most ~5,000 lines), so large
// rewrites are split; see batches.
const maxRestoreLines = 5000

// applyTable writes the chains of tr that differ from what is loaded,
// deletes chains no longer rendered and adds missing jump rules. It
// reports whether it loaded anything.
//
// Unchanged chains are left out, so a change to one Service is a small
// transaction. A rewrite above maxRestoreLines is split into batches: each
// Service port's SVC chain goes with its SEP chains, and the last batch
// holds the portal chain, the jumps and the stale-chain deletions, so new
// Services appear and old ones vanish at once, and a Service whose chains
// are rewritten in an earlier batch switches from its old to its new
// endpoints in one step. A failure part-way leaves the batches before it
// loaded (each consistent on its own) and makes the next Apply rewrite
// everything.
func (p *Proxy) applyTable(ctx context.Context, tr *tableRules) (bool, error) {
	missing, err := p.missingJumps(ctx, tr.name)
	if err != nil {
		return false, err
	}
	st := p.state[tr.name]
	var write, stale []string
	if st == nil {
		existing, err := p.ourChains(ctx, tr.name)
		if err != nil {
			return false, err
		}
		for c := range existing {
			if _, ok := tr.rules[c]; !ok {
				stale = append(stale, c)
			}
		}
		write = tr.chains
	} else {
		for _, c := range tr.chains {
			if old, ok := st.chains[c]; !ok || old != tr.rules[c] {
				write = append(write, c)
			}
		}
		for c := range st.chains {
			if _, ok := tr.rules[c]; !ok {
				stale = append(stale, c)
			}
		}
		if len(write) == 0 && len(stale) == 0 && len(missing) == 0 {
			return false, nil
		}
	}
	slices.Sort(stale)
	delete(p.state, tr.name) // unknown until every batch is loaded
	batches := tr.batches(write, maxRestoreLines)
	for i, b := range batches {
		var j, s []string
		if i == len(batches)-1 {
			j, s = missing, stale
		}
		if err := p.restore(ctx, tr.name, tr.input(b, j, s)); err != nil {
			if len(batches) > 1 {
				err = fmt.Errorf("batch %d of %d: %w", i+1, len(batches), err)
			}
			return false, err
		}
	}
	p.state[tr.name] = &tableState{chains: tr.rules}
	p.log.Debug("service rules table loaded", "table", tr.name, "chains_written", len(write), "batches", len(batches),
		"stale", len(stale), "jumps_added", len(missing))
	return true, nil
}

// missingJumps returns the restore lines that insert the table's jump
// rules iptables -C does not find (any failure counts as missing; the
// restore then reports a real problem).
func (p *Proxy) missingJumps(ctx context.Context, table string) ([]string, error) {
	var lines []string
	for _, j := range jumps {
		if j.table != table {
			continue
		}
		argv := append([]string{"iptables", "-w", "-t", table, "-C", j.chain}, j.spec()...)
		if _, err := p.exec(ctx, argv...); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lines = append(lines, j.insertLine())
		}
	}
	return lines, nil
}

// save returns iptables-save output for table.
func (p *Proxy) save(ctx context.Context, table string) (string, error) {
	out, err := p.exec(ctx, "iptables-save", "-t", table)
	if err != nil {
		return "", fmt.Errorf("iptables-save -t %s: %w: %s", table, err, trim(out))
	}
	return string(out), nil
}

// ourChains lists the EDGEWIRE-* chains in table.
func (p *Proxy) ourChains(ctx context.Context, table string) (map[string]bool, error) {
	out, err := p.save(ctx, table)
	if err != nil {
		return nil, err
	}
	chains := map[string]bool{}
	for line := range strings.Lines(out) {
		if name, ok := strings.CutPrefix(line, ":"+chainPrefix); ok {
			name, _, _ = strings.Cut(name, " ")
			chains[chainPrefix+strings.TrimSpace(name)] = true
		}
	}
	return chains, nil
}

var errorLine = regexp.MustCompile(`line:? (\d+)`)

// restore loads input with iptables-restore --noflush. The input goes
// through a temporary file because Exec has no stdin.
func (p *Proxy) restore(ctx context.Context, table, input string) error {
	f, err := os.CreateTemp("", "edgewire-"+table+"-*.rules")
	if err != nil {
		return fmt.Errorf("iptables-restore %s: %w", table, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(input); err != nil {
		f.Close()
		return fmt.Errorf("iptables-restore %s: write %s: %w", table, f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("iptables-restore %s: write %s: %w", table, f.Name(), err)
	}
	// "-w" must not be followed by the file name: iptables would read it
	// as the wait time and restore from stdin.
	out, err := p.exec(ctx, "iptables-restore", "-w", "--noflush", f.Name())
	if err == nil {
		return nil
	}
	msg := trim(out)
	// Quote the line iptables-restore complains about; the file is gone
	// by the time anyone reads the log.
	if m := errorLine.FindStringSubmatch(msg); m != nil {
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			lines := strings.Split(input, "\n")
			if n <= len(lines) {
				msg += fmt.Sprintf(" [line %d: %s]", n, lines[n-1])
			}
		}
	}
	return fmt.Errorf("iptables-restore %s table (transaction not applied): %w: %s", table, err, msg)
}

// Cleanup removes the jump rules and every EDGEWIRE-* chain from the nat,
// filter and mangle tables, including chains from earlier runs. It is a
// no-op in mode off.
func (p *Proxy) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Mode == ModeOff {
		return nil
	}
	var errs []error
	// nat first: stop DNAT before the REJECTs and clamping go.
	for _, table := range []string{tableNAT, tableFilter, tableMangle} {
		delete(p.state, table)
		if err := p.cleanupTable(ctx, table); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.log.Info("service rules removed")
	return nil
}

func (p *Proxy) cleanupTable(ctx context.Context, table string) error {
	out, err := p.save(ctx, table)
	if err != nil {
		return err
	}
	var chains, deletes []string
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		if name, ok := strings.CutPrefix(line, ":"+chainPrefix); ok {
			name, _, _ = strings.Cut(name, " ")
			chains = append(chains, chainPrefix+name)
			continue
		}
		rule, ok := strings.CutPrefix(line, "-A ")
		if !ok || strings.HasPrefix(rule, chainPrefix) {
			continue // not a rule, or in our chain (flushed below)
		}
		if strings.Contains(rule, " -j "+chainPrefix) || strings.Contains(rule, " -g "+chainPrefix) {
			deletes = append(deletes, "-D "+rule)
		}
	}
	if len(chains) == 0 && len(deletes) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("*" + table + "\n")
	for _, c := range chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, d := range deletes {
		b.WriteString(d + "\n")
	}
	for _, c := range chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return p.restore(ctx, table, b.String())
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

func trim(b []byte) string { return strings.TrimSpace(string(b)) }
