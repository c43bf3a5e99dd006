package bind

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/edgewire/edgewire/types/key"
)

type fakeRelay struct {
	mu   sync.Mutex
	sent map[key.Public][][]byte
}

func (f *fakeRelay) SendBatch(dst key.Public, pkts [][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range pkts {
		f.sent[dst] = append(f.sent[dst], append([]byte(nil), p...))
	}
	return nil
}

// openRelay opens a Bind and returns it with its relay ReceiveFunc.
func openRelay(t *testing.T) (*Bind, conn.ReceiveFunc) {
	t.Helper()
	b := New(nil, nil)
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown() })
	return b, fns[len(fns)-1]
}

func TestRelayPath(t *testing.T) {
	b, recv := openRelay(t)
	var k1, k2 key.Public
	k1[0], k2[0] = 1, 2

	ep1 := b.RelayEndpoint(k1)
	if !RelayPrefix.Contains(ep1.Addr()) || ep1.Port() != RelayPort {
		t.Fatalf("relay endpoint %s outside %s port %d", ep1, RelayPrefix, RelayPort)
	}
	if got := b.RelayEndpoint(k1); got != ep1 {
		t.Errorf("endpoint not stable: got %s, want %s", got, ep1)
	}
	if ep2 := b.RelayEndpoint(k2); ep2 == ep1 {
		t.Errorf("two peers share endpoint %s", ep1)
	}
	if _, err := b.ParseEndpoint("127.77.9.9:1"); err == nil {
		t.Error("ParseEndpoint accepted a relay address never handed out")
	}
	for _, tt := range []struct {
		ap     netip.AddrPort
		want   key.Public
		wantOK bool
	}{
		{ep1, k1, true},
		{b.RelayEndpoint(k2), k2, true},
		{netip.MustParseAddrPort("127.77.9.9:1"), key.Public{}, false},
		{netip.MustParseAddrPort("192.0.2.1:51820"), key.Public{}, false},
	} {
		if got, ok := b.RelayPeer(tt.ap); got != tt.want || ok != tt.wantOK {
			t.Errorf("RelayPeer(%s): got %v, %v; want %v, %v", tt.ap, got, ok, tt.want, tt.wantOK)
		}
	}
	ep, err := b.ParseEndpoint(ep1.String())
	if err != nil {
		t.Fatal(err)
	}

	pkt := wg(4, 48)
	if err := b.Send([][]byte{pkt}, ep); err != ErrNoRelay {
		t.Errorf("send without relay: got %v, want ErrNoRelay", err)
	}
	fr := &fakeRelay{sent: map[key.Public][][]byte{}}
	b.SetRelay(fr)
	if err := b.Send([][]byte{pkt, pkt}, ep); err != nil {
		t.Fatal(err)
	}
	if got := len(fr.sent[k1]); got != 2 {
		t.Errorf("relay got %d packets for k1, want 2", got)
	}

	if b.DeliverRelayed(k2, []byte("not wireguard")) {
		t.Error("DeliverRelayed accepted a non-WireGuard packet")
	}
	in1, in2 := wg(4, 64), wg(1, 148)
	b.DeliverRelayed(k2, in1)
	b.DeliverRelayed(k1, in2)
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048), make([]byte, 2048)}
	sizes := make([]int, 3)
	eps := make([]conn.Endpoint, 3)
	n, err := recv(bufs, sizes, eps)
	if err != nil || n != 2 {
		t.Fatalf("receive: got %d, %v, want 2 packets", n, err)
	}
	if !bytes.Equal(bufs[0][:sizes[0]], in1) || eps[0].DstToString() != b.RelayEndpoint(k2).String() {
		t.Errorf("first packet: got %x from %s", bufs[0][:sizes[0]], eps[0].DstToString())
	}
	if !bytes.Equal(bufs[1][:sizes[1]], in2) || eps[1].DstToString() != ep1.String() {
		t.Errorf("second packet: got %x from %s", bufs[1][:sizes[1]], eps[1].DstToString())
	}

	b.Close()
	if _, err := recv(bufs, sizes, eps); err != net.ErrClosed {
		t.Errorf("receive after Close: got %v, want net.ErrClosed", err)
	}
}

// TestRelayHandOff checks the receive path's two routes, straight into a
// waiting receive call and through the backlog: packets arrive whole, in
// order, a waiting call returns at FlushRelayed or when its buffers are
// full, the backlog is bounded, and Close ends a waiting call.
func TestRelayHandOff(t *testing.T) {
	b, recv := openRelay(t)
	var src key.Public
	src[0] = 9
	pkt := func(i int) []byte { p := wg(4, 32+i%100); p[4], p[5] = byte(i), byte(i>>8); return p }
	type result struct {
		n   int
		err error
	}
	const batch = 8
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	call := func() chan result {
		ch := make(chan result, 1)
		go func() { n, err := recv(bufs, sizes, eps); ch <- result{n, err} }()
		return ch
	}
	// waitParked waits until a receive call waits for packets.
	waitParked := func() {
		for range 5000 {
			b.rs.rmu.Lock()
			parked := b.rs.rx != nil
			b.rs.rmu.Unlock()
			if parked {
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Fatal("receive call never waited")
	}
	check := func(r result, from, n int) {
		t.Helper()
		if r.err != nil || r.n != n {
			t.Fatalf("receive: got %d packets, err %v; want %d", r.n, r.err, n)
		}
		for i := range n {
			if want := pkt(from + i); !bytes.Equal(bufs[i][:sizes[i]], want) || eps[i].DstToString() != b.RelayEndpoint(src).String() {
				t.Fatalf("packet %d: got %x from %s, want %x", i, bufs[i][:sizes[i]], eps[i].DstToString(), want)
			}
		}
	}

	// Queued into a waiting call: it returns at the flush, not before.
	ch := call()
	waitParked()
	for i := range 3 {
		b.QueueRelayed(src, pkt(i))
	}
	select {
	case r := <-ch:
		t.Fatalf("receive returned %d packets before the flush", r.n)
	default:
	}
	b.FlushRelayed()
	check(<-ch, 0, 3)

	// A full batch returns without a flush; the rest waits in the
	// backlog for the next call, in order.
	ch = call()
	waitParked()
	for i := range batch + 3 {
		b.QueueRelayed(src, pkt(10+i))
	}
	check(<-ch, 10, batch)
	check(<-call(), 10+batch, 3)

	// The backlog is bounded; what does not fit is dropped and counted.
	dropped := b.C.RelayDropped.Load()
	for i := range relayQueue + 5 {
		b.QueueRelayed(src, pkt(i))
	}
	if got := b.C.RelayDropped.Load() - dropped; got != 5 {
		t.Errorf("backlog overflow dropped %d packets, want 5", got)
	}
	for i := 0; i < relayQueue; i += batch {
		check(<-call(), i, batch)
	}

	// Close ends a waiting call.
	ch = call()
	waitParked()
	b.Close()
	if r := <-ch; r.err != net.ErrClosed {
		t.Errorf("waiting receive after Close: got %d, %v; want net.ErrClosed", r.n, r.err)
	}
}
