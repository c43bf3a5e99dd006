package bind

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// omitPMTU sets IP_MTU_DISCOVER to IP_PMTUDISC_OMIT on this process's
// IPv4 UDP sockets bound to port (the WireGuard socket StdNetBind opened,
// which keeps its file descriptors to itself) and returns their
// descriptors.
//
// Why: the overlay's 1420-byte MTU makes 1480-byte datagrams. Over an
// underlay with a smaller MTU somewhere on the path (PPPoE, mobile
// carriers, tunnels), the default sets DF: routers drop and answer
// "fragmentation needed", the kernel learns the smaller path MTU, and
// from then on refuses every UDP GSO batch whose segments exceed it
// (sendmmsg: message too long), which wireguard-go does not recover
// from — bulk traffic blackholes. OMIT sends without DF and sizes by the
// interface MTU, so a router on a smaller link fragments instead, and a
// normal path is unchanged. IPv6 routers never fragment, so IPv6
// sockets keep their setting.
func omitPMTU(port uint16) ([]int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		if in4, ok := sa.(*unix.SockaddrInet4); !ok || in4.Port != int(port) {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_OMIT); err != nil {
			return fds, fmt.Errorf("IP_MTU_DISCOVER on the UDP socket of port %d: %w", port, err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// sendTTL sends p to dst from the socket fd with the IP TTL ttl, for
// this datagram only.
func sendTTL(fd int, dst netip.AddrPort, p []byte, ttl int) error {
	if !dst.Addr().Is4() {
		return fmt.Errorf("send with TTL to %v: IPv4 only", dst)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = int32(ttl)
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	_, err := unix.SendmsgN(fd, p, oob, sa, unix.MSG_DONTWAIT)
	return err
}
