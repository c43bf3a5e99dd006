package bind

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// omitPMTU finds the process's IPv4 UDP socket on a port and takes DF
// off it, and leaves other sockets alone.
func TestOmitPMTU(t *testing.T) {
	target, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	mode := func(c *net.UDPConn) int {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER) })
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	before := mode(other)
	n, err := omitPMTU(uint16(target.LocalAddr().(*net.UDPAddr).Port))
	if err != nil || n != 1 {
		t.Fatalf("omitPMTU: %d sockets, %v; want 1", n, err)
	}
	if got := mode(target); got != unix.IP_PMTUDISC_OMIT {
		t.Errorf("target socket: IP_MTU_DISCOVER %d, want IP_PMTUDISC_OMIT (%d)", got, unix.IP_PMTUDISC_OMIT)
	}
	if got := mode(other); got != before {
		t.Errorf("another socket changed: %d, was %d", got, before)
	}
}
