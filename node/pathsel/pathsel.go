// Package pathsel decides, per peer, how WireGuard reaches that peer: the
// endpoint the agent programs. The agent's engine feeds a Selector the
// current peers and applies whatever paths it reports; how a path is found
// (the addresses a peer reported, ICE, a relay) is the Selector's business.
package pathsel

import (
	"net/netip"
	"slices"
	"sync"
)

// Kind says how a peer is reached.
type Kind int

const (
	// None: no usable path is known; the peer is unreachable for now.
	None Kind = iota
	// Direct: UDP straight to Path.Endpoint.
	Direct
)

func (k Kind) String() string {
	switch k {
	case Direct:
		return "direct"
	default:
		return "none"
	}
}

// Path is how one peer is reached.
type Path struct {
	Kind     Kind
	Endpoint netip.AddrPort // valid when Kind is Direct
	Source   string         // where the decision came from, for status ("reported", "ice", ...)
}

// Peer is what a Selector learns about a peer from the network map.
type Peer struct {
	Key       [32]byte
	Endpoints []netip.AddrPort // as the peer reported them
}

// Selector owns the per-peer path decision. Implementations are safe for
// concurrent use.
type Selector interface {
	// SetPeers replaces the set of peers. Peers not in the set are forgotten.
	SetPeers(peers []Peer)
	// Path returns the current path to a peer (None for unknown peers).
	Path(key [32]byte) Path
	// Changed is signalled (coalesced) whenever some Path may have changed.
	Changed() <-chan struct{}
}

// Reported selects the first endpoint a peer reported whose address family
// the local node can use. It is the path decision for peers on a routed
// network where every reported address is reachable.
type Reported struct {
	// UseIPv6 allows IPv6 endpoints; IPv4 endpoints are always allowed
	// and preferred.
	UseIPv6 bool

	changed chan struct{}

	mu    sync.Mutex // guards paths
	paths map[[32]byte]Path
}

var _ Selector = (*Reported)(nil)

// NewReported returns a Reported selector.
func NewReported(useIPv6 bool) *Reported {
	return &Reported{UseIPv6: useIPv6, changed: make(chan struct{}, 1), paths: map[[32]byte]Path{}}
}

// SetPeers implements Selector.
func (r *Reported) SetPeers(peers []Peer) {
	next := make(map[[32]byte]Path, len(peers))
	for _, p := range peers {
		next[p.Key] = r.choose(p.Endpoints)
	}
	r.mu.Lock()
	same := len(next) == len(r.paths)
	for k, p := range next {
		if same && r.paths[k] != p {
			same = false
		}
	}
	r.paths = next
	r.mu.Unlock()
	if !same {
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
}

func (r *Reported) choose(eps []netip.AddrPort) Path {
	ordered := slices.Clone(eps)
	// Stable: IPv4 first, keeping the peer's own order within a family.
	slices.SortStableFunc(ordered, func(a, b netip.AddrPort) int {
		return boolInt(!a.Addr().Is4()) - boolInt(!b.Addr().Is4())
	})
	for _, ep := range ordered {
		if ep.Addr().Is4() || (r.UseIPv6 && ep.Addr().Is6()) {
			return Path{Kind: Direct, Endpoint: ep, Source: "reported"}
		}
	}
	return Path{Kind: None}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Path implements Selector.
func (r *Reported) Path(key [32]byte) Path {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paths[key]
}

// Changed implements Selector.
func (r *Reported) Changed() <-chan struct{} { return r.changed }
