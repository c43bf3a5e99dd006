// Package bind shares one UDP socket between WireGuard and ICE. Bind is a
// conn.Bind that wraps wireguard-go's StdNetBind (so recvmmsg/sendmmsg
// batching and UDP GSO/GRO stay on) and classifies every received
// datagram: WireGuard messages go to the device untouched and uncopied,
// STUN messages are copied to a net.PacketConn that feeds pion/ice's UDP
// mux, and anything else is dropped. ICE writes through the same socket,
// so the NAT mapping ICE punches is the one WireGuard uses.
package bind

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// stunQueue bounds STUN datagrams waiting for ICE; more are dropped.
const stunQueue = 256

// Counters are the Bind's packet counters.
type Counters struct {
	STUNIn      atomic.Uint64 // datagrams diverted to ICE
	STUNDropped atomic.Uint64 // diverted datagrams dropped: ICE queue full
	OtherDrop   atomic.Uint64 // datagrams neither WireGuard nor STUN
	STUNOut     atomic.Uint64 // datagrams ICE sent

	SplitDrop atomic.Uint64 // segments of a coalesced datagram beyond the batch, dropped

	RelayIn      atomic.Uint64 // packets from the relay handed to WireGuard
	RelayDropped atomic.Uint64 // packets from the relay dropped: WireGuard behind
	RelayOut     atomic.Uint64 // packets WireGuard sent through the relay
}

// Bind implements conn.Bind. Create it with New and hand it to the
// WireGuard device; use PacketConn for ICE.
type Bind struct {
	inner conn.Bind
	std   bool // inner is StdNetBind: its IPv4 socket sends without DF (omitPMTU)
	log   *slog.Logger
	pc    *PacketConn
	rs    *relayState
	C     Counters

	mu     sync.Mutex    // guards port, closed, fds4, r4
	port   uint16        // bound port, 0 while closed
	fds4   []int         // the IPv4 socket StdNetBind opened (SendTTL), while open
	r4     *recv4        // reads that socket for the device, while open (nil: StdNetBind's own reader)
	closed chan struct{} // closed by Close: ends the relay ReceiveFunc of that Open
}

var _ conn.Bind = (*Bind)(nil)

// New wraps inner (nil: conn.NewStdNetBind()).
func New(inner conn.Bind, log *slog.Logger) *Bind {
	std := inner == nil
	if std {
		inner = conn.NewStdNetBind()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Bind{inner: inner, std: std, log: log, rs: newRelayState()}
	b.pc = &PacketConn{b: b, in: make(chan datagram, stunQueue), closed: make(chan struct{})}
	return b
}

// PacketConn returns the ICE side of the socket. It lives as long as the
// Bind; WireGuard re-opening the bind does not interrupt it.
func (b *Bind) PacketConn() *PacketConn { return b.pc }

// Open implements conn.Bind.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.inner.Open(port)
	if err != nil {
		return nil, 0, err
	}
	var fds []int
	if b.std {
		// Outer packets without DF: a smaller MTU on the path is
		// fragmented by its router instead of blackholing GSO batches.
		if fds, err = omitPMTU(actual); err != nil {
			b.log.Warn("path MTU discovery stays on; a smaller underlay MTU may blackhole bulk traffic", "err", err)
		} else if len(fds) == 0 {
			b.log.Warn("found no IPv4 UDP socket to take DF off", "port", actual)
		}
	}
	var r4 *recv4
	if len(fds) == 1 && len(fns) > 0 {
		// StdNetBind returns its IPv4 receive function first. Reading
		// that socket ourselves saves an allocation per datagram (see
		// recv4).
		if r4, err = newRecv4(fds[0], b.inner.BatchSize(), &b.C.SplitDrop); err != nil {
			b.log.Warn("reading the IPv4 socket with StdNetBind's receive function", "err", err)
		} else {
			fns[0] = r4.receive
		}
	}
	closed := make(chan struct{})
	b.mu.Lock()
	b.port = actual
	b.closed = closed
	b.fds4 = fds
	b.r4 = r4
	b.mu.Unlock()
	wrapped := make([]conn.ReceiveFunc, len(fns), len(fns)+1)
	for i, fn := range fns {
		wrapped[i] = b.wrap(fn)
	}
	return append(wrapped, b.receiveRelay(closed)), actual, nil
}

// wrap filters a receive function. Non-WireGuard datagrams get size 0,
// which the device skips; WireGuard datagrams are not touched.
func (b *Bind) wrap(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(bufs, sizes, eps)
		for i := 0; i < n; i++ {
			p := bufs[i][:sizes[i]]
			switch Classify(p) {
			case WireGuard:
				continue
			case STUN:
				b.pc.deliver(p, eps[i])
			default:
				b.C.OtherDrop.Add(1)
			}
			sizes[i] = 0
		}
		return n, err
	}
}

// SendTTL sends p to the IPv4 dst from the WireGuard socket with IP TTL
// ttl for this datagram only (traversal's primers: they open this
// node's own NAT mapping towards a peer and die before the peer's NAT).
// It needs the standard bind on Linux.
func (b *Bind) SendTTL(dst netip.AddrPort, p []byte, ttl int) error {
	b.mu.Lock()
	defer b.mu.Unlock() // held across the send: Close must not free the descriptor under it
	if len(b.fds4) == 0 {
		return errors.New("bind: no IPv4 socket to send with a TTL from")
	}
	return sendTTL(b.fds4[0], dst, p, ttl)
}

// Close implements conn.Bind. The PacketConn stays usable; see Shutdown.
func (b *Bind) Close() error {
	b.mu.Lock()
	b.port = 0
	b.fds4 = nil
	if b.r4 != nil {
		b.r4.Close()
		b.r4 = nil
	}
	if b.closed != nil {
		close(b.closed)
		b.closed = nil
	}
	b.mu.Unlock()
	return b.inner.Close()
}

// Shutdown closes the ICE side for good.
func (b *Bind) Shutdown() { b.pc.Close() }

// SetMark implements conn.Bind.
func (b *Bind) SetMark(mark uint32) error { return b.inner.SetMark(mark) }

// Send implements conn.Bind: relayed peers go through the relay, the rest
// through the socket.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if re, ok := ep.(*relayEndpoint); ok {
		return b.sendRelay(bufs, re)
	}
	return b.inner.Send(bufs, ep)
}

// ParseEndpoint implements conn.Bind. Addresses in RelayPrefix must be
// ones RelayEndpoint handed out.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err == nil && RelayPrefix.Contains(ap.Addr()) {
		if e := b.rs.lookup(ap); e != nil {
			return e, nil
		}
		return nil, fmt.Errorf("bind: %s is not a known relay endpoint", s)
	}
	return b.inner.ParseEndpoint(s)
}

// BatchSize implements conn.Bind.
func (b *Bind) BatchSize() int { return b.inner.BatchSize() }

// Port returns the bound UDP port (0 while closed).
func (b *Bind) Port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.port
}

type datagram struct {
	b    []byte
	from netip.AddrPort
}

// PacketConn is the ICE side of the shared socket: ReadFrom returns the
// STUN datagrams the Bind diverted, WriteTo sends through the Bind. It is
// safe for concurrent use.
type PacketConn struct {
	b         *Bind
	in        chan datagram
	closed    chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex // guards deadline
	deadline time.Time  // read deadline
}

var _ net.PacketConn = (*PacketConn)(nil)

func (c *PacketConn) deliver(p []byte, ep conn.Endpoint) {
	from := endpointAddr(ep)
	if !from.IsValid() {
		c.b.C.OtherDrop.Add(1)
		return
	}
	d := datagram{b: append([]byte(nil), p...), from: from}
	select {
	case c.in <- d:
		c.b.C.STUNIn.Add(1)
	default:
		c.b.C.STUNDropped.Add(1)
	}
}

func endpointAddr(ep conn.Endpoint) netip.AddrPort {
	if se, ok := ep.(*conn.StdNetEndpoint); ok {
		return netip.AddrPortFrom(se.Addr().Unmap(), se.Port())
	}
	ap, _ := netip.ParseAddrPort(ep.DstToString())
	return ap
}

// ReadFromUDPAddrPort reads one diverted STUN datagram.
func (c *PacketConn) ReadFromUDPAddrPort(p []byte) (int, netip.AddrPort, error) {
	c.mu.Lock()
	dl := c.deadline
	c.mu.Unlock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case d := <-c.in:
		return copy(p, d.b), d.from, nil
	case <-c.closed:
		return 0, netip.AddrPort{}, net.ErrClosed
	case <-timeout:
		return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
	}
}

// ReadFrom implements net.PacketConn.
func (c *PacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, from, err := c.ReadFromUDPAddrPort(p)
	if err != nil {
		return 0, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// ErrNotOpen is returned by writes while WireGuard has the socket closed.
var ErrNotOpen = errors.New("bind: socket not open")

// WriteToUDPAddrPort sends p to addr through the shared socket.
func (c *PacketConn) WriteToUDPAddrPort(p []byte, addr netip.AddrPort) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	if c.b.Port() == 0 {
		return 0, ErrNotOpen
	}
	ep := &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())}
	if err := c.b.inner.Send([][]byte{p}, ep); err != nil {
		return 0, err
	}
	c.b.C.STUNOut.Add(1)
	return len(p), nil
}

// WriteTo implements net.PacketConn.
func (c *PacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: errors.New("not a UDP address")}
	}
	return c.WriteToUDPAddrPort(p, ua.AddrPort())
}

// Close implements net.PacketConn.
func (c *PacketConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

// LocalAddr implements net.PacketConn: the wildcard address and the bound port.
func (c *PacketConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4zero, Port: int(c.b.Port())}
}

// SetDeadline implements net.PacketConn (only the read side has one).
func (c *PacketConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline implements net.PacketConn. A new deadline applies to
// the next read, not to one already blocked.
func (c *PacketConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline implements net.PacketConn; writes never block on the
// peer, so there is nothing to bound.
func (c *PacketConn) SetWriteDeadline(time.Time) error { return nil }
