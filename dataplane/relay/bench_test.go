package relay

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// BenchmarkRelayThroughput pushes 1400-byte packets from one client to
// another through a loopback relay, keeping a window in flight so the
// drop-oldest queues never drop.
func BenchmarkRelayThroughput(b *testing.B) {
	e := newEnv(b)
	s, err := NewServer(ServerConfig{PrivateKey: newKey(), TicketKey: e.tpub, RateBytes: 1e12, RateBurst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	r := e.startRelayServer(s)
	real := func(k key.Private) []byte {
		return SignTicket(e.tpriv, Ticket{Node: k.Public(), Expires: time.Now().Add(time.Hour)})
	}
	var got atomic.Int64
	more := make(chan struct{}, 1)
	recv := func(Key, []byte) {
		got.Add(1)
		select {
		case more <- struct{}{}:
		default:
		}
	}
	k1, k2 := newKey(), newKey()
	c1 := benchClient(b, r, k1, real(k1), nil)
	benchClient(b, r, k2, real(k2), recv)
	eventually(b, 5*time.Second, "clients", func() bool { return s.Stats().Clients == 2 && c1.Connected() })
	dst := k2.Public()
	pkt := make([]byte, 1400)
	const window = 128
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := int64(0); i < int64(b.N); i++ {
		for i-got.Load() >= window {
			select {
			case <-more:
			case <-time.After(time.Second):
				b.Fatalf("stalled: %d sent, %d received", i, got.Load())
			}
		}
		if err := c1.Send(dst, pkt); err != nil {
			b.Fatal(err)
		}
	}
	for got.Load() < int64(b.N) {
		select {
		case <-more:
		case <-time.After(time.Second):
			b.Fatalf("lost packets: %d sent, %d received", b.N, got.Load())
		}
	}
	b.StopTimer()
}

func (e *env) startRelayServer(s *Server) *testRelay {
	ln, err := listenLoopback()
	if err != nil {
		e.t.Fatal(err)
	}
	return e.serveRelay(s, ln)
}

func benchClient(b *testing.B, r *testRelay, priv key.Private, ticket []byte, onPacket func(Key, []byte)) *Client {
	c, err := NewClient(ClientConfig{URL: r.url, ServerKey: r.s.PublicKey(), PrivateKey: priv, Ticket: ticket, OnPacket: onPacket})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { c.Run(ctx) })
	b.Cleanup(func() { cancel(); wg.Wait() })
	return c
}
