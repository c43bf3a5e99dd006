// Package socks5 is the agent's SOCKS5 proxy (RFC 1928, CONNECT only, no
// authentication), EdgeMesh's "reach a node by name" feature: a client asks
// for edge-node-01:22 and the proxy connects to that node's overlay
// address, so `ssh -o ProxyCommand='nc -X 5 -x ADDR:1080 %h %p' user@edge-node-01`
// works from any node. It only dials overlay destinations (node names and
// addresses the Resolver accepts), so it is never an open proxy.
//
// It serves local clients only (Config.Local: loopback, the host's
// addresses, the node's pod CIDRs): a connection from anyone else, an
// overlay peer or a LAN neighbour that routes the listen address through
// this node, is closed as it is accepted, before a byte is read or
// written, and counted. The agent's nftables guard (node/svcproxy) drops
// such connections before they get here; this is the second line.
// Connections are at most MaxConns at once; more wait in the kernel's
// accept queue.
package socks5

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Wire constants (RFC 1928).
const (
	version5       = 0x05
	methodNoAuth   = 0x00
	methodNone     = 0xff // no acceptable methods
	cmdConnect     = 0x01
	atypIPv4       = 0x01 // 4-byte address
	atypDomain     = 0x03 // 1-byte length + name
	atypIPv6       = 0x04 // 16-byte address
	repSucceeded   = 0x00
	repFailure     = 0x01
	repNotAllowed  = 0x02
	repHostUnreach = 0x04
	repRefused     = 0x05
	repCmdUnsupp   = 0x07
	repAtypUnsupp  = 0x08
)

// Resolver maps a requested destination to an overlay address. It returns
// an error for destinations the proxy must not dial.
type Resolver interface {
	Resolve(host string) (netip.Addr, error)
}

// ErrNotAllowed is what a Resolver returns for destinations outside the overlay.
var ErrNotAllowed = errors.New("destination not on the overlay")

// DefaultMaxConns bounds concurrent client connections.
const DefaultMaxConns = 256

// Config configures a Server.
type Config struct {
	Listen   netip.AddrPort
	Resolver Resolver
	Logger   *slog.Logger
	// Dial connects to the destination (nil: net.Dialer with a 10 s timeout).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Local reports whether a client address is this node's own
	// (loopback, host addresses, local pod CIDRs; see node/localsrc).
	// Connections from others are closed at once. nil: loopback only.
	Local func(netip.Addr) bool
	// MaxConns bounds client connections at once (default DefaultMaxConns).
	MaxConns int
}

// Server is a SOCKS5 server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	conns   atomic.Uint64 // connections proxied
	refused atomic.Uint64 // connections from foreign clients, closed
	slots   chan struct{} // a token per open client connection
	wg      sync.WaitGroup
}

// New validates cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("socks5: Resolver is required")
	}
	if !cfg.Listen.IsValid() {
		return nil, errors.New("socks5: listen address is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		cfg.Dial = d.DialContext
	}
	if cfg.Local == nil {
		cfg.Local = netip.Addr.IsLoopback
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("socks5: MaxConns %d is negative", cfg.MaxConns)
	}
	return &Server{cfg: cfg, log: cfg.Logger, slots: make(chan struct{}, cfg.MaxConns)}, nil
}

// Connections returns how many connections were proxied.
func (s *Server) Connections() uint64 { return s.conns.Load() }

// Refused returns how many connections from foreign clients were closed.
func (s *Server) Refused() uint64 { return s.refused.Load() }

// Run serves until ctx ends, then waits for its connections to finish.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen.String())
	if err != nil {
		return fmt.Errorf("socks5 listen %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	defer s.wg.Wait()
	for {
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := ln.Accept()
		if err != nil {
			<-s.slots
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if from := remoteAddr(c); !s.cfg.Local(from) {
			<-s.slots
			s.refused.Add(1)
			s.log.Debug("socks5: connection from a foreign client closed", "from", from)
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.slots }()
			s.handle(ctx, c)
		}()
	}
}

// remoteAddr is c's peer address, unmapped (invalid if not IP).
func remoteAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Request is a parsed CONNECT request.
type Request struct {
	Host string // domain name or IP literal
	Port uint16
}

// ReadGreeting reads the client's method list and reports whether it
// offers "no authentication".
func ReadGreeting(r io.Reader) (bool, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return false, err
	}
	if h[0] != version5 {
		return false, fmt.Errorf("socks version %d", h[0])
	}
	if h[1] == 0 {
		return false, errors.New("no methods offered")
	}
	methods := make([]byte, h[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return false, err
	}
	for _, m := range methods {
		if m == methodNoAuth {
			return true, nil
		}
	}
	return false, nil
}

// ReadRequest reads a request; it returns the reply code to send on error.
func ReadRequest(r io.Reader) (Request, byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Request{}, repFailure, err
	}
	if h[0] != version5 {
		return Request{}, repFailure, fmt.Errorf("socks version %d", h[0])
	}
	if h[1] != cmdConnect {
		return Request{}, repCmdUnsupp, fmt.Errorf("command %d not supported (CONNECT only)", h[1])
	}
	var req Request
	switch h[3] {
	case atypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return req, repFailure, err
		}
		req.Host = netip.AddrFrom4(a).String()
	case atypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return req, repFailure, err
		}
		req.Host = netip.AddrFrom16(a).String()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return req, repFailure, err
		}
		if n[0] == 0 {
			return req, repFailure, errors.New("empty domain name")
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return req, repFailure, err
		}
		req.Host = string(name)
	default:
		return req, repAtypUnsupp, fmt.Errorf("address type %d not supported", h[3])
	}
	var p [2]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return req, repFailure, err
	}
	req.Port = binary.BigEndian.Uint16(p[:])
	if req.Port == 0 {
		return req, repFailure, errors.New("port 0")
	}
	return req, 0, nil
}

func reply(w io.Writer, code byte, bound netip.AddrPort) error {
	b := []byte{version5, code, 0x00, atypIPv4, 0, 0, 0, 0, 0, 0}
	if bound.Addr().Is4() {
		a := bound.Addr().As4()
		copy(b[4:8], a[:])
		binary.BigEndian.PutUint16(b[8:], bound.Port())
	}
	_, err := w.Write(b)
	return err
}

func (s *Server) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	ok, err := ReadGreeting(c)
	if err != nil {
		s.log.Debug("socks5: bad greeting", "from", c.RemoteAddr(), "err", err)
		return
	}
	if !ok {
		c.Write([]byte{version5, methodNone})
		return
	}
	if _, err := c.Write([]byte{version5, methodNoAuth}); err != nil {
		return
	}
	req, code, err := ReadRequest(c)
	if err != nil {
		s.log.Debug("socks5: bad request", "from", c.RemoteAddr(), "err", err)
		reply(c, code, netip.AddrPort{})
		return
	}
	addr, err := s.cfg.Resolver.Resolve(req.Host)
	if err != nil {
		s.log.Info("socks5: refused", "from", c.RemoteAddr(), "host", req.Host, "err", err)
		code := byte(repHostUnreach)
		if errors.Is(err, ErrNotAllowed) {
			code = repNotAllowed
		}
		reply(c, code, netip.AddrPort{})
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	up, err := s.cfg.Dial(dctx, "tcp", net.JoinHostPort(addr.String(), strconv.Itoa(int(req.Port))))
	cancel()
	if err != nil {
		s.log.Info("socks5: connect failed", "host", req.Host, "addr", addr, "err", err)
		reply(c, repRefused, netip.AddrPort{})
		return
	}
	defer up.Close()
	var bound netip.AddrPort
	if ta, ok := up.LocalAddr().(*net.TCPAddr); ok {
		bound = ta.AddrPort()
	}
	if err := reply(c, repSucceeded, bound); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	s.conns.Add(1)
	s.log.Debug("socks5: connected", "from", c.RemoteAddr(), "host", req.Host, "addr", addr, "port", req.Port)
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
	go func() { io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	select {
	case <-done:
		<-done
	case <-ctx.Done():
	}
}

// closeWrite half-closes c where it can (TCP), so the peer sees EOF
// while the other direction goes on.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
