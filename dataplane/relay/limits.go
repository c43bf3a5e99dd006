package relay

import (
	"fmt"
	"net/http"
	"net/netip"
	"sync"
)

// connLimits bounds a relay's connections before anyone is known: a
// semaphore on handshakes in progress, and per source address (IPv4
// address or IPv6 /64, what one host controls) a bound on handshakes and
// on connections. The per-address bounds are far above what a NAT with
// many nodes behind one address needs: a node holds one connection, and
// its handshake lasts a round trip.
type connLimits struct {
	pendingPerIP, connsPerIP int
	sem                      chan struct{} // one token per handshake in progress

	mu   sync.Mutex // guards byIP
	byIP map[netip.Prefix]*ipConns
}

type ipConns struct {
	pending int // handshakes in progress
	conns   int // connections, pending ones included
}

func newConnLimits(maxPending, pendingPerIP, connsPerIP int) *connLimits {
	return &connLimits{
		pendingPerIP: pendingPerIP,
		connsPerIP:   connsPerIP,
		sem:          make(chan struct{}, maxPending),
		byIP:         map[netip.Prefix]*ipConns{},
	}
}

// sourcePrefix is the unit limits count by: the IPv4 address or the
// IPv6 /64 of remoteAddr ("ip:port"). Unparsable addresses (pipes in
// tests) share one invalid prefix.
func sourcePrefix(remoteAddr string) netip.Prefix {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Prefix{}
	}
	a := ap.Addr().Unmap().WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// connSlot is one admitted connection. Call handshakeDone when its
// handshake ends (either way) and close when the connection does.
type connSlot struct {
	l       *connLimits
	src     netip.Prefix
	pending bool
}

// admit counts a new connection from src that is about to handshake. It
// returns nil and the HTTP status and text to refuse it with when a bound
// is reached.
func (l *connLimits) admit(src netip.Prefix) (*connSlot, int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.byIP[src]
	if c == nil {
		c = &ipConns{}
	}
	switch {
	case c.pending >= l.pendingPerIP:
		return nil, http.StatusTooManyRequests, fmt.Sprintf("edgewire relay: %d handshakes in progress from %s", c.pending, src)
	case c.conns >= l.connsPerIP:
		return nil, http.StatusTooManyRequests, fmt.Sprintf("edgewire relay: %d connections from %s", c.conns, src)
	}
	select {
	case l.sem <- struct{}{}:
	default:
		return nil, http.StatusServiceUnavailable, "edgewire relay: too many handshakes in progress; retry later"
	}
	c.pending++
	c.conns++
	l.byIP[src] = c
	return &connSlot{l: l, src: src, pending: true}, 0, ""
}

// handshakeDone frees the slot's handshake tokens; later calls do nothing.
func (s *connSlot) handshakeDone() {
	if !s.pending {
		return
	}
	s.pending = false
	<-s.l.sem
	s.l.mu.Lock()
	s.l.byIP[s.src].pending--
	s.l.mu.Unlock()
}

// close frees the slot.
func (s *connSlot) close() {
	s.handshakeDone()
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	c := s.l.byIP[s.src]
	if c.conns--; c.conns == 0 {
		delete(s.l.byIP, s.src)
	}
}

// pendingHandshakes is the number of handshakes in progress.
func (l *connLimits) pendingHandshakes() int { return len(l.sem) }
