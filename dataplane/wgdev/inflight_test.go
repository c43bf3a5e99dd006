package wgdev

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/edgewire/edgewire/dataplane/inflight"
)

// TestInflightBound runs two real wireguard-go devices in process with a
// slow reader of b's TUN device: without a bound, b's device would take
// every packet a sends into its queues (and its pools would grow with
// them); with one, it holds at most the bound while the rest waits in the
// (here lossless) network, and all of it arrives, in order.
func TestInflightBound(t *testing.T) {
	const bound, packets = 16, 600
	binds := bindtest.NewChannelBinds()
	aPriv, aPub := testKey(t)
	bPriv, bPub := testKey(t)
	tunA, tunB := tuntest.NewChannelTUN(), tuntest.NewChannelTUN()
	a, err := New(Config{Name: "lim-a", MTU: 1420, PrivateKey: aPriv, Bind: binds[0], TUN: tunA.TUN(), MaxInflight: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(Config{Name: "lim-b", MTU: 1420, PrivateKey: bPriv, Bind: binds[1], TUN: tunB.TUN(), MaxInflight: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	aIP, bIP := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")
	if err := a.SetPeers([]PeerConfig{{PublicKey: bPub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(bIP, 32)},
		Endpoint: netip.MustParseAddrPort("127.0.0.1:1")}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers([]PeerConfig{{PublicKey: aPub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(aIP, 32)},
		Endpoint: netip.MustParseAddrPort("127.0.0.1:2")}}); err != nil {
		t.Fatal(err)
	}
	if b.Inflight() == nil || b.Inflight().Max() != bound {
		t.Fatalf("b's limiter: got %v, want a bound of %d", b.Inflight(), bound)
	}

	send := make(chan error, 1)
	go func() {
		for i := range packets {
			p := tuntest.Ping(bIP, aIP)
			binary.BigEndian.PutUint16(p[4:6], uint16(i)) // the IPv4 ID numbers the packets (nothing in process checks the header checksum)
			select {
			case tunA.Outbound <- p:
			case <-time.After(20 * time.Second):
				send <- fmt.Errorf("packet %d not taken by a's device in 20 s", i)
				return
			}
		}
		send <- nil
	}()

	// b's reader takes a packet a millisecond: far slower than a sends.
	for i := range packets {
		select {
		case p := <-tunB.Inbound:
			if id := int(binary.BigEndian.Uint16(p[4:6])); id != i {
				t.Fatalf("packet %d arrived as packet %d", id, i)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d packets arrived; then nothing for 20 s (stats %+v)", i, packets, b.Inflight().Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if err := <-send; err != nil {
		t.Fatal(err)
	}
	// One packet per receive function (batch size 1 here) may be read
	// between the check and the call.
	s := b.Inflight().Stats()
	if s.Peak[inflight.In] > bound+2 {
		t.Errorf("b held %d packets inbound at most; want at most %d (the bound plus one per receive function)", s.Peak[inflight.In], bound+2)
	}
	if s.Waits[inflight.In] == 0 {
		t.Errorf("b's receive never waited for room: %+v", s)
	}
	// Delivered packets are no longer counted (what stays are handshake
	// buffers, forgotten after MaxAge).
	deadline := time.Now().Add(inflight.DefaultMaxAge + 5*time.Second)
	for b.Inflight().Stats().Held[inflight.In] != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("b still holds %d packets inbound after everything arrived", b.Inflight().Stats().Held[inflight.In])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
