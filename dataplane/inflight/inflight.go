// Package inflight bounds the packets a wireguard-go device holds between
// taking them in and handing them on, and so the memory its buffer pools
// can grow to.
//
// wireguard-go on Linux gives every packet a 64 KiB buffer from a
// sync.Pool with no limit and queues up to 1,024 batches per stage, so a
// bulk flow that outpaces decryption or the TUN device grows the pools to
// hundreds of MiB. The limits it has are compile-time constants that only
// its iOS build sets. A Limiter bounds the same thing from outside, at the
// two seams the device already has:
//
//   - inbound, a packet is held from the receive call that filled its
//     buffer (the Bind's ReceiveFunc) until the TUN Write that delivers it;
//   - outbound, from the TUN Read that filled it until the Bind Send that
//     sends it.
//
// When a direction holds Max packets, the next receive (or TUN read) waits
// until deliveries bring it under: the socket's (or the TUN's) kernel
// queue then fills and drops, which is the backpressure TCP reacts to, as
// it does on any slower link.
//
// A packet is counted as soon as a read returns it, known by its buffer's
// address. wireguard-go replaces the buffer of every packet it keeps with a
// fresh one from its pool before the next call, so a packet whose buffer
// is still in its slot at the next call was not kept and is forgotten
// then. One the device dropped later (a keepalive, a packet that failed to
// decrypt) is forgotten when its buffer comes back in a fresh slot or goes
// out in a Send. A dropped
// buffer that is not reused stays counted for at most MaxAge, and a full
// direction that sees no delivery at all for DefaultStall forgets what it
// has held that long: packets wireguard-go keeps for longer (staged while
// a handshake is pending) stop being counted then. So the bound is Max
// packets per direction, plus at most one batch per receive function
// between the check and the call, plus packets waiting for a handshake.
package inflight

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// Direction is which way packets go.
type Direction int

const (
	In  Direction = iota // from the network to the TUN device
	Out                  // from the TUN device to the network
)

func (d Direction) String() string {
	if d == In {
		return "in"
	}
	return "out"
}

// DefaultMaxAge is how long a taken buffer is counted without being
// delivered or seen again: far longer than a packet spends in the device's
// queues (microseconds to milliseconds), so only dropped buffers expire.
const DefaultMaxAge = time.Second

// sweepEvery bounds how often a full direction looks for expired buffers,
// and how long a waiter sleeps before looking again on its own.
const sweepEvery = 50 * time.Millisecond

// DefaultStall is how long a full direction waits with nothing delivered
// at all before it forgets the buffers held that long. A TUN write and a
// Bind send never block (the kernel and the relay client drop instead), so
// a device that delivers nothing for this long while packets are counted
// is holding them elsewhere: staged for a peer whose handshake is pending,
// or dropped. Without this, traffic to an unreachable peer (wireguard-go
// stages up to 128 packets each) would stop all traffic until MaxAge.
const DefaultStall = 100 * time.Millisecond

// Stats are a Limiter's counters.
type Stats struct {
	Held    [2]int           // packets held now, by Direction
	Peak    [2]int           // most held at once
	Waits   [2]uint64        // reads that waited for room
	Waited  [2]time.Duration // total time they waited
	Expired uint64           // buffers forgotten after MaxAge
}

// Limiter counts the packets a device holds in each direction. Create it
// with New and wrap the device's Bind and TUN with Bind and TUN.
type Limiter struct {
	max    int
	maxAge int64        // nanoseconds
	stall  int64        // nanoseconds; see DefaultStall
	now    func() int64 // monotonic nanoseconds; tests move it by hand

	mu        sync.Mutex        // guards held through readers, and the readers' bufs and reading
	held      map[uintptr]entry // buffer address -> when it was taken, and which way
	count     [2]int
	peak      [2]int
	lastSweep int64
	lastDone  int64                // the last delivery (release)
	waiting   map[*reader]struct{} // readers in wait, woken by deliveries
	readers   map[*reader]struct{} // the device's read seams, for Trim

	waits   [2]atomic.Uint64
	waited  [2]atomic.Int64
	expired atomic.Uint64
}

type entry struct {
	at  int64 // l.now() when taken
	dir Direction
}

// New returns a Limiter that lets each direction hold max packets.
// maxAge <= 0 means DefaultMaxAge.
func New(max int, maxAge time.Duration) *Limiter {
	if max < 1 {
		max = 1
	}
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	epoch := time.Now()
	return &Limiter{max: max, maxAge: int64(maxAge), stall: int64(DefaultStall), now: func() int64 { return int64(time.Since(epoch)) },
		held: make(map[uintptr]entry, 2*max), waiting: make(map[*reader]struct{}), readers: make(map[*reader]struct{})}
}

// Max returns the bound per direction.
func (l *Limiter) Max() int { return l.max }

// Stats returns the counters. Buffers past MaxAge are forgotten first, so
// Held is what the device holds, not what it dropped.
func (l *Limiter) Stats() Stats {
	var s Stats
	l.mu.Lock()
	if now := l.now(); now-l.lastSweep >= int64(sweepEvery) {
		l.sweep(now)
	}
	s.Held, s.Peak = l.count, l.peak
	l.mu.Unlock()
	for d := range s.Waits {
		s.Waits[d] = l.waits[d].Load()
		s.Waited[d] = time.Duration(l.waited[d].Load())
	}
	s.Expired = l.expired.Load()
	return s
}

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// reader is what a Limiter remembers of one read seam between calls: the
// slots of the last call and which of them it counted. One goroutine
// makes each seam's calls (wireguard-go runs one per receive function and
// one TUN reader), so a reader needs no lock of its own.
type reader struct {
	prev []uintptr
	held []bool

	// Guarded by the Limiter's mu: the slots of the read in progress,
	// while one is (the device does not touch them then; see Trim).
	bufs    [][]byte
	reading bool

	// Made at the reader's first wait and kept: a wait allocates
	// nothing, which matters because a full direction waits at every
	// read and garbage is what the bound is for.
	wake  chan struct{} // 1 token: a delivery since the reader began to wait
	timer *time.Timer   // the sweep tick while waiting
}

func (l *Limiter) newReader() *reader {
	r := new(reader)
	l.mu.Lock()
	l.readers[r] = struct{}{}
	l.mu.Unlock()
	return r
}

func (l *Limiter) dropReaders(rs ...*reader) {
	l.mu.Lock()
	for _, r := range rs {
		delete(l.readers, r)
	}
	l.mu.Unlock()
}

// Trim returns to the OS the memory pages of the buffers the device's
// readers are reading into now, and reports how many bytes that was.
//
// Each reader keeps a batch of 64 KiB buffers for the device's lifetime
// (128 per socket and for the TUN device): up to 32 MiB that a burst of
// traffic leaves resident, live to the Go runtime, so neither the GC nor
// the scavenger can return it. Only buffers of a read in progress are
// trimmed: the device does not touch them until the read returns, and
// whatever the read writes into them comes after the pages are gone (a
// page then reads as zeros until written, which a receive target never
// notices). A packet that lands in the instant between its copy (by the
// kernel, or by the relay's hand-off into a waiting read) and the trim
// reads as zeros and fails authentication: a single drop, on a device
// quiet enough to trim. Run it when traffic has stopped.
func (l *Limiter) Trim() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int
	for r := range l.readers {
		if !r.reading {
			continue
		}
		for _, b := range r.bufs {
			n += release(b[:cap(b)])
		}
	}
	return n
}

// before runs as the device calls a read with the slots bufs. Every
// buffer in a slot belongs to the reader, not to a packet in flight: a
// fresh one (the slot changed: the device kept the last call's packet
// there, which stays counted) or one the device did not keep (the slot is
// unchanged). Then it waits until dir is under the bound or done is
// closed.
func (l *Limiter) before(dir Direction, r *reader, bufs [][]byte, done <-chan struct{}) {
	l.mu.Lock()
	r.bufs, r.reading = bufs, true
	for i, b := range bufs {
		a := addr(b)
		switch {
		case i >= len(r.prev) || r.prev[i] != a:
			l.forget(a) // fresh from the device's pool
		case r.held[i]:
			l.forget(a) // counted, but the device did not keep it
		}
	}
	if l.count[dir] < l.max {
		l.mu.Unlock()
		return
	}
	l.wait(dir, r, done) // unlocks
}

// after runs as the read returns n packets in bufs: each is counted at
// once, before the device can hand it on, so a delivery never comes
// before the count it ends.
func (l *Limiter) after(dir Direction, r *reader, bufs [][]byte, sizes []int, n int) {
	if len(r.prev) != len(bufs) {
		r.prev, r.held = make([]uintptr, len(bufs)), make([]bool, len(bufs))
	}
	l.mu.Lock()
	r.bufs, r.reading = nil, false
	now := l.now()
	for i, b := range bufs {
		r.prev[i] = addr(b)
		r.held[i] = i < n && sizes[i] > 0
		if r.held[i] {
			l.hold(r.prev[i], dir, now)
		}
	}
	if l.count[dir] > l.peak[dir] {
		l.peak[dir] = l.count[dir]
	}
	l.mu.Unlock()
}

// wait blocks, with l.mu held on entry and released on return, until dir
// holds fewer than max packets or done is closed. It ends within MaxAge
// plus a sweep even if nothing is delivered: every held buffer expires.
func (l *Limiter) wait(dir Direction, r *reader, done <-chan struct{}) {
	start := l.now()
	l.waits[dir].Add(1)
	defer func() { l.waited[dir].Add(l.now() - start) }()
	if r.wake == nil {
		r.wake, r.timer = make(chan struct{}, 1), time.NewTimer(sweepEvery)
	} else {
		r.timer.Reset(sweepEvery)
	}
	defer r.timer.Stop()
	for {
		now := l.now()
		switch {
		case now-l.lastDone >= l.stall:
			l.expire(now - l.stall)
		case now-l.lastSweep >= int64(sweepEvery):
			l.sweep(now)
		}
		if l.count[dir] < l.max {
			l.mu.Unlock()
			return
		}
		l.waiting[r] = struct{}{}
		l.mu.Unlock()
		select {
		case <-r.wake: // may be a token from before this wait: the loop checks again
		case <-r.timer.C:
			r.timer.Reset(sweepEvery)
		case <-done:
			l.mu.Lock()
			delete(l.waiting, r)
			l.mu.Unlock()
			return
		}
		l.mu.Lock()
		delete(l.waiting, r)
	}
}

// sweep forgets buffers held longer than maxAge. l.mu is held.
func (l *Limiter) sweep(now int64) {
	l.lastSweep = now
	l.expire(now - l.maxAge)
}

// expire forgets buffers taken at or before cutoff. l.mu is held.
func (l *Limiter) expire(cutoff int64) {
	for a, e := range l.held {
		if e.at <= cutoff {
			delete(l.held, a)
			l.count[e.dir]--
			l.expired.Add(1)
		}
	}
}

func (l *Limiter) hold(a uintptr, dir Direction, now int64) {
	if e, ok := l.held[a]; ok {
		l.count[e.dir]--
	}
	l.held[a] = entry{at: now, dir: dir}
	l.count[dir]++
}

func (l *Limiter) forget(a uintptr) {
	if e, ok := l.held[a]; ok {
		delete(l.held, a)
		l.count[e.dir]--
	}
}

// release forgets the buffers the device delivered (TUN Write) or sent
// (Bind Send) and wakes readers waiting for room.
func (l *Limiter) release(bufs [][]byte) {
	l.mu.Lock()
	for _, b := range bufs {
		l.forget(addr(b))
	}
	l.lastDone = l.now()
	for r := range l.waiting {
		select {
		case r.wake <- struct{}{}:
		default: // it has a token already
		}
	}
	l.mu.Unlock()
}

// Bind wraps b: its receive functions count what the device takes in, and
// Send releases what it sent.
func (l *Limiter) Bind(b conn.Bind) conn.Bind { return &limitedBind{Bind: b, l: l} }

var (
	_ conn.Bind  = (*limitedBind)(nil)
	_ tun.Device = (*limitedTUN)(nil)
)

type limitedBind struct {
	conn.Bind
	l       *Limiter
	mu      sync.Mutex    // guards done and readers
	done    chan struct{} // closed by Close: receivers waiting for room return to find the socket closed
	readers []*reader     // of the receive functions of the last Open // closed by Close: receivers waiting for room return to find the socket closed
}

func (b *limitedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	done := make(chan struct{})
	wrapped := make([]conn.ReceiveFunc, len(fns))
	readers := make([]*reader, len(fns))
	for i, fn := range fns {
		r := b.l.newReader()
		readers[i] = r
		wrapped[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			b.l.before(In, r, bufs, done)
			n, err := fn(bufs, sizes, eps)
			b.l.after(In, r, bufs, sizes, n)
			return n, err
		}
	}
	b.mu.Lock()
	b.done, b.readers = done, readers
	b.mu.Unlock()
	return wrapped, actual, nil
}

func (b *limitedBind) Close() error {
	b.mu.Lock()
	if b.done != nil {
		close(b.done)
		b.done = nil
	}
	b.l.dropReaders(b.readers...)
	b.readers = nil
	b.mu.Unlock()
	return b.Bind.Close()
}

func (b *limitedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	err := b.Bind.Send(bufs, ep)
	b.l.release(bufs)
	return err
}

// TUN wraps t: Read counts what the device takes in from it, and Write
// releases what it delivered.
func (l *Limiter) TUN(t tun.Device) tun.Device {
	return &limitedTUN{Device: t, l: l, r: l.newReader(), done: make(chan struct{})}
}

type limitedTUN struct {
	tun.Device
	l    *Limiter
	r    *reader
	once sync.Once
	done chan struct{}
}

func (t *limitedTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.l.before(Out, t.r, bufs, t.done)
	n, err := t.Device.Read(bufs, sizes, offset)
	t.l.after(Out, t.r, bufs, sizes, n)
	return n, err
}

func (t *limitedTUN) Write(bufs [][]byte, offset int) (int, error) {
	n, err := t.Device.Write(bufs, offset)
	t.l.release(bufs)
	return n, err
}

func (t *limitedTUN) Close() error {
	t.once.Do(func() {
		close(t.done)
		t.l.dropReaders(t.r)
	})
	return t.Device.Close()
}
