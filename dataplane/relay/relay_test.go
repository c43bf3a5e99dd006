package relay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run when goroutines of this package outlive the
// tests (a dependency-free stand-in for goleak, which go.mod lacks).
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitNoLeaks(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

func waitNoLeaks(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for i, g := range strings.Split(string(buf), "\n\n") {
			if i > 0 && strings.Contains(g, "dataplane/relay.") && !strings.Contains(g, "testing.tRunner") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func frameBytes(t frameType, n uint32, payload []byte) []byte {
	b := []byte{byte(t), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], n)
	return append(b, payload...)
}

func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		typ frameType
		n   int
		buf []byte
	}{
		{frameRecvPacket, 0, nil},
		{frameRecvPacket, 1, nil},
		{frameRecvPacket, 8, nil},
		{frameRecvPacket, 1400, make([]byte, pktBufSize)},
		{frameRecvPacket, 4096 - frameHeaderLen, nil},     // fills the reader's buffer: in place
		{frameRecvPacket, 4096 - frameHeaderLen + 1, nil}, // one over: read out of it
		{frameRecvPacket, maxFramePayload, make([]byte, pktBufSize)},
		{frameRecvPacket, maxFramePayload, nil},
		{frameRevocations, maxRevocationsLen, make([]byte, 100)},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%#x/%d/buf%d", byte(tt.typ), tt.n, cap(tt.buf)), func(t *testing.T) {
			payload := bytes.Repeat([]byte{0xab}, tt.n)
			if tt.n > 0 {
				payload[tt.n/2] = 7
			}
			var b bytes.Buffer
			bw := bufio.NewWriter(&b)
			if err := writeFrame(bw, tt.typ, payload[:min(tt.n, 32)], payload[min(tt.n, 32):]); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
			if b.Len() != frameHeaderLen+tt.n {
				t.Fatalf("got %d bytes on the wire, want %d", b.Len(), frameHeaderLen+tt.n)
			}
			typ, p, err := readFrame(bufio.NewReader(&b), tt.buf, maxRevocationsLen)
			if err != nil || typ != tt.typ || !bytes.Equal(p, payload) {
				t.Fatalf("got type %#x, %d bytes, err %v; want %#x, %d bytes", byte(typ), len(p), err, byte(tt.typ), tt.n)
			}
		})
	}
}

func TestReadFrameErrors(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		limit int
		want  error
	}{
		{"empty", nil, maxFramePayload, io.EOF},
		{"partial header", []byte{4, 0, 0}, maxFramePayload, io.ErrUnexpectedEOF},
		{"partial payload", frameBytes(frameSendPacket, 40, make([]byte, 39)), maxFramePayload, io.ErrUnexpectedEOF},
		{"partial big payload", frameBytes(frameRevocations, uint32(maxRevocationsLen), make([]byte, 10000)), maxRevocationsLen, io.ErrUnexpectedEOF},
		{"one over max", frameBytes(frameSendPacket, maxFramePayload+1, nil), maxRevocationsLen, errFrameTooLarge},
		{"packet frame of a list's size", frameBytes(frameSendPacket, uint32(maxRevocationsLen), nil), maxRevocationsLen, errFrameTooLarge},
		{"list over its max", frameBytes(frameRevocations, uint32(maxRevocationsLen+1), nil), maxRevocationsLen, errFrameTooLarge},
		{"list where the caller takes none", frameBytes(frameRevocations, maxFramePayload+1, nil), maxFramePayload, errFrameTooLarge},
		{"over the handshake limit", frameBytes(frameClientInfo, maxHandshakePayload+1, nil), maxHandshakePayload, errFrameTooLarge},
		{"huge", frameBytes(frameSendPacket, 0xffffffff, nil), maxRevocationsLen, errFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readFrame(bufio.NewReader(bytes.NewReader(tt.in)), nil, tt.limit)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	var b bytes.Buffer
	if err := writeFrame(bufio.NewWriter(&b), frameSendPacket, make([]byte, maxFramePayload+1)); !errors.Is(err, errFrameTooLarge) {
		t.Errorf("writing an oversize frame: got %v, want errFrameTooLarge", err)
	}
	if err := writeFrame(bufio.NewWriter(&b), frameRevocations, make([]byte, maxRevocationsLen)); err != nil {
		t.Errorf("writing the largest list: got %v, want nil", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(frameBytes(frameSendPacket, 4, []byte{1, 2, 3, 4}))
	f.Add(frameBytes(framePing, 8, make([]byte, 8)))
	f.Add(frameBytes(frameSendPacket, maxFramePayload+1, nil))
	f.Add(frameBytes(frameRevocations, uint32(maxRevocationsLen), make([]byte, 100)))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		consumed := 0
		for {
			whole := frameBuffered(br)
			typ, p, err := readFrame(br, nil, maxRevocationsLen)
			if whole && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				t.Fatalf("frameBuffered said a whole frame was buffered at %d, but readFrame got %v", consumed, err)
			}
			if err != nil {
				// What was allocated is bounded by what arrived, not by
				// what a length field claims.
				return
			}
			if len(p) > maxPayload(typ) || cap(p) > 2*len(p)+4<<10 {
				t.Fatalf("payload of type %#x, len %d cap %d: over its max %d or allocated far beyond it", byte(typ), len(p), cap(p), maxPayload(typ))
			}
			if in[consumed] != byte(typ) || int(binary.BigEndian.Uint32(in[consumed+1:])) != len(p) ||
				!bytes.Equal(in[consumed+frameHeaderLen:consumed+frameHeaderLen+len(p)], p) {
				t.Fatalf("frame at %d decoded as type %#x len %d, not what the bytes say", consumed, byte(typ), len(p))
			}
			consumed += frameHeaderLen + len(p)
		}
	})
}

func BenchmarkFrameRoundTrip(b *testing.B) {
	dst := Key{7}
	pkt := make([]byte, 1400)
	var wire bytes.Buffer
	bw := bufio.NewWriterSize(&wire, 64<<10)
	br := bufio.NewReaderSize(&wire, 64<<10)
	buf := make([]byte, maxFramePayload)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		if err := writeFrame(bw, frameSendPacket, dst[:], pkt); err != nil {
			b.Fatal(err)
		}
		bw.Flush()
		if _, _, err := readFrame(br, buf, maxFramePayload); err != nil {
			b.Fatal(err)
		}
	}
}

// drainAll drains q until it is empty, as a writer does.
func drainAll(q *queue) []item {
	var got []item
	for range q.maxPkts + q.maxCtrl + 1 { // each drain takes at least one
		n := len(got)
		if got = q.drain(got); len(got) == n {
			break
		}
	}
	return got
}

func testPkt(i byte, size int) item {
	p := make([]byte, max(size, 1))
	p[0] = i
	return newPacketItem(frameSendPacket, Key{i}, Key{}, p)
}

func TestQueue(t *testing.T) {
	big := maxPacketSize // a backing of its own: cost 32+big
	tests := []struct {
		name        string
		pkts        int
		bytes       int64
		size        int // bytes per packet
		push        int
		wantDrops   int
		wantFirst   byte // k1[0] of the oldest packet left
		wantInQueue int
	}{
		{"under bound", 4, 1 << 20, 1, 3, 0, 1, 3},
		{"at bound", 4, 1 << 20, 1, 4, 0, 1, 4},
		{"over bound drops oldest", 4, 1 << 20, 1, 7, 3, 4, 4},
		{"bound 1", 1, 1 << 20, 1, 5, 4, 5, 1},
		{"grows past its first ring", 3 * initialRing, 1 << 20, 1, 2 * initialRing, 0, 1, 2 * initialRing},
		{"grows to the bound, then drops", 3 * initialRing, 1 << 20, 1, 4 * initialRing, initialRing, initialRing + 1, 3 * initialRing},
		{"byte bound: pooled packets", 1024, 10 * pktBufSize, 100, 15, 5, 6, 10},
		{"byte bound: big packets", 1024, int64(3*(32+big) + 100), big, 5, 2, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(queueConfig{pkts: tt.pkts, bytes: tt.bytes, ctrl: 4}, nil)
			drops := 0
			for i := 1; i <= tt.push; i++ {
				d, refused := q.pushPacket(testPkt(byte(i), tt.size))
				if refused {
					t.Fatalf("push %d refused without a budget", i)
				}
				drops += d
				if q.bytes > tt.bytes {
					t.Fatalf("after push %d: %d bytes queued, bound %d", i, q.bytes, tt.bytes)
				}
			}
			if !q.pushCtrl(item{typ: framePong, pkt: []byte("12345678")}, false) {
				t.Fatal("pushCtrl on an open queue failed")
			}
			if drops != tt.wantDrops {
				t.Errorf("drops: got %d, want %d", drops, tt.wantDrops)
			}
			got := drainAll(q)
			if len(got) != 1+tt.wantInQueue || got[0].typ != framePong {
				t.Fatalf("drained %d items (first %#x), want the control frame then %d packets", len(got), byte(got[0].typ), tt.wantInQueue)
			}
			for i, it := range got[1:] {
				want := tt.wantFirst + byte(i)
				if it.pkt[0] != want || it.pkt[32] != want {
					t.Errorf("packet %d: got %d/%d, want %d (oldest first)", i, it.pkt[0], it.pkt[32], want)
				}
			}
			if q.bytes != 0 {
				t.Errorf("drained queue accounts %d bytes, want 0", q.bytes)
			}
			q.close()
			q.pushPacket(testPkt(9, 1))
			if q.pushCtrl(item{typ: framePong}, true) {
				t.Error("pushCtrl on a closed queue succeeded")
			}
			if left := q.drain(nil); len(left) != 0 {
				t.Errorf("closed queue holds %d items, want 0", len(left))
			}
		})
	}
}

// TestQueueDrainBatches: a writer gets at most maxBatchCost at once, so
// a writer blocked on a stalled peer holds little outside the queue.
func TestQueueDrainBatches(t *testing.T) {
	q := newQueue(queueConfig{pkts: 1024, bytes: 4 << 20, ctrl: 4}, nil)
	for i := range 200 {
		q.pushPacket(testPkt(byte(i), 1400))
	}
	batch := q.drain(nil)
	var cost int64
	for i := range batch {
		cost += batch[i].cost()
		batch[i].release()
	}
	if cost > maxBatchCost+pktBufSize || len(batch) == 0 {
		t.Errorf("one drain took %d items costing %d, want at least one and at most %d", len(batch), cost, maxBatchCost+pktBufSize)
	}
	if want := int64(200-len(batch)) * pktBufSize; q.bytes != want {
		t.Errorf("queue accounts %d bytes, want %d", q.bytes, want)
	}
	q.close()
}

// TestQueueGrowsInOrder grows a ring whose head has wrapped: packets
// must still leave oldest first.
func TestQueueGrowsInOrder(t *testing.T) {
	q := newQueue(queueConfig{pkts: 4 * initialRing, bytes: 1 << 20, ctrl: 1}, nil)
	next, want := 0, 0
	push := func(n int) {
		for range n {
			it := newPacketItem(frameSendPacket, Key{}, Key{}, []byte{byte(next), byte(next >> 8)})
			next++
			q.pushPacket(it)
		}
	}
	check := func(got []item) {
		t.Helper()
		for _, it := range got {
			if v := int(it.pkt[32]) | int(it.pkt[33])<<8; v != want {
				t.Fatalf("got packet %d, want %d", v, want)
			}
			want++
			it.release()
		}
	}
	for _, n := range []int{initialRing - 3, initialRing, 3 * initialRing, 4 * initialRing} {
		push(n)
		check(drainAll(q))
	}
	if want != next {
		t.Fatalf("drained %d of %d packets", want, next)
	}
	if len(q.ring) != 4*initialRing {
		t.Errorf("ring holds %d slots, want the bound %d", len(q.ring), 4*initialRing)
	}
}

func TestQueueCtrlBound(t *testing.T) {
	q := newQueue(queueConfig{pkts: 1, bytes: minQueueBytes, ctrl: meshCtrl}, nil)
	for i := 0; i < meshCtrl; i++ {
		if !q.pushCtrl(item{typ: framePeerPresent}, false) {
			t.Fatalf("pushCtrl %d failed below the bound", i)
		}
	}
	if q.pushCtrl(item{typ: framePeerPresent}, false) {
		t.Error("pushCtrl beyond the bound succeeded")
	}
	if !q.pushCtrl(item{typ: framePeerPresent}, true) {
		t.Error("forced pushCtrl beyond the bound failed")
	}
}

// OnConnected is called when a connection is up (Connected already
// reports it), once per connection.
func TestOnConnected(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k := newKey()
	ups := make(chan bool, 4)
	tc := e.startClientWith(r, k, e.ticket(k.Public(), time.Hour), func(c *Client) {
		c.cfg.OnConnected = func() { ups <- c.Connected() }
	})
	select {
	case connected := <-ups:
		if !connected {
			t.Error("OnConnected called while Connected reports false")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnConnected not called")
	}
	tc.stop()
	select {
	case <-ups:
		t.Error("OnConnected called again without a new connection")
	default:
	}
}
