// Package connlimit bounds how many connections one source address may
// hold open on a listener, so a single host cannot exhaust a daemon's file
// descriptors and memory by opening connections (authenticated or not).
package connlimit

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Listener wraps a net.Listener: Accept closes, at once, connections from
// a source address that already holds PerSource open connections, and
// hands out the rest. A connection counts until it is closed.
type Listener struct {
	net.Listener
	perSource int

	refused atomic.Uint64

	mu   sync.Mutex // guards open
	open map[netip.Addr]int
}

// New wraps ln; perSource <= 0 means no limit.
func New(ln net.Listener, perSource int) *Listener {
	return &Listener{Listener: ln, perSource: perSource, open: map[netip.Addr]int{}}
}

// Refused is the number of connections closed for being over the limit.
func (l *Listener) Refused() uint64 { return l.refused.Load() }

// Accept returns the next connection within the limit.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.perSource <= 0 {
			return c, nil
		}
		src := addrOf(c.RemoteAddr())
		l.mu.Lock()
		n := l.open[src]
		if n >= l.perSource {
			l.mu.Unlock()
			l.refused.Add(1)
			c.Close()
			continue
		}
		l.open[src] = n + 1
		l.mu.Unlock()
		return &conn{Conn: c, l: l, src: src}, nil
	}
}

func (l *Listener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[src] <= 1 {
		delete(l.open, src)
		return
	}
	l.open[src]--
}

// addrOf is the source address of a connection (the zero Addr, one
// bucket for all, when it is not IP: a unix socket).
func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(t.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

type conn struct {
	net.Conn
	l    *Listener
	src  netip.Addr
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}
