package inflight

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// device plays wireguard-go's side of a read seam: a batch of buffer slots
// passed to every read, where each packet the device keeps has its slot
// refilled with a fresh buffer before the next read.
type device struct {
	l    *Limiter
	dir  Direction
	bufs [][]byte
	r    reader
	done chan struct{}
}

func newDevice(l *Limiter, dir Direction, slots int) *device {
	d := &device{l: l, dir: dir, done: make(chan struct{})}
	for range slots {
		d.bufs = append(d.bufs, make([]byte, 64))
	}
	return d
}

// read is the device's next read, which returns n packets; it blocks
// while the direction is full.
func (d *device) read(n int) {
	d.l.before(d.dir, &d.r, d.bufs, d.done)
	sizes := make([]int, len(d.bufs))
	for i := range n {
		sizes[i] = 60
	}
	d.l.after(d.dir, &d.r, d.bufs, sizes, n)
}

// keep takes the buffers of the first n slots, as the device does with
// the packets a read returned, and refills the slots.
func (d *device) keep(n int) [][]byte {
	kept := make([][]byte, n)
	for i := range n {
		kept[i] = d.bufs[i]
		d.bufs[i] = make([]byte, 64)
	}
	return kept
}

func TestAccounting(t *testing.T) {
	l := New(100, time.Hour)
	in := newDevice(l, In, 4)
	out := newDevice(l, Out, 4)
	held := func(want [2]int) {
		t.Helper()
		if got := l.Stats().Held; got != want {
			t.Errorf("held: got %v, want %v (in, out)", got, want)
		}
	}

	in.read(3)
	held([2]int{3, 0}) // counted as the read returns them
	a := in.keep(2)
	in.read(0)
	held([2]int{2, 0}) // the packet left in its slot was not kept
	in.read(0)
	held([2]int{2, 0})
	l.release(a[:1]) // delivered
	held([2]int{1, 0})
	l.release(a[:1])
	held([2]int{1, 0}) // delivered twice: counted once

	// a[1] is dropped by the device (a keepalive) and comes back from its
	// pool to refill a TUN read slot: it is no longer held inbound.
	out.read(4)
	held([2]int{1, 4})
	kept := out.keep(4)
	out.bufs[3] = a[1]
	out.read(0)
	held([2]int{0, 4})
	l.release(kept) // sent
	l.release([][]byte{make([]byte, 8)})
	held([2]int{0, 0}) // a buffer never counted (a handshake message) changes nothing
	if p := l.Stats().Peak; p != [2]int{3, 4} {
		t.Errorf("peak: got %v, want [3 4]", p)
	}
}

// startRead runs d's next read and returns a channel closed when it
// returns.
func startRead(d *device) chan struct{} {
	ret := make(chan struct{})
	go func() { d.read(0); close(ret) }()
	return ret
}

func waitReturn(t *testing.T, ret chan struct{}, why string) {
	t.Helper()
	select {
	case <-ret:
	case <-time.After(10 * time.Second):
		t.Fatalf("read still waiting 10 s after %s", why)
	}
}

func stillWaiting(t *testing.T, ret chan struct{}) {
	t.Helper()
	select {
	case <-ret:
		t.Fatal("read went on with the direction full")
	case <-time.After(150 * time.Millisecond):
	}
}

func TestFullDirectionWaits(t *testing.T) {
	l := New(2, time.Hour)
	l.stall = int64(time.Hour)
	in := newDevice(l, In, 4)
	in.read(2)
	kept := in.keep(2)
	ret := startRead(in)
	stillWaiting(t, ret)

	// The other direction is not held up by this one.
	out := newDevice(l, Out, 4)
	out.read(1)
	out.keep(1)
	waitReturn(t, startRead(out), "reading the other direction")

	l.release(kept[:1])
	waitReturn(t, ret, "a delivery made room")
	s := l.Stats()
	if s.Waits[In] != 1 || s.Waits[Out] != 0 {
		t.Errorf("waits: got %v, want [1 0]", s.Waits)
	}
	if s.Waited[In] <= 0 {
		t.Errorf("time waited inbound: got %v, want > 0", s.Waited[In])
	}
}

func TestCloseEndsWait(t *testing.T) {
	l := New(1, time.Hour)
	l.stall = int64(time.Hour)
	in := newDevice(l, In, 2)
	in.read(1)
	in.keep(1)
	ret := startRead(in)
	stillWaiting(t, ret)
	close(in.done)
	waitReturn(t, ret, "the socket was closed")
}

// A buffer the device dropped and never used again stops counting after
// MaxAge, so a full direction cannot stay full for good.
func TestDroppedBuffersExpire(t *testing.T) {
	l := New(1, 20*time.Millisecond)
	l.stall = int64(time.Hour)
	in := newDevice(l, In, 2)
	in.read(1)
	in.keep(1) // never delivered, never seen again
	ret := startRead(in)
	waitReturn(t, ret, "the only held buffer expired")
	s := l.Stats()
	if s.Expired != 1 || s.Held[In] != 0 {
		t.Errorf("after expiry: expired %d, held %v; want 1 and [0 0]", s.Expired, s.Held)
	}
}

// A full direction with nothing delivered at all (packets staged for an
// unreachable peer) forgets what it has held for DefaultStall rather than
// stopping every flow for MaxAge.
func TestStallForgets(t *testing.T) {
	l := New(1, time.Hour)
	var clock atomic.Int64 // moved by hand: nothing here depends on the machine's speed
	l.now = clock.Load
	in := newDevice(l, In, 2)
	in.read(1)
	in.keep(1)
	ret := startRead(in)
	stillWaiting(t, ret) // no time has passed
	clock.Add(int64(DefaultStall))
	waitReturn(t, ret, "nothing was delivered for "+DefaultStall.String())
	if s := l.Stats(); s.Expired != 1 || s.Held[In] != 0 {
		t.Errorf("after the stall: expired %d, held %v; want 1 and [0 0]", s.Expired, s.Held)
	}

	// While other packets are delivered the device is not stalled: the
	// read waits for room however long that takes.
	in.read(1)
	kept := in.keep(1)
	ret = startRead(in)
	for range 6 {
		clock.Add(int64(DefaultStall / 2))
		l.release([][]byte{make([]byte, 8)}) // some other packet, delivered
	}
	stillWaiting(t, ret)
	l.release(kept)
	waitReturn(t, ret, "the packet was delivered")
}

// Many readers and deliverers at once: the count stays exact (-race).
func TestConcurrent(t *testing.T) {
	l := New(8, time.Hour)
	const readers, rounds = 3, 300
	delivered := make(chan [][]byte, readers*rounds)
	finished := make(chan struct{})
	for range readers {
		go func() {
			d := newDevice(l, In, 4)
			for range rounds {
				d.read(3)
				delivered <- d.keep(2)
			}
			d.read(0)
			finished <- struct{}{}
		}()
	}
	go func() {
		for b := range delivered {
			l.release(b)
		}
	}()
	for range readers {
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
			t.Fatal("readers stuck")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().Held[In] != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	s := l.Stats()
	if s.Held[In] != 0 {
		t.Errorf("held after everything was delivered: %d", s.Held[In])
	}
	if s.Peak[In] > 8+readers*3 {
		t.Errorf("peak %d: want at most the bound 8 plus one read's packets per reader (%d)", s.Peak[In], 8+readers*3)
	}
	close(delivered)
}

// Trim gives back the pages of the buffers of a read in progress (they
// read as zeros after), and leaves every other buffer alone.
func TestTrim(t *testing.T) {
	l := New(8, time.Hour)
	slots := func() [][]byte {
		var bufs [][]byte
		for range 4 {
			b := new([65535]byte) // wireguard-go's message buffer
			for i := range b {
				b[i] = 0xa5
			}
			bufs = append(bufs, b[:])
		}
		return bufs
	}
	waiting, between := l.newReader(), l.newReader()
	wb, bb := slots(), slots()
	l.before(In, waiting, wb, nil) // in the read: the device does not touch wb
	l.before(Out, between, bb, nil)
	l.after(Out, between, bb, make([]int, len(bb)), 0) // back in the device: bb is its to use

	n := l.Trim()
	if runtime.GOOS != "linux" {
		if n != 0 {
			t.Errorf("Trim off Linux: got %d bytes, want 0", n)
		}
		return
	}
	pages := 65535 / os.Getpagesize() // whole pages inside a 64 KiB buffer (page-aligned or not: at least one less)
	if n < len(wb)*(pages-1)*os.Getpagesize() || n > len(wb)*pages*os.Getpagesize() {
		t.Errorf("Trim: got %d bytes, want the whole pages of %d buffers (%d-%d)", n, len(wb), len(wb)*(pages-1)*os.Getpagesize(), len(wb)*pages*os.Getpagesize())
	}
	zeros := func(b []byte) (n int) {
		for _, c := range b {
			if c == 0 {
				n++
			}
		}
		return n
	}
	for i, b := range wb {
		if z := zeros(b); z < (pages-1)*os.Getpagesize() {
			t.Errorf("read in progress, buffer %d: %d zero bytes after Trim, want its whole pages", i, z)
		}
	}
	for i, b := range bb {
		if z := zeros(b); z != 0 {
			t.Errorf("buffer %d back in the device: %d bytes zeroed by Trim, want none", i, z)
		}
	}

	l.dropReaders(waiting)
	for _, b := range wb {
		b[0] = 1
	}
	if n := l.Trim(); n != 0 {
		t.Errorf("Trim with the reader gone: got %d bytes, want 0", n)
	}
}

// TestWaitAllocates: a full direction waits at every read, so a wait and
// the delivery that ends it must leave no garbage (a channel and a timer
// per wait did, 29 MB in one full-rate UDP run).
func TestWaitAllocates(t *testing.T) {
	l := New(1, time.Hour)
	in := newDevice(l, In, 1)
	in.read(1)
	kept := in.keep(1) // the direction is full now
	close(in.done)     // a wait returns at once, through its whole path
	other := [][]byte{make([]byte, 64)}
	cycle := func() {
		in.l.before(In, &in.r, in.bufs, in.done)
		l.mu.Lock()
		l.waiting[&in.r] = struct{}{} // as if it still waited
		l.mu.Unlock()
		l.release(other) // a delivery wakes it: not a held buffer, so still full
	}
	cycle()
	if a := testing.AllocsPerRun(100, cycle); a != 0 {
		t.Errorf("allocations per wait and delivery: %v, want 0", a)
	}
	if got := l.Stats().Held[In]; got != 1 {
		t.Fatalf("held in: %d, want 1 (the kept packet: %p)", got, kept[0])
	}
}
