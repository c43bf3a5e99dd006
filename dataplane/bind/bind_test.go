package bind

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

func TestBindSplitsWireGuardAndSTUN(t *testing.T) {
	b := New(nil, nil)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	defer b.Shutdown()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	wgPkt := wg(4, 64)
	stunPkt := stunMsg(8)
	junk := []byte("hello, not a protocol")
	for _, p := range [][]byte{wgPkt, stunPkt, junk} {
		if _, err := peer.WriteTo(p, dst); err != nil {
			t.Fatal(err)
		}
	}

	// Read until all three are seen on the IPv4 receive function.
	batch := b.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	var gotWG [][]byte
	seen := 0
	deadline := time.Now().Add(5 * time.Second)
	for seen < 3 && time.Now().Before(deadline) {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		seen += n
		for i := 0; i < n; i++ {
			if sizes[i] > 0 {
				gotWG = append(gotWG, append([]byte(nil), bufs[i][:sizes[i]]...))
			}
		}
	}
	if len(gotWG) != 1 || !bytes.Equal(gotWG[0], wgPkt) {
		t.Fatalf("device saw %d packets %x, want only the WireGuard one", len(gotWG), gotWG)
	}
	if got := b.C.OtherDrop.Load(); got != 1 {
		t.Errorf("other drops: got %d, want 1", got)
	}

	pc := b.PacketConn()
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("ICE side read: %v", err)
	}
	if !bytes.Equal(buf[:n], stunPkt) {
		t.Errorf("ICE side got %x, want the STUN packet", buf[:n])
	}
	if from.String() != peer.LocalAddr().String() {
		t.Errorf("ICE side source: got %s, want %s", from, peer.LocalAddr())
	}

	// ICE writes leave through the same socket (same source port).
	if _, err := pc.WriteTo(stunPkt, peer.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, src, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("peer read: %v", err)
	}
	if src.Port() != port || !bytes.Equal(buf[:n], stunPkt) {
		t.Errorf("peer got %x from port %d, want the STUN packet from port %d", buf[:n], src.Port(), port)
	}

	pc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, _, err := pc.ReadFrom(buf); err == nil {
		t.Error("read on an empty queue past its deadline: got nil error")
	}
	b.Shutdown()
	pc.SetReadDeadline(time.Time{})
	if _, _, err := pc.ReadFrom(buf); err != net.ErrClosed {
		t.Errorf("read after Shutdown: got %v, want net.ErrClosed", err)
	}
	if _, err := pc.WriteToUDPAddrPort(stunPkt, netip.MustParseAddrPort("127.0.0.1:9")); err != net.ErrClosed {
		t.Errorf("write after Shutdown: got %v, want net.ErrClosed", err)
	}
}
