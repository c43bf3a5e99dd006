package svcfwd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/types/services"
)

// Target is one endpoint port reached through its node: To on the node
// whose overlay address is Via.
type Target struct {
	Via   netip.Addr
	To    netip.AddrPort
	Proto services.Protocol
}

func (t Target) String() string { return fmt.Sprintf("%s/%s via %s", t.To, t.Proto, t.Via) }

// Default local port range of an Ingress.
const (
	DefaultFirstPort = 40960
	DefaultLastPort  = 42959
	DefaultMaxFlows  = 1024 // UDP flows per target
	flowQueue        = 64   // datagrams queued per UDP flow while its connection is set up
)

// IngressConfig configures an Ingress.
type IngressConfig struct {
	// Listen is this node's overlay IPv4 address: the DNAT rules send
	// forwarded endpoints here, one port per Target.
	Listen              netip.Addr
	FirstPort, LastPort uint16 // the local port range; default DefaultFirstPort-DefaultLastPort
	ServerPort          uint16 // the Servers' port; default DefaultPort
	// Local reports whether a client address is this node's own (host,
	// local pods): nobody else may use the Ingress. Required.
	Local       func(netip.Addr) bool
	DialTimeout time.Duration // default DefaultDialTimeout
	IdleTimeout time.Duration // default DefaultIdleTimeout
	MaxFlows    int           // UDP flows per target; default DefaultMaxFlows
	MaxConns    int           // TCP connections at once, all targets; default DefaultMaxConns
	Logger      *slog.Logger
}

// Ingress is the client node's side: a local port per Target whose
// connections and flows it hands to the Target's node.
type Ingress struct {
	cfg IngressConfig
	log *slog.Logger

	slots chan struct{} // one per TCP connection in progress

	mu     sync.Mutex // guards the fields below
	open   map[Target]*port
	used   map[uint16]bool
	closed bool

	stats struct {
		tcp, udp, local, failed, dropped atomic.Int64
	}
}

// port is one Target's listener and what runs on it.
type port struct {
	t     Target
	n     uint16
	ln    net.Listener // TCP
	pc    *net.UDPConn // UDP
	conns tracker
	flows map[netip.AddrPort]*flow // UDP, guarded by flowsMu
	mu    sync.Mutex               // flowsMu
	wg    sync.WaitGroup           // the accept or read loop
}

// NewIngress validates cfg. It opens nothing until Set.
func NewIngress(cfg IngressConfig) (*Ingress, error) {
	if !cfg.Listen.Is4() {
		return nil, fmt.Errorf("forward ingress: listen address %v is not IPv4", cfg.Listen)
	}
	if cfg.Local == nil {
		return nil, errors.New("forward ingress: no Local")
	}
	if cfg.FirstPort == 0 && cfg.LastPort == 0 {
		cfg.FirstPort, cfg.LastPort = DefaultFirstPort, DefaultLastPort
	}
	if cfg.FirstPort == 0 || cfg.LastPort < cfg.FirstPort {
		return nil, fmt.Errorf("forward ingress: port range %d-%d", cfg.FirstPort, cfg.LastPort)
	}
	if cfg.ServerPort == 0 {
		cfg.ServerPort = DefaultPort
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Ingress{cfg: cfg, log: cfg.Logger, open: map[Target]*port{}, used: map[uint16]bool{}, slots: make(chan struct{}, cfg.MaxConns)}, nil
}

// Set makes the Ingress serve exactly ts: a Target it already serves
// keeps its port (and its connections); new ones get the lowest free
// port of the range; the ports of Targets no longer listed are closed
// with their connections. It returns the port of every Target it serves;
// a Target it could not open (the range is full) is missing, logged, and
// tried again on the next Set.
func (in *Ingress) Set(ts []Target) map[Target]uint16 {
	in.mu.Lock()
	defer in.mu.Unlock()
	want := map[Target]bool{}
	for _, t := range ts {
		want[t] = true
	}
	for t, p := range in.open {
		if !want[t] {
			delete(in.open, t)
			delete(in.used, p.n)
			p.close()
			in.log.Debug("forward port closed", "target", t, "port", p.n)
		}
	}
	sorted := make([]Target, 0, len(want))
	for t := range want {
		if in.open[t] == nil {
			sorted = append(sorted, t)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].String() < sorted[j].String() })
	for _, t := range sorted {
		if in.closed {
			break
		}
		p, err := in.listen(t)
		if err != nil {
			in.log.Warn("no forward port for an endpoint; it is left out until one is free", "target", t, "err", err)
			continue
		}
		in.open[t] = p
		in.used[p.n] = true
		in.log.Debug("forward port opened", "target", t, "port", p.n)
	}
	out := make(map[Target]uint16, len(in.open))
	for t, p := range in.open {
		out[t] = p.n
	}
	return out
}

// listen opens t's port, the lowest of the range that is free.
func (in *Ingress) listen(t Target) (*port, error) {
	lc := net.ListenConfig{Control: freebind}
	var lastErr error
	for n := int(in.cfg.FirstPort); n <= int(in.cfg.LastPort); n++ {
		if in.used[uint16(n)] {
			continue
		}
		addr := net.JoinHostPort(in.cfg.Listen.String(), strconv.Itoa(n))
		p := &port{t: t, n: uint16(n)}
		if t.Proto == services.UDP {
			pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
			if err != nil {
				lastErr = err
				continue
			}
			p.pc = pc.(*net.UDPConn)
			p.flows = map[netip.AddrPort]*flow{}
			p.wg.Add(1)
			go in.readUDP(p)
			return p, nil
		}
		ln, err := lc.Listen(context.Background(), "tcp4", addr)
		if err != nil {
			lastErr = err
			continue
		}
		p.ln = ln
		p.wg.Add(1)
		go in.acceptTCP(p)
		return p, nil
	}
	if lastErr == nil {
		lastErr = errors.New("every port is taken")
	}
	return nil, fmt.Errorf("ports %d-%d: %w", in.cfg.FirstPort, in.cfg.LastPort, lastErr)
}

// Close closes every port and connection and waits for their goroutines.
func (in *Ingress) Close() {
	in.mu.Lock()
	in.closed = true
	open := in.open
	in.open = map[Target]*port{}
	in.mu.Unlock()
	for _, p := range open {
		p.close()
	}
}

// close stops the listener, ends its connections and flows, and waits.
func (p *port) close() {
	if p.ln != nil {
		p.ln.Close()
	}
	if p.pc != nil {
		p.pc.Close()
	}
	p.wg.Wait()
	p.mu.Lock()
	for _, f := range p.flows {
		f.end()
	}
	p.mu.Unlock()
	p.conns.closeAll()
	p.conns.wait()
}

func (in *Ingress) acceptTCP(p *port) {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if !in.cfg.Local(addrOf(c.RemoteAddr())) {
			in.stats.local.Add(1)
			c.Close()
			continue
		}
		select {
		case in.slots <- struct{}{}:
		default:
			in.stats.dropped.Add(1) // too many at once: refused at once
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			continue
		}
		if !p.conns.add(c) {
			<-in.slots
			c.Close()
			return
		}
		go func() {
			defer func() { <-in.slots }()
			defer p.conns.done(c)
			up, err := in.dial(p.t)
			if err != nil {
				in.stats.failed.Add(1)
				in.log.Debug("forward failed", "target", p.t, "err", err)
				// A reset tells the client at once.
				c.(*net.TCPConn).SetLinger(0)
				return
			}
			if !p.conns.add(up) {
				up.Close()
				return
			}
			defer p.conns.done(up)
			in.stats.tcp.Add(1)
			splice(c.(*net.TCPConn), up)
		}()
	}
}

// dial opens a forwarded connection to t's node and has it connect to t.
func (in *Ingress) dial(t Target) (*net.TCPConn, error) {
	req, err := AppendRequest(nil, Request{Proto: t.Proto, To: t.To})
	if err != nil {
		return nil, err
	}
	// From this node's overlay address: the Server allows overlay peers.
	d := net.Dialer{Timeout: in.cfg.DialTimeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(in.cfg.Listen, 0))}
	c, err := d.Dial("tcp4", netip.AddrPortFrom(t.Via, in.cfg.ServerPort).String())
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(in.cfg.DialTimeout + requestTimeout))
	var st [1]byte
	if _, err = c.Write(req); err == nil {
		_, err = c.Read(st[:])
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("forward to %v: %w", t.Via, err)
	}
	if Status(st[0]) != StatusOK {
		c.Close()
		return nil, fmt.Errorf("forward to %v: %v", t.Via, Status(st[0]))
	}
	c.SetDeadline(time.Time{})
	return c.(*net.TCPConn), nil
}

// flow is one UDP client of a target's port.
type flow struct {
	q    chan []byte
	once sync.Once
	done chan struct{}
	last atomic.Int64
}

func (f *flow) end() { f.once.Do(func() { close(f.done) }) }

func (in *Ingress) readUDP(p *port) {
	defer p.wg.Done()
	buf := make([]byte, MaxDatagram)
	for {
		n, src, err := p.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if !in.cfg.Local(src.Addr()) {
			in.stats.local.Add(1)
			continue
		}
		p.mu.Lock()
		f := p.flows[src]
		if f == nil {
			if len(p.flows) >= in.cfg.MaxFlows {
				p.mu.Unlock()
				in.stats.dropped.Add(1)
				continue
			}
			f = &flow{q: make(chan []byte, flowQueue), done: make(chan struct{})}
			f.last.Store(time.Now().UnixNano())
			p.flows[src] = f
			if !p.conns.add(f) {
				delete(p.flows, src)
				p.mu.Unlock()
				return
			}
			go in.runFlow(p, src, f)
		}
		p.mu.Unlock()
		select {
		case f.q <- append([]byte(nil), buf[:n]...):
		default:
			in.stats.dropped.Add(1)
		}
	}
}

// runFlow carries one client's datagrams to the target's node and the
// replies back, until the flow is idle for IdleTimeout or either side
// ends it.
func (in *Ingress) runFlow(p *port, src netip.AddrPort, f *flow) {
	defer func() {
		p.mu.Lock()
		if p.flows[src] == f {
			delete(p.flows, src)
		}
		p.mu.Unlock()
		p.conns.done(f)
	}()
	up, err := in.dial(p.t)
	if err != nil {
		in.stats.failed.Add(1)
		in.log.Debug("forward failed", "target", p.t, "err", err)
		return
	}
	defer up.Close()
	in.stats.udp.Add(1)
	touch := func() { f.last.Store(time.Now().UnixNano()) }
	go func() {
		defer f.end()
		buf := make([]byte, MaxDatagram)
		for {
			d, err := ReadFrame(up, buf)
			if err != nil {
				return
			}
			touch()
			if _, err := p.pc.WriteToUDPAddrPort(d, src); err != nil && errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
	t := time.NewTicker(in.cfg.IdleTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			up.Close()
			return
		case d := <-f.q:
			touch()
			if err := WriteFrame(up, d); err != nil {
				f.end()
			}
		case <-t.C:
			if time.Since(time.Unix(0, f.last.Load())) >= in.cfg.IdleTimeout {
				f.end()
			}
		}
	}
}

// Close ends the flow (for the port's tracker).
func (f *flow) Close() error { f.end(); return nil }

// IngressStats counts what an Ingress did.
type IngressStats struct {
	TCP, UDP int64 // connections and flows forwarded
	NotLocal int64 // clients refused: not this node's
	Failed   int64 // forwards the target's node refused or did not answer
	Dropped  int64 // datagrams dropped (flow queue full, too many flows) and connections refused (MaxConns)
	Ports    int   // ports open
}

// Stats returns a snapshot of the counters.
func (in *Ingress) Stats() IngressStats {
	in.mu.Lock()
	n := len(in.open)
	in.mu.Unlock()
	return IngressStats{TCP: in.stats.tcp.Load(), UDP: in.stats.udp.Load(), NotLocal: in.stats.local.Load(),
		Failed: in.stats.failed.Load(), Dropped: in.stats.dropped.Load(), Ports: n}
}
