package bind

import (
	"bytes"
	"net"
	"sync"
	"testing"

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

func TestRelayPath(t *testing.T) {
	b := New(nil, nil)
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	recv := fns[len(fns)-1]
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
