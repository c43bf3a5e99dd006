package bind

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// openStd opens a Bind over StdNetBind on a free port of 127.0.0.1 and
// returns its IPv4 receive function and port.
func openStd(t *testing.T) (*Bind, conn.ReceiveFunc, uint16) {
	t.Helper()
	b := New(nil, nil)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); b.Shutdown() })
	b.mu.Lock()
	r4 := b.r4
	b.mu.Unlock()
	if r4 == nil {
		t.Fatal("the IPv4 socket is read by StdNetBind's receive function, not recv4")
	}
	return b, fns[0], port
}

func deviceBufs(batch int) ([][]byte, []int, []conn.Endpoint) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, device.MaxMessageSize)
	}
	return bufs, make([]int, batch), make([]conn.Endpoint, batch)
}

// TestRecv4Endpoints: every datagram comes with its sender's address,
// and datagrams from one sender share one endpoint (no allocation per
// datagram) while another sender gets its own.
func TestRecv4Endpoints(t *testing.T) {
	b, recv, port := openStd(t)
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	var senders []*net.UDPConn
	for range 2 {
		c, err := net.DialUDP("udp4", nil, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		senders = append(senders, c)
	}
	want := map[netip.AddrPort]int{}
	for i := range 6 {
		c := senders[i%2]
		if _, err := c.Write(wg(4, 100+i)); err != nil {
			t.Fatal(err)
		}
		want[c.LocalAddr().(*net.UDPAddr).AddrPort()]++
	}
	bufs, sizes, eps := deviceBufs(b.BatchSize())
	got := map[netip.AddrPort]int{}
	byAddr := map[netip.AddrPort]conn.Endpoint{}
	for seen, deadline := 0, time.Now().Add(5*time.Second); seen < 6 && time.Now().Before(deadline); {
		n, err := recv(bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			seen++
			ep, ok := eps[i].(*conn.StdNetEndpoint)
			if !ok {
				t.Fatalf("endpoint %d is a %T", i, eps[i])
			}
			if sizes[i] < 100 || sizes[i] > 105 {
				t.Errorf("datagram %d: size %d, want 100-105", i, sizes[i])
			}
			got[ep.AddrPort]++
			if prev, ok := byAddr[ep.AddrPort]; ok && prev != eps[i] {
				t.Errorf("two endpoints for %v", ep.AddrPort)
			}
			byAddr[ep.AddrPort] = eps[i]
		}
	}
	if len(got) != 2 || got[senders[0].LocalAddr().(*net.UDPAddr).AddrPort()] != 3 || got[senders[1].LocalAddr().(*net.UDPAddr).AddrPort()] != 3 {
		t.Fatalf("datagrams by sender: got %v, want %v", got, want)
	}
}

// TestRecv4NoAllocs: reading a batch allocates nothing once the sender's
// endpoint is known (what the reader is for).
func TestRecv4NoAllocs(t *testing.T) {
	b, recv, port := openStd(t)
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pkt := wg(4, 1200)
	bufs, sizes, eps := deviceBufs(b.BatchSize())
	read := func() {
		for range 8 {
			if _, err := c.Write(pkt); err != nil {
				t.Fatal(err)
			}
		}
		for seen := 0; seen < 8; {
			n, err := recv(bufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			seen += n
		}
	}
	read() // the endpoint's first datagram
	if a := testing.AllocsPerRun(20, read); a != 0 {
		t.Errorf("allocations per 8 datagrams sent and read: %v, want 0", a)
	}
}

// TestRecv4Close: Close ends a read in progress with net.ErrClosed, as
// wireguard-go expects when it closes the bind.
func TestRecv4Close(t *testing.T) {
	b, recv, _ := openStd(t)
	bufs, sizes, eps := deviceBufs(b.BatchSize())
	done := make(chan error, 1)
	go func() {
		_, err := recv(bufs, sizes, eps)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // most likely in the read by now; either way it must end
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still blocked 5 s after Close")
	}
}

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func TestGroSize(t *testing.T) {
	seg := binary.NativeEndian.AppendUint32(nil, 1452)
	pktinfo := cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, make([]byte, unix.SizeofInet4Pktinfo))
	gro := cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, seg)
	short := cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, seg[:2])
	for _, tc := range []struct {
		name string
		oob  []byte
		want int
		ok   bool
	}{
		{"none", nil, 0, false},
		{"gro alone", gro, 1452, true},
		{"after pktinfo", append(append([]byte(nil), pktinfo...), gro...), 1452, true},
		{"pktinfo only", pktinfo, 0, false},
		{"gro with 2 bytes of data", short, 0, false},
		{"truncated header", gro[:unix.SizeofCmsghdr-1], 0, false},
		{"length past the end", gro[:unix.CmsgLen(2)], 0, false},
		{"zero length", make([]byte, 32), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := groSize(tc.oob)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("groSize: got %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// FuzzGroSize: the control bytes come from the kernel, but a parser of
// them must not read past them or loop, whatever they hold.
func FuzzGroSize(f *testing.F) {
	seg := binary.NativeEndian.AppendUint32(nil, 1452)
	f.Add(cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, seg))
	f.Add(append(cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, make([]byte, unix.SizeofInet4Pktinfo)), cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, seg)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		groSize(oob)
	})
}

// TestRecv4GROMode: where the kernel has UDP GRO the reader reads in GRO
// mode (so TestBindKeepsBatches splits coalesced datagrams through it).
func TestRecv4GROMode(t *testing.T) {
	b, _, _ := openStd(t)
	probe, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(probe)
	if err := unix.SetsockoptInt(probe, unix.IPPROTO_UDP, unix.UDP_GRO, 1); err != nil {
		t.Skipf("this kernel has no UDP GRO: %v", err)
	}
	if !b.r4.gro {
		t.Fatal("the kernel has UDP GRO, but the reader is not in GRO mode")
	}
}
