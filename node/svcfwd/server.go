package svcfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgewire/edgewire/types/services"
)

// Defaults of ServerConfig and IngressConfig.
const (
	DefaultDialTimeout = 5 * time.Second
	DefaultIdleTimeout = 60 * time.Second // a UDP flow without a datagram either way
	DefaultMaxConns    = 4096
	requestTimeout     = 10 * time.Second
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Listen is this node's overlay address and the port (DefaultPort).
	Listen netip.AddrPort
	// Allow reports whether peer may reach to over proto. Required.
	Allow       func(peer netip.Addr, to netip.AddrPort, proto services.Protocol) bool
	DialTimeout time.Duration // default DefaultDialTimeout
	IdleTimeout time.Duration // default DefaultIdleTimeout
	MaxConns    int           // forwarded connections at once; default DefaultMaxConns
	Logger      *slog.Logger
}

// Server is the endpoint node's side: it connects forwarded connections
// to endpoints on this node.
type Server struct {
	cfg   ServerConfig
	log   *slog.Logger
	slots chan struct{}
	stats counters
}

// NewServer validates cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	if !cfg.Listen.IsValid() || cfg.Listen.Port() == 0 {
		return nil, fmt.Errorf("forward server: listen address %v needs an address and a port", cfg.Listen)
	}
	if cfg.Allow == nil {
		return nil, errors.New("forward server: no Allow")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Logger, slots: make(chan struct{}, cfg.MaxConns)}, nil
}

// Run serves until ctx ends, then closes every forwarded connection and
// waits for their goroutines.
func (s *Server) Run(ctx context.Context) error {
	lc := net.ListenConfig{Control: freebind}
	ln, err := lc.Listen(ctx, "tcp4", s.cfg.Listen.String())
	if err != nil {
		return fmt.Errorf("forward server: %w", err)
	}
	s.log.Info("forwarding Service connections to endpoints on this node", "listen", s.cfg.Listen)
	var conns tracker
	stop := context.AfterFunc(ctx, func() { ln.Close(); conns.closeAll() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				conns.wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			ln.Close()
			conns.closeAll()
			conns.wait()
			return fmt.Errorf("forward server: %w", err)
		}
		if !conns.add(c) {
			c.Close()
			continue
		}
		go func() {
			defer conns.done(c)
			s.serve(ctx, c.(*net.TCPConn))
		}()
	}
}

func (s *Server) serve(ctx context.Context, c *net.TCPConn) {
	peer := addrOf(c.RemoteAddr())
	c.SetDeadline(time.Now().Add(requestTimeout))
	req, err := ReadRequest(c)
	if err != nil {
		s.stats.refused.Add(1)
		s.log.Debug("bad forward request", "from", peer, "err", err)
		return
	}
	if !s.cfg.Allow(peer, req.To, req.Proto) {
		s.stats.refused.Add(1)
		s.log.Debug("forward refused", "from", peer, "to", req.To, "proto", req.Proto)
		c.Write([]byte{byte(StatusNotAllowed)})
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		s.stats.busy.Add(1)
		c.Write([]byte{byte(StatusBusy)})
		return
	}
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	network := "tcp4"
	if req.Proto == services.UDP {
		network = "udp4"
	}
	up, err := d.DialContext(ctx, network, req.To.String())
	if err != nil {
		s.stats.dialFailed.Add(1)
		s.log.Debug("forward: endpoint did not answer", "from", peer, "to", req.To, "proto", req.Proto, "err", err)
		c.Write([]byte{byte(StatusDialFailed)})
		return
	}
	defer up.Close()
	if _, err := c.Write([]byte{byte(StatusOK)}); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	if req.Proto == services.TCP {
		s.stats.tcp.Add(1)
		splice(c, up.(*net.TCPConn))
		return
	}
	s.stats.udp.Add(1)
	pumpUDP(c, up.(*net.UDPConn), s.cfg.IdleTimeout)
}

// splice copies both ways until both directions end, passing on
// half-closes (io.Copy between TCP sockets uses splice(2) on Linux).
func splice(a, b *net.TCPConn) {
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src *net.TCPConn) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			// A reset on one side resets the other.
			dst.SetLinger(0)
			dst.Close()
			src.Close()
			return
		}
		dst.CloseWrite()
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
}

// pumpUDP carries frames on c to the connected socket u and datagrams
// from u back as frames, until either side closes or nothing moves for
// idle.
func pumpUDP(c *net.TCPConn, u *net.UDPConn, idle time.Duration) {
	var last atomic.Int64
	touch := func() { last.Store(time.Now().UnixNano()) }
	touch()
	done := make(chan struct{})
	var once sync.Once
	end := func() { once.Do(func() { close(done); c.Close(); u.Close() }) }
	go func() {
		defer end()
		buf := make([]byte, MaxDatagram)
		for {
			p, err := ReadFrame(c, buf)
			if err != nil {
				return
			}
			touch()
			if _, err := u.Write(p); err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					continue // the endpoint's ICMP unreachable for an earlier datagram
				}
				return
			}
		}
	}()
	go func() {
		defer end()
		buf := make([]byte, MaxDatagram)
		for {
			n, err := u.Read(buf)
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					continue // the endpoint's ICMP unreachable for an earlier datagram
				}
				return
			}
			touch()
			if err := WriteFrame(c, buf[:n]); err != nil {
				return
			}
		}
	}()
	t := time.NewTicker(idle / 4)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if time.Since(time.Unix(0, last.Load())) >= idle {
				end()
				return
			}
		}
	}
}

// ServerStats counts what a Server did.
type ServerStats struct {
	TCP, UDP   int64 // connections and flows forwarded
	Refused    int64 // bad or not-allowed requests
	DialFailed int64 // endpoints that did not answer
	Busy       int64 // refused for MaxConns
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{TCP: s.stats.tcp.Load(), UDP: s.stats.udp.Load(), Refused: s.stats.refused.Load(),
		DialFailed: s.stats.dialFailed.Load(), Busy: s.stats.busy.Load()}
}

type counters struct {
	tcp, udp, refused, dialFailed, busy, local atomic.Int64
}

// tracker holds the open connections of a listener, so that shutting
// down closes them all and waits for their goroutines.
type tracker struct {
	mu     sync.Mutex
	conns  map[io.Closer]bool
	closed bool
	wg     sync.WaitGroup
}

func (t *tracker) add(c io.Closer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.conns == nil {
		t.conns = map[io.Closer]bool{}
	}
	t.conns[c] = true
	t.wg.Add(1)
	return true
}

func (t *tracker) done(c io.Closer) {
	c.Close()
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	t.wg.Done()
}

func (t *tracker) closeAll() {
	t.mu.Lock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
}

func (t *tracker) wait() { t.wg.Wait() }

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}
