package dnsserver

import (
	"net"

	"github.com/miekg/dns"
)

// recorder is a dns.ResponseWriter that keeps what a handler writes. Each
// reply is packed and unpacked again, so tests see what a client would
// (truncation, extended rcodes) and a reply that cannot be packed fails.
type recorder struct {
	tcp     bool
	from    net.IP     // client address; nil: 127.0.0.1
	msgs    []*dns.Msg // replies as a client would decode them
	sizes   []int      // their length on the wire
	packErr error      // first reply that did not pack
}

var _ dns.ResponseWriter = (*recorder)(nil)

func (r *recorder) LocalAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}

func (r *recorder) RemoteAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: r.remoteIP(), Port: 40000}
	}
	return &net.UDPAddr{IP: r.remoteIP(), Port: 40000}
}

func (r *recorder) remoteIP() net.IP {
	if r.from != nil {
		return r.from
	}
	return net.IPv4(127, 0, 0, 1)
}

func (r *recorder) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		if r.packErr == nil {
			r.packErr = err
		}
		r.msgs = append(r.msgs, nil)
		return err
	}
	_, err = r.Write(b)
	return err
}

func (r *recorder) Write(b []byte) (int, error) {
	r.sizes = append(r.sizes, len(b))
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		if r.packErr == nil {
			r.packErr = err
		}
		m = nil
	}
	r.msgs = append(r.msgs, m)
	return len(b), nil
}

func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

// discard is a ResponseWriter for benchmarks: it keeps nothing, and packs
// into a reused buffer when pack is set.
type discard struct {
	pack bool
	buf  []byte
}

func (d *discard) LocalAddr() net.Addr  { return &net.UDPAddr{} }
func (d *discard) RemoteAddr() net.Addr { return udpRemote }
func (d *discard) WriteMsg(m *dns.Msg) error {
	if !d.pack {
		return nil
	}
	b, err := m.PackBuffer(d.buf)
	d.buf = b[:cap(b)]
	return err
}
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) Close() error                { return nil }
func (d *discard) TsigStatus() error           { return nil }
func (d *discard) TsigTimersOnly(bool)         {}
func (d *discard) Hijack()                     {}

var udpRemote = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
