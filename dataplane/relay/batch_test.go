package relay

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"
)

func records(pkts ...[]byte) []byte {
	var b []byte
	for _, p := range pkts {
		b = appendRecord(b, p)
	}
	return b
}

func TestPacketRecords(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		n, size int
		ok      bool
	}{
		{"one", records([]byte("wireguard")), 1, 9, true},
		{"three", records([]byte("a"), make([]byte, 1400), []byte("bc")), 3, 1403, true},
		{"largest packet", records(make([]byte, maxPacketSize)), 1, maxPacketSize, true},
		{"empty frame", nil, 0, 0, false},
		{"half a length", []byte{0}, 0, 0, false},
		{"trailing byte", append(records([]byte("a")), 0), 0, 0, false},
		{"empty record", []byte{0, 0}, 0, 0, false},
		{"record past the end", []byte{0, 3, 'a', 'b'}, 0, 0, false},
		{"record too large", records(make([]byte, maxPacketSize+1)), 0, 0, false},
		{"good then bad", append(records([]byte("ok")), 0, 9, 'x'), 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, size, err := packetRecords(tc.in)
			if tc.ok != (err == nil) || n != tc.n || size != tc.size {
				t.Fatalf("got %d packets, %d bytes, %v; want %d, %d, ok %v", n, size, err, tc.n, tc.size, tc.ok)
			}
			if err != nil && !errors.Is(err, errBadRecords) {
				t.Fatalf("got %v, want errBadRecords", err)
			}
		})
	}
}

// FuzzPacketRecords: packetRecords accepts exactly what nextRecord can
// walk to the end, and what appendRecord writes reads back the same.
func FuzzPacketRecords(f *testing.F) {
	f.Add(records([]byte("wireguard"), []byte("x")))
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, 1})
	f.Add(records(make([]byte, maxPacketSize)))
	f.Fuzz(func(t *testing.T, in []byte) {
		n, size, err := packetRecords(in)
		if err != nil {
			if n != 0 || size != 0 {
				t.Fatalf("error %v with %d packets, %d bytes", err, n, size)
			}
			return
		}
		var pkts [][]byte
		got := 0
		for rest := in; len(rest) > 0; {
			var p []byte
			p, rest = nextRecord(rest)
			if len(p) == 0 || len(p) > maxPacketSize {
				t.Fatalf("accepted a record of %d bytes", len(p))
			}
			pkts = append(pkts, p)
			got += len(p)
		}
		if len(pkts) != n || got != size {
			t.Fatalf("walked %d packets, %d bytes; packetRecords said %d, %d", len(pkts), got, n, size)
		}
		if b := records(pkts...); !bytes.Equal(b, in) {
			t.Fatalf("re-encoded %x, want %x", b, in)
		}
	})
}

// testPackets is a batch of n packets of differing sizes and contents,
// the largest packet among them.
func testPackets(n int) [][]byte {
	var pkts [][]byte
	for i := range n {
		pkts = append(pkts, bytes.Repeat([]byte{byte(i)}, 1+(i*397)%1500))
	}
	return append(pkts, bytes.Repeat([]byte{0xee}, maxPacketSize))
}

// recvAll takes n packets from c, failing after 10 s.
func recvAll(t *testing.T, c *testClient, n int) []received {
	t.Helper()
	var got []received
	for len(got) < n {
		select {
		case r := <-c.got:
			got = append(got, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d packets, want %d", len(got), n)
		}
	}
	return got
}

// TestBatchInterop sends batches between nodes and relays that do and do
// not take featureBatch (older ones): each side uses batch frames only
// when both of its ends take them, and every packet arrives, intact and
// in order.
func TestBatchInterop(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		sender, relay, receive bool // take featureBatch
	}{
		{"all batch", true, true, true},
		{"older receiver", true, true, false},
		{"older sender", false, true, true},
		{"older relay", true, false, true},
		{"all older", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.startRelayWith(ServerConfig{}, "", func(s *Server) { s.batch = tc.relay })
			k1, k2 := newKey(), newKey()
			older := func(batch bool) func(*Client) { return func(c *Client) { c.noBatch = !batch } }
			c1 := e.startClientWith(r, k1, e.ticket(k1.Public(), time.Hour), older(tc.sender))
			c2 := e.startClientWith(r, k2, e.ticket(k2.Public(), time.Hour), older(tc.receive))
			waitConnected(t, c1, c2)
			eventually(t, 10*time.Second, "both clients at the relay", func() bool { return r.s.Stats().Clients == 2 })

			if got, want := c1.c.cur.Load().batch, tc.sender && tc.relay; got != want {
				t.Errorf("sender sends batch frames: got %v, want %v", got, want)
			}
			r.s.mu.RLock()
			got, want := r.s.clients[k2.Public()].batch, tc.relay && tc.receive
			r.s.mu.RUnlock()
			if got != want {
				t.Errorf("relay sends the receiver batch frames: got %v, want %v", got, want)
			}

			pkts := testPackets(200) // more than one batch frame holds
			if err := c1.c.SendBatch(k2.Public(), pkts); err != nil {
				t.Fatal(err)
			}
			for i, r := range recvAll(t, c2, len(pkts)) {
				if r.src != k1.Public() || !bytes.Equal(r.data, pkts[i]) {
					t.Fatalf("packet %d: got %d bytes from %v, want %d bytes from %v", i, len(r.data), r.src, len(pkts[i]), k1.Public())
				}
			}
			st := r.s.Stats()
			if st.PacketsIn != uint64(len(pkts)) || st.PacketsOut != uint64(len(pkts)) {
				t.Errorf("relay counted %d packets in, %d out; want %d each", st.PacketsIn, st.PacketsOut, len(pkts))
			}
		})
	}
}

// TestBatchOverMesh sends a batch between nodes homed on two meshed
// relays: the first relay splits it into forwarded packets.
func TestBatchOverMesh(t *testing.T) {
	e := newEnv(t)
	a, b, _ := meshPair(t, e, newNonce(32))
	k1, k2 := newKey(), newKey()
	c1 := e.startClient(a, k1, e.ticket(k1.Public(), time.Hour))
	c2 := e.startClient(b, k2, e.ticket(k2.Public(), time.Hour))
	waitConnected(t, c1, c2)
	sendUntilDelivered(t, c1, c2, []byte("route up"))
	pkts := testPackets(100)
	if err := c1.c.SendBatch(k2.Public(), pkts); err != nil {
		t.Fatal(err)
	}
	for i, r := range recvAll(t, c2, len(pkts)) {
		if !bytes.Equal(r.data, pkts[i]) {
			t.Fatalf("packet %d: got %d bytes, want %d", i, len(r.data), len(pkts[i]))
		}
	}
}

// TestBadBatchClosesConnection: a malformed batch frame closes the
// sender's connection and forwards none of its packets.
func TestBadBatchClosesConnection(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload func(dst, self Key) []byte
	}{
		{"no key", func(Key, Key) []byte { return []byte{1, 2} }},
		{"to self", func(_, self Key) []byte { return append(self[:], records([]byte("x"))...) }},
		{"no packets", func(dst, _ Key) []byte { return dst[:] }},
		{"good packet, then a truncated one", func(dst, _ Key) []byte {
			return append(append(dst[:], records([]byte("good"))...), 0, 9, 'x')
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.startRelay(ServerConfig{}, "")
			k := newKey()
			rc := dialNode(t, r, k)
			if err := rc.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
				t.Fatal(err)
			}
			other := newKey()
			c2 := e.startClient(r, other, e.ticket(other.Public(), time.Hour))
			waitConnected(t, c2)
			rc.send(t, frameSendPackets, tc.payload(other.Public(), k.Public()))
			rc.waitClosed(t)
			if st := r.s.Stats(); st.PacketsIn != 0 || st.Drops["bad_frame"] != 1 {
				t.Errorf("got %d packets in, %d bad frames; want 0 and 1", st.PacketsIn, st.Drops["bad_frame"])
			}
		})
	}
}

// TestBatchRateLimit: a batch over the client's rate limit is let
// through packet by packet as far as the limit allows.
func TestBatchRateLimit(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{RateBytes: 1, RateBurst: maxPacketSize}, "")
	c1, c2 := e.startPair(t, r)
	eventually(t, 10*time.Second, "both clients at the relay", func() bool { return r.s.Stats().Clients == 2 })
	pkts := slices.Repeat([][]byte{make([]byte, 1000)}, 12) // 12,000 bytes, burst 9,216: nine pass
	if err := c1.c.SendBatch(c2.pub, pkts); err != nil {
		t.Fatal(err)
	}
	recvAll(t, c2, 9)
	eventually(t, 10*time.Second, "three packets dropped for the rate", func() bool { return r.s.Stats().Drops["rate_limited"] == 3 })
}

// TestQueueBatchItems: a batch item costs its pooled buffer's class, and
// the packets a full queue drops are counted one by one.
func TestQueueBatchItems(t *testing.T) {
	q := newQueue(queueConfig{pkts: 2, bytes: 1 << 20, ctrl: 1}, nil)
	it := newBatchItem(frameRecvPackets, Key{1}, 32+3*recordHeaderLen+3*1000)
	for range 3 {
		it.pkt = appendRecord(it.pkt, make([]byte, 1000))
	}
	it.pkts = 3
	if got, want := it.cost(), int64(4<<10); got != want {
		t.Fatalf("cost of a 3,038-byte batch: got %d, want %d", got, want)
	}
	q.enqueue(it)
	q.enqueue(testPkt(1, 100))
	if dropped, _ := q.enqueue(testPkt(2, 100)); dropped != 3 {
		t.Fatalf("dropping the batch: got %d packets dropped, want 3", dropped)
	}
	for _, it := range drainAll(q) {
		it.release()
	}
}
