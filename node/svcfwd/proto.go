// Package svcfwd carries a Service connection to the node its endpoint
// runs on when the endpoint's address is not routable over the overlay
// (a runtime's default bridge that hands out 172.17.0.2 on every node, a
// CNI range nobody advertises). The client's node DNATs the ClusterIP to
// a local Ingress port; the Ingress hands each TCP connection or UDP flow
// over the overlay to the endpoint node's Server, which connects to the
// endpoint on its own node and splices the two. It is the path EdgeMesh
// takes for every endpoint; edgewire takes it only where layer 3 cannot
// reach (package svcpath decides).
//
// Protocol, one TCP connection per forwarded TCP connection or UDP flow,
// to the Server on the endpoint node's overlay address (DefaultPort):
//
//	request  "EWF1" | proto (1: 6 TCP, 17 UDP) | family (1: 4) | address (4) | port (2, big endian)
//	reply    status (1: StatusOK, or a refusal; the connection closes after a refusal)
//
// then, for TCP, the stream both ways (a half-close is passed on); for
// UDP, datagrams both ways, each framed as length (2, big endian) | bytes.
// A UDP flow ends after IdleTimeout without a datagram either way.
//
// The Server forwards only to what its Allow says (the agent allows the
// endpoints of Services on its own node, for overlay peers), so it is
// not an open proxy into the node's LAN.
package svcfwd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/edgewire/edgewire/types/services"
)

// DefaultPort is the Server's TCP port on each node's overlay address.
const DefaultPort = 51821

var magic = [4]byte{'E', 'W', 'F', '1'}

// requestLen is the length of a request (IPv4 only, for now).
const requestLen = 4 + 1 + 1 + 4 + 2

// Status is the Server's reply to a request.
type Status byte

const (
	StatusOK         Status = 0
	StatusNotAllowed Status = 1 // not an endpoint of a Service on this node, or not from a peer
	StatusDialFailed Status = 2 // the endpoint refused or did not answer
	StatusBusy       Status = 3 // too many forwarded connections
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusNotAllowed:
		return "not allowed"
	case StatusDialFailed:
		return "endpoint did not answer"
	case StatusBusy:
		return "busy"
	}
	return fmt.Sprintf("status %d", byte(s))
}

// Request names the endpoint a forwarded connection is for.
type Request struct {
	Proto services.Protocol
	To    netip.AddrPort
}

// AppendRequest appends r's encoding to b.
func AppendRequest(b []byte, r Request) ([]byte, error) {
	var proto byte
	switch r.Proto {
	case services.TCP:
		proto = 6
	case services.UDP:
		proto = 17
	default:
		return nil, fmt.Errorf("forward: protocol %q", r.Proto)
	}
	a := r.To.Addr().Unmap()
	if !a.Is4() || r.To.Port() == 0 {
		return nil, fmt.Errorf("forward: endpoint %v: want an IPv4 address and a port", r.To)
	}
	b = append(b, magic[:]...)
	b = append(b, proto, 4)
	b = append(b, a.AsSlice()...)
	return binary.BigEndian.AppendUint16(b, r.To.Port()), nil
}

// ParseRequest parses a request of exactly requestLen bytes.
func ParseRequest(b []byte) (Request, error) {
	var r Request
	if len(b) != requestLen {
		return r, fmt.Errorf("forward request of %d bytes, want %d", len(b), requestLen)
	}
	if [4]byte(b[:4]) != magic {
		return r, errors.New("forward request: bad magic")
	}
	switch b[4] {
	case 6:
		r.Proto = services.TCP
	case 17:
		r.Proto = services.UDP
	default:
		return r, fmt.Errorf("forward request: protocol %d", b[4])
	}
	if b[5] != 4 {
		return r, fmt.Errorf("forward request: address family %d", b[5])
	}
	a := netip.AddrFrom4([4]byte(b[6:10]))
	port := binary.BigEndian.Uint16(b[10:12])
	if port == 0 || a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return r, fmt.Errorf("forward request: endpoint %v:%d", a, port)
	}
	r.To = netip.AddrPortFrom(a, port)
	return r, nil
}

// ReadRequest reads and parses one request.
func ReadRequest(r io.Reader) (Request, error) {
	var b [requestLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Request{}, fmt.Errorf("forward request: %w", err)
	}
	return ParseRequest(b[:])
}

// MaxDatagram is the largest UDP payload a frame carries.
const MaxDatagram = 65507

// WriteFrame writes one datagram as a frame.
func WriteFrame(w io.Writer, p []byte) error {
	if len(p) > MaxDatagram {
		return fmt.Errorf("forward: datagram of %d bytes", len(p))
	}
	b := make([]byte, 2+len(p))
	binary.BigEndian.PutUint16(b, uint16(len(p)))
	copy(b[2:], p)
	_, err := w.Write(b)
	return err
}

// ReadFrame reads one frame into buf (at least MaxDatagram bytes) and
// returns the datagram, which aliases buf.
func ReadFrame(r io.Reader, buf []byte) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n > MaxDatagram || n > len(buf) {
		return nil, fmt.Errorf("forward: frame of %d bytes", n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return nil, fmt.Errorf("forward: frame: %w", io.ErrUnexpectedEOF)
	}
	return buf[:n], nil
}
