// Package localsrc decides whether a source address belongs to this node,
// for the agent's servers that serve local clients only (DNS, SOCKS5):
// loopback, any address configured on the host, and the node's local pod
// CIDRs. Overlay peers and LAN neighbours are not local, even when they
// route the servers' address through this node.
//
// Host addresses are read from the kernel (net.InterfaceAddrs) and cached;
// an address that is not in the cache triggers a refresh at most once per
// RefreshEvery, so an address added at run time is seen within that time
// and a flood from foreign sources costs no more than one refresh per
// interval.
package localsrc

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/internal/clock"
)

// DefaultRefreshEvery is the shortest time between two reads of the host
// addresses.
const DefaultRefreshEvery = time.Second

// Config configures a Set.
type Config struct {
	// Addrs lists the addresses configured on the host (nil: the kernel's,
	// through net.InterfaceAddrs). Tests use it to read another network
	// namespace.
	Addrs func() ([]netip.Addr, error)
	// RefreshEvery bounds how often Addrs is called; 0 means
	// DefaultRefreshEvery.
	RefreshEvery time.Duration
	// Clock times the refreshes (nil: clock.Real).
	Clock clock.Clock
}

// Set answers Contains for the servers. Its methods are safe for
// concurrent use; Contains takes no lock on its fast paths.
type Set struct {
	addrsFn func() ([]netip.Addr, error)
	every   time.Duration
	clock   clock.Clock

	pods  atomic.Pointer[[]netip.Prefix]      // local pod CIDRs
	hosts atomic.Pointer[map[netip.Addr]bool] // host addresses, last read

	refreshMu sync.Mutex // serialises refreshes; guards last
	last      time.Time  // of the last refresh (zero: never)
}

// New returns a Set with no pod CIDRs. It reads the host addresses at once.
func New(cfg Config) *Set {
	if cfg.Addrs == nil {
		cfg.Addrs = InterfaceAddrs
	}
	if cfg.RefreshEvery <= 0 {
		cfg.RefreshEvery = DefaultRefreshEvery
	}
	s := &Set{addrsFn: cfg.Addrs, every: cfg.RefreshEvery, clock: clock.Or(cfg.Clock)}
	s.pods.Store(&[]netip.Prefix{})
	s.hosts.Store(&map[netip.Addr]bool{})
	s.refresh(true)
	return s
}

// SetPodCIDRs replaces the local pod CIDRs. The slice is copied.
func (s *Set) SetPodCIDRs(ps []netip.Prefix) {
	cp := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			cp = append(cp, p.Masked())
		}
	}
	s.pods.Store(&cp)
}

// PodCIDRs returns the local pod CIDRs.
func (s *Set) PodCIDRs() []netip.Prefix { return slices.Clone(*s.pods.Load()) }

// Contains reports whether a is loopback, a host address or in a local pod
// CIDR. IPv4-mapped IPv6 addresses count as their IPv4 address.
func (s *Set) Contains(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return false
	}
	if a.IsLoopback() {
		return true
	}
	for _, p := range *s.pods.Load() {
		if p.Contains(a) {
			return true
		}
	}
	if (*s.hosts.Load())[a] {
		return true
	}
	// Maybe an address added since the last read.
	if !s.refresh(false) {
		return false
	}
	return (*s.hosts.Load())[a]
}

// refresh re-reads the host addresses unless that was done less than
// every ago (or another refresh is running); it reports whether it read.
func (s *Set) refresh(force bool) bool {
	if !s.refreshMu.TryLock() {
		return false
	}
	defer s.refreshMu.Unlock()
	now := s.clock.Now()
	if !force && !s.last.IsZero() && now.Sub(s.last) < s.every {
		return false
	}
	s.last = now
	addrs, err := s.addrsFn()
	if err != nil {
		return false // keep what we had
	}
	m := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		m[a.Unmap().WithZone("")] = true
	}
	s.hosts.Store(&m)
	return true
}

// InterfaceAddrs lists the addresses configured on the host's interfaces.
func InterfaceAddrs() ([]netip.Addr, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, ifa := range ifas {
		if n, ok := ifa.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}
