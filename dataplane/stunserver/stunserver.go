// Package stunserver answers STUN binding requests (RFC 5389) so nodes
// learn the public address their NAT maps their WireGuard socket to. The
// coordinator and every relay serve it; agents gather server-reflexive ICE
// candidates against it through their shared socket.
package stunserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"

	"github.com/pion/stun/v4"
)

// AltAuto is the value of --stun-listen-alt meaning the STUN port + 1 on
// the STUN listener's host.
const AltAuto = "auto"

// AltListen returns the address of the server's second socket for the
// STUN listener main and the flag value alt: "" (off) stays "", AltAuto
// is main's port + 1 (port 0, any port, stays 0), anything else is taken
// as given. A node asks both sockets from one socket of its own: a NAT
// that maps the two flows to different public ports is endpoint-dependent.
func AltListen(main, alt string) (string, error) {
	if alt == "" || main == "" {
		return "", nil
	}
	if alt != AltAuto {
		if alt == main {
			return "", fmt.Errorf("--stun-listen-alt %s: the same address as --stun-listen", alt)
		}
		return alt, nil
	}
	host, port, err := net.SplitHostPort(main)
	if err != nil {
		return "", fmt.Errorf("--stun-listen %q: %w", main, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", fmt.Errorf("--stun-listen %q: port %q is not a number (give --stun-listen-alt explicitly)", main, port)
	}
	switch {
	case p == 0:
	case p == 65535:
		return "", fmt.Errorf("--stun-listen %q: no port above it for --stun-listen-alt %s (give one)", main, AltAuto)
	default:
		p++
	}
	return net.JoinHostPort(host, strconv.FormatUint(p, 10)), nil
}

// Port returns the UDP port of a server's address; 0 for nil.
func Port(s *Server) uint32 {
	if s == nil {
		return 0
	}
	return uint32(s.Addr().(*net.UDPAddr).Port)
}

// Counters are the server's counters.
type Counters struct {
	Requests atomic.Uint64 // binding requests answered
	Dropped  atomic.Uint64 // datagrams that were not binding requests
}

// Server serves STUN on one UDP socket.
type Server struct {
	pc  net.PacketConn
	log *slog.Logger
	C   Counters
}

// Listen opens a STUN server on addr (e.g. ":3478").
func Listen(addr string, log *slog.Logger) (*Server, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	return New(pc, log), nil
}

// New serves STUN on pc; the server owns pc.
func New(pc net.PacketConn, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{pc: pc, log: log}
}

// Addr is the local address.
func (s *Server) Addr() net.Addr { return s.pc.LocalAddr() }

// Serve answers requests until Close; it returns nil after Close.
func (s *Server) Serve() error {
	buf := make([]byte, 1500)
	out := new(stun.Message)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		resp, ok := Answer(buf[:n], ua.AddrPort(), out)
		if !ok {
			s.C.Dropped.Add(1)
			s.log.Debug("stun: dropped datagram", "from", from, "len", n)
			continue
		}
		// Counted before the reply leaves, so whoever has the reply sees
		// it counted.
		s.C.Requests.Add(1)
		if _, err := s.pc.WriteTo(resp, from); err != nil {
			s.log.Debug("stun: reply failed", "to", from, "err", err)
		}
	}
}

// Close stops the server.
func (s *Server) Close() error { return s.pc.Close() }

// Answer builds the binding success response to req from src into out and
// returns its bytes (valid until out is reused). ok is false for anything
// but a well-formed binding request.
func Answer(req []byte, src netip.AddrPort, out *stun.Message) ([]byte, bool) {
	if !stun.IsMessage(req) {
		return nil, false
	}
	in := &stun.Message{Raw: append([]byte(nil), req...)}
	if err := in.Decode(); err != nil || in.Type != stun.BindingRequest {
		return nil, false
	}
	out.Reset()
	err := out.Build(
		stun.NewTransactionIDSetter(in.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: src.Addr().Unmap().AsSlice(), Port: int(src.Port())},
		stun.Fingerprint,
	)
	if err != nil {
		return nil, false
	}
	return out.Raw, true
}
