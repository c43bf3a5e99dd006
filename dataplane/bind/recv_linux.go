package bind

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// recv4 reads the IPv4 WireGuard socket for the device, in place of
// StdNetBind's own receive function, without allocating per datagram.
//
// Why: StdNetBind allocates a fresh endpoint for every datagram it
// returns. At 2.3 Gbit/s that is about 13 MB/s of garbage, which set the
// pace of the receiving agent's GC cycles; each cycle empties wireguard-go's
// buffer pools, which then refill with freshly zeroed 64 KiB buffers, so
// the garbage is what took the receiver's resident memory past its bound.
// recv4 hands out one endpoint per source address instead (a small cache);
// wireguard-go only reads them (roaming is off, so it keeps none for
// sending beyond a cookie reply).
//
// It reads a duplicate of StdNetBind's descriptor with recvmmsg, the way
// StdNetBind does: with UDP GRO on (StdNetBind turns it on where the
// kernel has it) it reads a few coalesced datagrams into the end of the
// batch and splits them into the front. It keeps no sticky source address:
// the endpoints the agent configures have none either.
//
// wireguard-go calls a receive function from one goroutine at a time.
type recv4 struct {
	c     *net.UDPConn // the duplicate; Close ends a read in progress
	rc    syscall.RawConn
	gro   bool // UDP_GRO is on: datagrams may come coalesced
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	oob   []byte // oobLen per message
	eps   map[netip.AddrPort]*conn.StdNetEndpoint

	// One read's arguments and results, for readFn (made once: a
	// closure per read would be an allocation per read).
	first, batch, got int
	serr              error
	readFn            func(fd uintptr) bool

	drops *atomic.Uint64 // segments beyond the batch (a kernel coalescing more than 64)
}

// oobLen holds the control messages the socket gets: UDP_GRO's segment
// size and IP_PKTINFO (StdNetBind asks for it).
var oobLen = unix.CmsgSpace(4) + unix.CmsgSpace(unix.SizeofInet4Pktinfo) + 64

// groSegments is the most datagrams the kernel coalesces into one
// (UDP_GRO_CNT_MAX): in GRO mode a batch of b buffers reads b/groSegments
// coalesced datagrams.
const groSegments = 64

// maxEndpoints bounds the endpoint cache; it starts again when full
// (sources a peer can spoof cannot grow it).
const maxEndpoints = 1024

// newRecv4 opens a duplicate of the IPv4 socket fd for batch reads of
// up to batch datagrams.
func newRecv4(fd, batch int, drops *atomic.Uint64) (*recv4, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("dup the IPv4 socket: %w", err)
	}
	f := os.NewFile(uintptr(dup), "wireguard-ipv4")
	pc, err := net.FilePacketConn(f) // duplicates again; f is closed below
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("the IPv4 socket as a connection: %w", err)
	}
	c, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("the IPv4 socket is a %T, not UDP", pc)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	gro, _ := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO)
	r := &recv4{
		c: c, rc: rc, gro: gro == 1, drops: drops,
		hdrs:  make([]unix.Mmsghdr, batch),
		iovs:  make([]unix.Iovec, batch),
		names: make([]unix.RawSockaddrInet4, batch),
		oob:   make([]byte, batch*oobLen),
		eps:   make(map[netip.AddrPort]*conn.StdNetEndpoint),
	}
	r.readFn = r.recvmmsg
	return r, nil
}

// Close ends the duplicate; a read in progress returns net.ErrClosed.
func (r *recv4) Close() error { return r.c.Close() }

// receive is the conn.ReceiveFunc.
func (r *recv4) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	batch := min(len(bufs), len(r.hdrs))
	if batch == 0 {
		return 0, nil
	}
	first := 0 // the slot of the first datagram read
	if r.gro {
		first = batch - max(batch/groSegments, 1)
	}
	for i := first; i < batch; i++ {
		h := &r.hdrs[i]
		r.iovs[i].Base = &bufs[i][0]
		r.iovs[i].SetLen(len(bufs[i]))
		h.Hdr.Iov = &r.iovs[i]
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet4
		h.Hdr.Control = &r.oob[i*oobLen]
		h.Hdr.SetControllen(oobLen)
		h.Hdr.Flags = 0
		h.Len = 0
	}
	r.first, r.batch, r.got, r.serr = first, batch, 0, nil
	if err := r.rc.Read(r.readFn); err != nil {
		return 0, err // net.ErrClosed after Close
	}
	if r.serr != nil {
		return 0, r.serr
	}
	got := r.got
	n := 0
	for i := first; i < first+got; i++ {
		h := &r.hdrs[i]
		size := int(h.Len)
		if size == 0 || h.Hdr.Flags&unix.MSG_TRUNC != 0 {
			continue
		}
		ep := r.endpoint(r.names[i])
		seg := size
		if s, ok := groSize(r.oob[i*oobLen : i*oobLen+min(int(h.Hdr.Controllen), oobLen)]); ok && s > 0 && s < size {
			seg = s
		}
		for start := 0; start < size; start += seg {
			if n > i { // would overwrite a datagram not split yet
				r.drops.Add(1)
				continue
			}
			end := min(start+seg, size)
			if n != i || start != 0 {
				copy(bufs[n], bufs[i][start:end])
			}
			sizes[n] = end - start
			eps[n] = ep
			n++
		}
	}
	return n, nil
}

// recvmmsg reads into hdrs[first:batch]; false: nothing to read yet.
func (r *recv4) recvmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[r.first])), uintptr(r.batch-r.first), 0, 0, 0)
		switch e {
		case 0:
			r.got = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // the poller waits until the socket is readable
		default:
			r.serr = os.NewSyscallError("recvmmsg", e)
			return true
		}
	}
}

// endpoint returns the one endpoint for a source address.
func (r *recv4) endpoint(sa unix.RawSockaddrInet4) *conn.StdNetEndpoint {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	ap := netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	if ep, ok := r.eps[ap]; ok {
		return ep
	}
	if len(r.eps) >= maxEndpoints {
		clear(r.eps)
	}
	ep := &conn.StdNetEndpoint{AddrPort: ap}
	r.eps[ap] = ep
	return ep
}

// groSize returns the segment size from a UDP_GRO control message in oob
// (the kernel's bytes; ok false when there is none or oob is malformed).
func groSize(oob []byte) (int, bool) {
	hdr := unix.SizeofCmsghdr
	lenSize := hdr - 8 // cmsg_len is a size_t, then two int32s
	for len(oob) >= hdr {
		var l int
		if lenSize == 8 {
			l = int(min(binary.NativeEndian.Uint64(oob), uint64(len(oob))+1))
		} else {
			l = int(binary.NativeEndian.Uint32(oob))
		}
		if l < hdr || l > len(oob) {
			return 0, false
		}
		level := int32(binary.NativeEndian.Uint32(oob[lenSize:]))
		typ := int32(binary.NativeEndian.Uint32(oob[lenSize+4:]))
		if level == unix.IPPROTO_UDP && typ == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(int32(binary.NativeEndian.Uint32(oob[unix.CmsgLen(0):]))), true
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next >= len(oob) {
			return 0, false
		}
		oob = oob[next:]
	}
	return 0, false
}
