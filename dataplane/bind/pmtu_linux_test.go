package bind

import (
	"net"
	"testing"
	"time"

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
	fds, err := omitPMTU(uint16(target.LocalAddr().(*net.UDPAddr).Port))
	if err != nil || len(fds) != 1 {
		t.Fatalf("omitPMTU: %d sockets, %v; want 1", len(fds), err)
	}
	if got := mode(target); got != unix.IP_PMTUDISC_OMIT {
		t.Errorf("target socket: IP_MTU_DISCOVER %d, want IP_PMTUDISC_OMIT (%d)", got, unix.IP_PMTUDISC_OMIT)
	}
	if got := mode(other); got != before {
		t.Errorf("another socket changed: %d, was %d", got, before)
	}
}

// sendTTL sends one datagram with the given TTL; the receiver sees it
// (IP_RECVTTL) with that TTL.
func TestSendTTL(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	rrc, _ := rx.SyscallConn()
	rrc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1) })
	tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	trc, _ := tx.SyscallConn()
	var serr error
	trc.Control(func(fd uintptr) { serr = sendTTL(int(fd), rx.LocalAddr().(*net.UDPAddr).AddrPort(), []byte{0xff}, 3) })
	if serr != nil {
		t.Fatal(serr)
	}
	buf, oob := make([]byte, 16), make([]byte, 64)
	rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, oobn, _, _, err := rx.ReadMsgUDP(buf, oob)
	if err != nil || n != 1 {
		t.Fatalf("read: %d bytes, %v", n, err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		t.Fatalf("no control message: %v", err)
	}
	if ttl := int(msgs[0].Data[0]); msgs[0].Header.Type != unix.IP_TTL || ttl != 3 {
		t.Errorf("received TTL %d (type %d), want 3", ttl, msgs[0].Header.Type)
	}
}
