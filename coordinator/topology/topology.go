// Package topology keeps the agents' path reports (api.PathReport) in the
// coordinator's memory and builds the fleet's connectivity from them
// (types/topoview.View): which pairs talk directly and which through a
// relay, and why. Reports are per replica and never stored: an agent sends
// one when its stream opens, on change and every few minutes, so a new
// leader has the picture again within seconds of the fleet reconnecting.
package topology

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
	"github.com/edgewire/edgewire/types/topoview"
)

// Bounds of a report: what a node may say, and how often.
const (
	MaxPeers    = 1024 // peers per report
	maxWord     = 32   // path, candidate types, relay names, mapping
	maxFailure  = 256  // a failure reason
	MinInterval = time.Second
	// StaleAfter: a report older than this (the agent refreshes every
	// few minutes) no longer counts.
	StaleAfter = 15 * time.Minute
)

// Report is a node's checked path report.
type Report struct {
	At          time.Time
	NAT         topoview.NAT
	HomeRelay   string
	HomeRelayMs float64
	Peers       map[key.Public]topoview.Side
}

// ErrBadReport wraps what Parse refuses.
var ErrBadReport = errors.New("bad path report")

// Parse checks a report from the node self, received at now: bounded
// sizes, known words, printable strings, finite numbers, no peer twice
// and not itself. A report that fails is dropped whole.
func Parse(self key.Public, m *api.PathReport, now time.Time) (Report, error) {
	r := Report{At: now, Peers: map[key.Public]topoview.Side{}}
	if len(m.GetPeers()) > MaxPeers {
		return r, fmt.Errorf("%w: %d peers, at most %d", ErrBadReport, len(m.GetPeers()), MaxPeers)
	}
	if err := word("home relay", m.GetHomeRelay(), maxWord); err != nil {
		return r, err
	}
	ms, err := number("home relay latency", m.GetHomeRelayMs())
	if err != nil {
		return r, err
	}
	r.HomeRelay, r.HomeRelayMs = m.GetHomeRelay(), ms
	if n := m.GetNat(); n != nil {
		switch n.GetMapping() {
		case "", "endpoint-independent", "endpoint-dependent", "unknown":
		default:
			return r, fmt.Errorf("%w: NAT mapping %q", ErrBadReport, n.GetMapping())
		}
		if a := n.GetPublicAddr(); a != "" {
			if _, err := netip.ParseAddr(a); err != nil {
				return r, fmt.Errorf("%w: public address %q", ErrBadReport, a)
			}
		}
		r.NAT = topoview.NAT{Measured: n.GetMeasured(), UDP: n.GetUdp(), Mapping: n.GetMapping(), NoNAT: n.GetNoNat(), PublicAddr: n.GetPublicAddr()}
	}
	for _, p := range m.GetPeers() {
		if len(p.GetPublicKey()) != key.Size {
			return r, fmt.Errorf("%w: a peer key of %d bytes", ErrBadReport, len(p.GetPublicKey()))
		}
		k := key.Public(p.GetPublicKey())
		if k == self {
			return r, fmt.Errorf("%w: the node reports itself as a peer", ErrBadReport)
		}
		if _, dup := r.Peers[k]; dup {
			return r, fmt.Errorf("%w: peer %s twice", ErrBadReport, k)
		}
		switch p.GetPath() {
		case topoview.PathDirect, topoview.PathRelay, topoview.PathNone:
		default:
			return r, fmt.Errorf("%w: path %q", ErrBadReport, p.GetPath())
		}
		for _, c := range []string{p.GetLocalCandidate(), p.GetRemoteCandidate()} {
			switch c {
			case "", "host", "srflx", "prflx", "relay":
			default:
				return r, fmt.Errorf("%w: candidate type %q", ErrBadReport, c)
			}
		}
		if err := word("relay", p.GetRelay(), maxWord); err != nil {
			return r, err
		}
		if err := word("failure", p.GetLastFailure(), maxFailure); err != nil {
			return r, err
		}
		rtt, err := number("RTT", p.GetRttMs())
		if err != nil {
			return r, err
		}
		var since time.Time
		if ms := p.GetSinceUnixMs(); ms != 0 {
			since = time.UnixMilli(ms)
			// Clocks differ; a time in the future is the node's clock
			// ahead, not news from there.
			if since.After(now) || since.Year() < 2000 {
				since = now
			}
		}
		r.Peers[k] = topoview.Side{Path: p.GetPath(), Relay: p.GetRelay(), Local: p.GetLocalCandidate(), Remote: p.GetRemoteCandidate(),
			RTTMs: rtt, Since: since, LastFailure: p.GetLastFailure()}
	}
	return r, nil
}

func word(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrBadReport, what, max)
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return fmt.Errorf("%w: %s is not printable", ErrBadReport, what)
		}
	}
	return nil
}

func number(what string, f float32) (float64, error) {
	v := float64(f)
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 1e6 {
		return 0, fmt.Errorf("%w: %s %v", ErrBadReport, what, f)
	}
	return v, nil
}

// Store holds the last report of every node. Safe for concurrent use.
type Store struct {
	mu      sync.Mutex
	reports map[key.Public]*Report

	received, dropped atomic.Uint64
}

// New returns an empty Store.
func New() *Store { return &Store{reports: map[key.Public]*Report{}} }

// Put records node k's report, replacing the previous one; a report
// sooner than MinInterval after the last one is dropped (false).
func (s *Store) Put(k key.Public, r Report) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.reports[k]; old != nil && r.At.Sub(old.At) < MinInterval {
		s.dropped.Add(1)
		return false
	}
	s.received.Add(1)
	s.reports[k] = &r
	return true
}

// Forget drops node k's report (the node was deleted).
func (s *Store) Forget(k key.Public) {
	s.mu.Lock()
	delete(s.reports, k)
	s.mu.Unlock()
}

// Counts returns the reports taken and dropped (too frequent) so far.
func (s *Store) Counts() (received, dropped uint64) { return s.received.Load(), s.dropped.Load() }

// NodeInfo is what the view takes of a registered node.
type NodeInfo struct {
	Key       key.Public
	Name      string
	Addresses []string
	Online    bool
	Version   string
	Tags      []string
}

// RelayInfo is a relay region of the map and, for relays the coordinator
// runs, their counters.
type RelayInfo struct {
	ID    uint32
	Name  string
	Stats *topoview.RelayStats
}

// View builds the fleet's picture at now from the reports of the online
// nodes among nodes.
func (s *Store) View(nodes []NodeInfo, relays []RelayInfo, now time.Time) topoview.View {
	byKey := make(map[key.Public]*NodeInfo, len(nodes))
	for i := range nodes {
		byKey[nodes[i].Key] = &nodes[i]
	}
	v := topoview.View{GeneratedAt: now, Nodes: make([]topoview.Node, 0, len(nodes)), Pairs: []topoview.Pair{}, Relays: []topoview.Relay{}}
	type pairKey struct{ a, b string }
	pairs := map[pairKey]*topoview.Pair{}
	homes := map[string]int{}
	s.mu.Lock()
	for _, n := range nodes {
		vn := topoview.Node{Name: n.Name, Key: n.Key.Short(), Addresses: nonNil(n.Addresses), Online: n.Online, Version: n.Version, Tags: nonNil(n.Tags)}
		r := s.reports[n.Key]
		if r == nil || now.Sub(r.At) > StaleAfter {
			v.Nodes = append(v.Nodes, vn)
			continue
		}
		at := r.At
		vn.Reported, vn.NAT, vn.HomeRelay, vn.HomeRelayMs = &at, r.NAT, r.HomeRelay, r.HomeRelayMs
		v.Nodes = append(v.Nodes, vn)
		if !n.Online {
			continue // its paths ended with its stream
		}
		if r.HomeRelay != "" {
			homes[r.HomeRelay]++
		}
		for pk, side := range r.Peers {
			peer := byKey[pk]
			if peer == nil || !peer.Online || peer.Name == n.Name {
				continue
			}
			pkey, mine := pairKey{n.Name, peer.Name}, true
			if peer.Name < n.Name {
				pkey, mine = pairKey{peer.Name, n.Name}, false
			}
			p := pairs[pkey]
			if p == nil {
				p = &topoview.Pair{A: pkey.a, B: pkey.b}
				pairs[pkey] = p
			}
			sd := side
			if mine {
				p.FromA = &sd
			} else {
				p.FromB = &sd
			}
		}
	}
	s.mu.Unlock()
	slices.SortFunc(v.Nodes, func(a, b topoview.Node) int { return cmpString(a.Name, b.Name) })

	relayed := map[string]int{}
	tags := map[string]*topoview.Counts{}
	tagsOf := map[string][]string{}
	for _, n := range nodes {
		tagsOf[n.Name] = n.Tags
	}
	for _, p := range pairs {
		merge(p)
		if p.Path == topoview.PathRelay {
			relayed[p.Relay]++
		}
		v.Summary.Pairs.Add(p.Path)
		seen := map[string]bool{}
		for _, t := range append(slices.Clone(tagsOf[p.A]), tagsOf[p.B]...) {
			if seen[t] {
				continue
			}
			seen[t] = true
			if tags[t] == nil {
				tags[t] = &topoview.Counts{}
			}
			tags[t].Add(p.Path)
		}
		v.Pairs = append(v.Pairs, *p)
	}
	slices.SortFunc(v.Pairs, func(x, y topoview.Pair) int {
		if c := cmpString(x.A, y.A); c != 0 {
			return c
		}
		return cmpString(x.B, y.B)
	})
	for _, r := range relays {
		v.Relays = append(v.Relays, topoview.Relay{ID: r.ID, Name: r.Name, HomeOf: homes[r.Name], Relayed: relayed[r.Name], Stats: r.Stats})
	}
	slices.SortFunc(v.Relays, func(a, b topoview.Relay) int { return int(a.ID) - int(b.ID) })

	sum := &v.Summary
	kinds := map[string]int{}
	for _, n := range v.Nodes {
		sum.Nodes++
		if n.Online {
			sum.Online++
		}
		kinds[n.NAT.Kind()]++
	}
	for _, k := range sortedKeys(kinds) {
		sum.NATKinds = append(sum.NATKinds, topoview.KindCount{Kind: k, Nodes: kinds[k]})
	}
	for _, t := range sortedKeys(tags) {
		sum.ByTag = append(sum.ByTag, topoview.TagCounts{Tag: t, Counts: *tags[t]})
	}
	sum.NATKinds, sum.ByTag = nonNil(sum.NATKinds), nonNil(sum.ByTag)
	if sum.Pairs.Total > 0 {
		sum.DirectShare = float64(sum.Pairs.Direct) / float64(sum.Pairs.Total)
	}
	return v
}

// merge decides a pair's path from its sides: relay if either side sends
// through a relay (that direction is relayed), else direct if either is,
// else none.
func merge(p *topoview.Pair) {
	p.Path = topoview.PathNone
	var rtts []float64
	for _, sd := range []*topoview.Side{p.FromA, p.FromB} {
		if sd == nil {
			continue
		}
		switch {
		case sd.Path == topoview.PathRelay:
			p.Path, p.Relay = topoview.PathRelay, sd.Relay
		case sd.Path == topoview.PathDirect && p.Path == topoview.PathNone:
			p.Path = topoview.PathDirect
		}
		if sd.RTTMs > 0 {
			rtts = append(rtts, sd.RTTMs)
		}
		if sd.Since.After(p.Since) {
			p.Since = sd.Since
		}
	}
	for _, r := range rtts {
		p.RTTMs += r / float64(len(rtts))
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
