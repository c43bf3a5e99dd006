// Package ipam hands out overlay addresses from one prefix per address
// family. A dual-stack overlay uses one Allocator per family.
package ipam

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
)

// Sentinel errors callers test with errors.Is.
var (
	ErrOutOfRange = errors.New("address outside the overlay prefix")
	ErrInUse      = errors.New("address already in use")
	ErrExhausted  = errors.New("overlay prefix exhausted")
)

// Allocator hands out addresses from one prefix. The network address, and
// for IPv4 the broadcast address, are never handed out. It is safe for
// concurrent use.
type Allocator struct {
	prefix   netip.Prefix
	first    netip.Addr // lowest assignable address
	last     netip.Addr // highest assignable address
	capacity uint64     // assignable addresses, saturating at MaxUint64

	mu     sync.Mutex // guards used and cursor
	used   map[netip.Addr]struct{}
	cursor netip.Addr // next candidate for Allocate, in [first, last]
}

// New returns an Allocator for prefix, which must be masked and leave room
// for at least two hosts (IPv4 /30, IPv6 /126 or shorter).
func New(prefix netip.Prefix) (*Allocator, error) {
	if !prefix.IsValid() {
		return nil, fmt.Errorf("overlay prefix %s is not valid", prefix)
	}
	if prefix != prefix.Masked() {
		return nil, fmt.Errorf("overlay prefix %s has host bits set; did you mean %s?", prefix, prefix.Masked())
	}
	addr := prefix.Addr()
	if addr.Is4In6() {
		return nil, fmt.Errorf("overlay prefix %s is IPv4-mapped IPv6; write it as IPv4", prefix)
	}
	hostBits := addr.BitLen() - prefix.Bits()
	if hostBits < 2 {
		return nil, fmt.Errorf("overlay prefix %s is too small: want at most /%d", prefix, addr.BitLen()-2)
	}
	a := &Allocator{
		prefix:   prefix,
		first:    addr.Next(),
		last:     lastAddr(prefix),
		capacity: math.MaxUint64,
		used:     make(map[netip.Addr]struct{}),
	}
	reserved := uint64(1) // network address
	if addr.Is4() {
		a.last = a.last.Prev() // broadcast
		reserved++
	}
	if hostBits < 64 {
		a.capacity = 1<<hostBits - reserved
	}
	a.cursor = a.first
	return a, nil
}

// lastAddr returns the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As16()
	off := 128 - p.Addr().BitLen() // IPv4 lives in the last 4 bytes
	for i := off + p.Bits(); i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		return a.Unmap()
	}
	return a
}

// Prefix returns the prefix addresses come from.
func (a *Allocator) Prefix() netip.Prefix { return a.prefix }

// Reserve marks addr as in use, as when restoring nodes from the store.
func (a *Allocator) Reserve(addr netip.Addr) error {
	if !a.assignable(addr) {
		return fmt.Errorf("reserve %s: %w %s", addr, ErrOutOfRange, a.prefix)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.used[addr]; ok {
		return fmt.Errorf("reserve %s: %w", addr, ErrInUse)
	}
	a.used[addr] = struct{}{}
	return nil
}

// assignable reports whether addr may be handed out: inside the prefix and
// not the network or broadcast address.
func (a *Allocator) assignable(addr netip.Addr) bool {
	return addr.IsValid() && addr.Zone() == "" && a.prefix.Contains(addr) &&
		a.first.Compare(addr) <= 0 && addr.Compare(a.last) <= 0
}

// Allocate returns the lowest free address at or after the cursor,
// wrapping around once. Freed addresses are reused only after the cursor
// wraps, so a released address is not handed straight to a new node.
func (a *Allocator) Allocate() (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uint64(len(a.used)) >= a.capacity {
		return netip.Addr{}, fmt.Errorf("allocate from %s: %w (%d addresses in use)", a.prefix, ErrExhausted, len(a.used))
	}
	// A free address exists, so the loop ends within one lap.
	addr := a.cursor
	for {
		if _, ok := a.used[addr]; !ok {
			break
		}
		addr = a.next(addr)
	}
	a.used[addr] = struct{}{}
	a.cursor = a.next(addr)
	return addr, nil
}

// next returns the address after addr, wrapping from last to first.
func (a *Allocator) next(addr netip.Addr) netip.Addr {
	if addr == a.last {
		return a.first
	}
	return addr.Next()
}

// Release frees addr. Releasing an address not in use does nothing.
func (a *Allocator) Release(addr netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.used, addr)
}

// Return gives back an address Allocate handed out for an allocation
// that did not happen (a refused join): it is freed and, if no allocation
// came after it, the cursor moves back so the next one gets it again.
func (a *Allocator) Return(addr netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.used[addr]; !ok {
		return
	}
	delete(a.used, addr)
	if a.assignable(addr) && a.cursor == a.next(addr) {
		a.cursor = addr
	}
}

// InUse returns how many addresses are allocated or reserved, not counting
// the network and broadcast addresses.
func (a *Allocator) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.used)
}
