package bind

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// TestBindKeepsBatches sends WireGuard transport packets the way the
// device does (one Send of many equal-size packets, which StdNetBind
// coalesces into UDP GSO datagrams where the kernel allows) with a STUN
// message as the short tail of the first run, and reads them with
// device-sized buffers. With UDP GRO the receiver reads each run as one
// coalesced datagram that StdNetBind splits; the wrapper must classify
// every split packet on its own, keep the batch whole (one receive call)
// and leave the WireGuard packets in place and in order.
func TestBindKeepsBatches(t *testing.T) {
	b := New(nil, nil)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	defer b.Shutdown()
	tx := conn.NewStdNetBind()
	if _, _, err := tx.Open(0); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	ep, err := tx.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		t.Fatal(err)
	}

	const run, size = 20, 1200
	var want [][]byte
	var send [][]byte
	pkt := func(i int) []byte {
		p := make([]byte, size, device.MaxMessageSize) // spare capacity: StdNetBind coalesces in place
		copy(p, wg(4, size))
		copy(p[16:], fmt.Sprintf("packet %03d", i))
		want = append(want, append([]byte(nil), p...))
		return p
	}
	for i := range run {
		send = append(send, pkt(i))
	}
	stun := stunMsg(40)
	send = append(send, append(make([]byte, 0, device.MaxMessageSize), stun...))
	for i := run; i < 2*run; i++ {
		send = append(send, pkt(i))
	}
	if err := tx.Send(send, ep); err != nil {
		t.Fatal(err)
	}

	batch := b.BatchSize()
	if batch != conn.IdealBatchSize {
		t.Fatalf("BatchSize: got %d, want %d (the inner bind's)", batch, conn.IdealBatchSize)
	}
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, device.MaxMessageSize)
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	var got [][]byte
	calls, seen := 0, 0
	for deadline := time.Now().Add(5 * time.Second); seen < len(send) && time.Now().Before(deadline); {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		calls++
		seen += n
		for i := range n {
			if sizes[i] > 0 {
				got = append(got, append([]byte(nil), bufs[i][:sizes[i]]...))
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("device got %d packets, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("packet %d: got %q..., want %q...", i, got[i][16:28], want[i][16:28])
		}
	}
	// Loopback delivers within Send, so everything is queued before the
	// first read: one call if the batch survives the wrapper (two GRO
	// datagrams, or 41 plain ones, both fit one read of 128 buffers).
	if calls != 1 {
		t.Errorf("receive calls: got %d, want 1 (batch split up)", calls)
	}
	if got := b.C.STUNIn.Load(); got != 1 {
		t.Errorf("STUN diverted: got %d, want 1", got)
	}
	if got := b.C.OtherDrop.Load(); got != 0 {
		t.Errorf("other drops: got %d, want 0", got)
	}
	pc := b.PacketConn()
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], stun) {
		t.Errorf("ICE side: got %x (%v), want the STUN message", buf[:n], err)
	}
}

// BenchmarkReceiveWrap is the wrapper's cost per received batch of 128
// WireGuard packets, over a receive function that returns a full batch.
func BenchmarkReceiveWrap(b *testing.B) {
	bd := New(nil, nil)
	const batch = conn.IdealBatchSize
	pkt := wg(4, 1452)
	inner := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for i := range batch {
			sizes[i] = len(pkt)
		}
		return batch, nil
	}
	fn := bd.wrap(inner)
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = append([]byte(nil), pkt...)
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	b.ReportAllocs()
	for b.Loop() {
		fn(bufs, sizes, eps)
	}
}
