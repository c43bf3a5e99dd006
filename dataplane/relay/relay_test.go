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
	for _, n := range []int{0, 1, 8, 1400, maxFramePayload} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			payload := bytes.Repeat([]byte{0xab}, n)
			var b bytes.Buffer
			bw := bufio.NewWriter(&b)
			if err := writeFrame(bw, frameRecvPacket, payload[:min(n, 32)], payload[min(n, 32):]); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
			if b.Len() != frameHeaderLen+n {
				t.Fatalf("got %d bytes on the wire, want %d", b.Len(), frameHeaderLen+n)
			}
			typ, p, err := readFrame(bufio.NewReader(&b), nil)
			if err != nil || typ != frameRecvPacket || !bytes.Equal(p, payload) {
				t.Fatalf("got type %#x, %d bytes, err %v; want %#x, %d bytes", byte(typ), len(p), err, byte(frameRecvPacket), n)
			}
		})
	}
}

func TestReadFrameErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"partial header", []byte{4, 0, 0}, io.ErrUnexpectedEOF},
		{"partial payload", frameBytes(frameSendPacket, 40, make([]byte, 39)), io.ErrUnexpectedEOF},
		{"one over max", frameBytes(frameSendPacket, maxFramePayload+1, nil), errFrameTooLarge},
		{"huge", frameBytes(frameSendPacket, 0xffffffff, nil), errFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readFrame(bufio.NewReader(bytes.NewReader(tt.in)), nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	var b bytes.Buffer
	if err := writeFrame(bufio.NewWriter(&b), frameSendPacket, make([]byte, maxFramePayload+1)); !errors.Is(err, errFrameTooLarge) {
		t.Errorf("writing an oversize frame: got %v, want errFrameTooLarge", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(frameBytes(frameSendPacket, 4, []byte{1, 2, 3, 4}))
	f.Add(frameBytes(framePing, 8, make([]byte, 8)))
	f.Add(frameBytes(frameSendPacket, maxFramePayload+1, nil))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		consumed := 0
		for {
			typ, p, err := readFrame(br, nil)
			if err != nil {
				return
			}
			if len(p) > maxFramePayload || cap(p) > maxFramePayload {
				t.Fatalf("payload of len %d cap %d exceeds the max frame %d", len(p), cap(p), maxFramePayload)
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
		if _, _, err := readFrame(br, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestQueue(t *testing.T) {
	pkt := func(i byte) item { return newPacketItem(frameSendPacket, Key{i}, Key{}, []byte{i}) }
	tests := []struct {
		name        string
		bound, push int
		wantDrops   int
		wantFirst   byte // k1[0] of the oldest packet left
	}{
		{"under bound", 4, 3, 0, 1},
		{"at bound", 4, 4, 0, 1},
		{"over bound drops oldest", 4, 7, 3, 4},
		{"bound 1", 1, 5, 4, 5},
		{"grows past its first ring", 3 * initialRing, 2 * initialRing, 0, 1},
		{"grows to the bound, then drops", 3 * initialRing, 4 * initialRing, initialRing, initialRing + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(tt.bound)
			drops := 0
			for i := 1; i <= tt.push; i++ {
				if q.pushPacket(pkt(byte(i))) {
					drops++
				}
			}
			if !q.pushCtrl(item{typ: framePong, pkt: []byte("12345678")}, false) {
				t.Fatal("pushCtrl on an open queue failed")
			}
			if drops != tt.wantDrops {
				t.Errorf("drops: got %d, want %d", drops, tt.wantDrops)
			}
			got := q.drain(nil)
			if len(got) != 1+min(tt.push, tt.bound) || got[0].typ != framePong {
				t.Fatalf("drained %d items (first %#x), want the control frame then %d packets", len(got), byte(got[0].typ), min(tt.push, tt.bound))
			}
			for i, it := range got[1:] {
				want := tt.wantFirst + byte(i)
				if it.k1[0] != want || it.pkt[0] != want {
					t.Errorf("packet %d: got %d/%d, want %d (oldest first)", i, it.k1[0], it.pkt[0], want)
				}
			}
			if again := q.drain(nil); len(again) != 0 {
				t.Errorf("second drain: got %d items, want 0", len(again))
			}
			q.close()
			q.pushPacket(pkt(9))
			if q.pushCtrl(item{typ: framePong}, true) {
				t.Error("pushCtrl on a closed queue succeeded")
			}
			if left := q.drain(nil); len(left) != 0 {
				t.Errorf("closed queue holds %d items, want 0", len(left))
			}
		})
	}
}

// TestQueueGrowsInOrder grows a ring whose head has wrapped: packets
// must still leave oldest first.
func TestQueueGrowsInOrder(t *testing.T) {
	q := newQueue(4 * initialRing)
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
			if v := int(it.pkt[0]) | int(it.pkt[1])<<8; v != want {
				t.Fatalf("got packet %d, want %d", v, want)
			}
			want++
			it.release()
		}
	}
	for _, n := range []int{initialRing - 3, initialRing, 3 * initialRing, 4 * initialRing} {
		push(n)
		check(q.drain(nil))
	}
	if want != next {
		t.Fatalf("drained %d of %d packets", want, next)
	}
	if len(q.ring) != 4*initialRing {
		t.Errorf("ring holds %d slots, want the bound %d", len(q.ring), 4*initialRing)
	}
}

func TestQueueCtrlBound(t *testing.T) {
	q := newQueue(1)
	for i := 0; i < maxCtrl; i++ {
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
