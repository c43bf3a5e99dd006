package relay

import (
	"bufio"
	"math/bits"
	"sync"
	"sync/atomic"
)

// pktBufSize fits the payload of any packet frame (keys and a WireGuard
// packet) at MTU <= 1500 plus slack; such frames get pooled buffers,
// bigger ones their own allocation.
const pktBufSize = 2048

// Pooled payload buffers come in steps of pktBufSize up to
// maxBatchPayload: single packets take the first, a batch frame the
// smallest step that fits it. An item's cost is its buffer, so a batch
// wastes less than one step and the byte bounds hold about as many
// packets as they did one packet per item.
const bufSteps = maxBatchPayload / pktBufSize

var bufPools [bufSteps]sync.Pool

// getBuf returns a pooled buffer of at least n (>= 1) bytes, or nil when n
// is above maxBatchPayload.
func getBuf(n int) *[]byte {
	i := (n - 1) / pktBufSize
	if n < 1 || i >= bufSteps {
		return nil
	}
	if b, ok := bufPools[i].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, (i+1)*pktBufSize)
	return &b
}

func putBuf(b *[]byte) {
	c := cap(*b)
	if i := c/pktBufSize - 1; c%pktBufSize == 0 && i >= 0 && i < bufSteps {
		*b = (*b)[:c]
		bufPools[i].Put(b)
	}
}

// item is one frame waiting for a connection's writer. It is small (40
// bytes) because a busy queue holds a ring of a thousand of them.
type item struct {
	typ  frameType
	pkts int32   // packets in a batch frame (frameSendPackets, frameRecvPackets)
	pkt  []byte  // the frame's payload (keys first for packet frames)
	buf  *[]byte // pooled backing of pkt, returned by release
}

// newPacketItem copies the payload of a packet frame, k1 (and, for
// frameForwardPacket, k2) then p, into a pooled buffer when it fits.
func newPacketItem(t frameType, k1, k2 Key, p []byte) item {
	n := 32 + len(p)
	if t == frameForwardPacket {
		n += 32
	}
	it := item{typ: t}
	if n <= pktBufSize {
		it.buf = getBuf(n)
		it.pkt = (*it.buf)[:n]
	} else {
		it.pkt = make([]byte, n)
	}
	o := copy(it.pkt, k1[:])
	if t == frameForwardPacket {
		o += copy(it.pkt[o:], k2[:])
	}
	copy(it.pkt[o:], p)
	return it
}

// newBatchItem starts a batch frame of type t (frameSendPackets or
// frameRecvPackets) for key k with room for size payload bytes (at most
// maxBatchPayload, key included); the caller appends records to pkt and
// counts them in pkts.
func newBatchItem(t frameType, k Key, size int) item {
	it := item{typ: t, buf: getBuf(size)}
	it.pkt = append((*it.buf)[:0], k[:]...)
	return it
}

// keyItem is a control frame whose payload is key, then extra.
func keyItem(t frameType, key Key, extra []byte) item {
	p := make([]byte, 0, len(key)+len(extra))
	return item{typ: t, pkt: append(append(p, key[:]...), extra...)}
}

// cost is the memory an item holds: its whole backing buffer.
func (it *item) cost() int64 {
	if it.buf != nil {
		return int64(cap(*it.buf))
	}
	return int64(cap(it.pkt))
}

// packets is how many packets it carries (control frames count one).
func (it *item) packets() int {
	return max(1, int(it.pkts))
}

func (it *item) release() {
	if it.buf != nil {
		putBuf(it.buf)
	}
	*it = item{}
}

// queue feeds one connection's writer. Packets sit in a ring bounded in
// packets and in bytes that drops the oldest when full: under overload
// fresh packets are worth more than stale ones, and WireGuard recovers
// from loss. Packets of a relay's queues also share one budget (see
// budget). Control frames (pongs, presence, revocations) sit in their
// own list and are never dropped; a peer that lets that list overflow is
// too slow to keep and pushCtrl reports it.
type queue struct {
	ready    chan struct{} // cap 1: signalled when something was pushed
	b        *budget       // shared by the relay's queues; nil: none
	maxPkts  int
	maxBytes int64
	maxCtrl  int

	mu      sync.Mutex // guards the fields below, and class writes
	ring    []item     // packets; grows by doubling up to maxPkts
	head, n int        // oldest packet's index, packets queued
	bytes   int64      // cost of the queued packets
	ctrl    []item
	closed  bool

	// Size class and links in b's lists: written with both mu and b.mu
	// held, so either lock makes them readable.
	class      int
	prev, next *queue
}

// queueConfig bounds a queue.
type queueConfig struct {
	pkts  int   // packets
	bytes int64 // their cost; at least the largest item's
	ctrl  int   // control frames
}

// initialRing is the ring's starting size: an idle connection holds a
// small ring, and a busy one grows its own to the bound.
const initialRing = 32

// maxBatchCost bounds what drain hands a writer at once, so a writer
// blocked on a peer that stopped reading holds little outside the queue,
// where the budget can still evict it.
const maxBatchCost = 64 << 10

func newQueue(c queueConfig, b *budget) *queue {
	return &queue{
		ring:     make([]item, min(c.pkts, initialRing)),
		b:        b,
		maxPkts:  c.pkts,
		maxBytes: c.bytes,
		maxCtrl:  c.ctrl,
		ready:    make(chan struct{}, 1),
	}
}

// grow doubles the ring (up to maxPkts), keeping packets in order. q.mu held.
func (q *queue) grow() {
	r := make([]item, min(2*len(q.ring), q.maxPkts))
	for i := range q.n {
		r[i] = q.ring[(q.head+i)%len(q.ring)]
	}
	q.ring, q.head = r, 0
}

// popOldest removes the oldest packet and returns its cost. q.mu held,
// q.n > 0.
func (q *queue) popOldest() int64 {
	it := &q.ring[q.head]
	c := it.cost()
	it.release()
	q.head = (q.head + 1) % len(q.ring)
	q.n--
	q.bytes -= c
	return c
}

// pushPacket queues it and wakes the writer. To make room it drops this
// queue's oldest packets (dropped counts them) and, when the relay's
// budget is spent, packets of the fullest queues (counted by the budget).
// When no room can be made the new packet is dropped and refused is true.
// On a closed queue it is dropped silently. pushPacket owns it.
func (q *queue) pushPacket(it item) (dropped int, refused bool) {
	dropped, refused = q.enqueue(it)
	q.signal()
	return dropped, refused
}

// enqueue is pushPacket without waking the writer: the caller queues
// more and calls signal once, so the writer takes them in one batch.
func (q *queue) enqueue(it item) (dropped int, refused bool) {
	c := it.cost()
	if q.b != nil && !q.b.reserve(c) {
		q.b.evicted.Add(uint64(it.packets() - 1)) // reserve counted one
		it.release()
		return 0, true
	}
	var freed int64
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.b.release(c)
		it.release()
		return 0, false
	}
	for q.n > 0 && (q.n >= q.maxPkts || q.bytes+c > q.maxBytes) {
		dropped += q.ring[q.head].packets()
		freed += q.popOldest()
	}
	if q.n == len(q.ring) {
		q.grow()
	}
	q.ring[(q.head+q.n)%len(q.ring)] = it
	q.n++
	q.bytes += c
	q.reclass()
	q.mu.Unlock()
	q.b.release(freed)
	return dropped, false
}

// pushCtrl queues a control frame. It returns false when the queue is
// closed or, unless force, when the control list is full.
func (q *queue) pushCtrl(it item, force bool) bool {
	q.mu.Lock()
	if q.closed || (!force && len(q.ctrl) >= q.maxCtrl) {
		q.mu.Unlock()
		return false
	}
	q.ctrl = append(q.ctrl, it)
	q.mu.Unlock()
	q.signal()
	return true
}

func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// drain appends the queued control frames and then the oldest packets,
// up to maxBatchCost of them (at least one), to dst and takes them off
// the queue and the budget. The caller releases them.
func (q *queue) drain(dst []item) []item {
	var taken int64
	q.mu.Lock()
	dst = append(dst, q.ctrl...)
	clear(q.ctrl)
	q.ctrl = q.ctrl[:0]
	for q.n > 0 && taken < maxBatchCost {
		it := q.ring[q.head]
		dst = append(dst, it)
		taken += it.cost()
		q.ring[q.head] = item{}
		q.head = (q.head + 1) % len(q.ring)
		q.n--
	}
	q.bytes -= taken
	q.reclass()
	q.mu.Unlock()
	q.b.release(taken)
	return dst
}

// close drops everything queued; later pushes are dropped.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	for {
		batch := q.drain(nil)
		if len(batch) == 0 {
			return
		}
		for i := range batch {
			batch[i].release()
		}
	}
}

// dropOldest drops the oldest packet, if any, for the budget.
func (q *queue) dropOldest() {
	q.mu.Lock()
	if q.n == 0 {
		q.mu.Unlock()
		return
	}
	n := q.ring[q.head].packets()
	c := q.popOldest()
	q.reclass()
	q.mu.Unlock()
	q.b.release(c)
	q.b.evicted.Add(uint64(n))
}

// reclass moves q to the budget list of its size class. q.mu held; it
// takes b.mu only when the class changes, which a queue that drains
// promptly (below trackMin) never does.
func (q *queue) reclass() {
	if q.b == nil {
		return
	}
	c := sizeClass(q.bytes)
	if c == q.class {
		return
	}
	q.b.mu.Lock()
	q.b.unlink(q)
	q.class = c
	q.b.link(q)
	q.b.mu.Unlock()
}

// budget is the memory all packet queues of a relay may hold together.
// Reservations never take it past limit: when it is spent, a push drops
// the oldest packet of (within a factor of two) the fullest queue, so the
// queues of peers that stopped reading pay, not those that drain.
//
// Finding the fullest queue is O(1): queues holding at least trackMin
// bytes sit in one list per power-of-two size class, a queue moves only
// when it crosses a class boundary, and eviction takes the head of the
// highest non-empty class and rotates it to the back, so equally full
// queues take turns. Queues below trackMin are not tracked (that keeps
// the lock off the path of queues that drain promptly); if they alone
// hold the budget, new packets are dropped until writers drain them or
// their stalled peers time out.
type budget struct {
	limit   int64
	used    atomic.Int64  // reserved by queued packets
	evicted atomic.Uint64 // packets dropped to stay within limit, and packets refused

	mu    sync.Mutex // guards heads and every tracked queue's class links
	heads [numClasses]*queue
}

const (
	// trackMin is the smallest queue the budget tracks for eviction.
	trackMin   = 16 << 10
	numClasses = 32
	// maxEvictions bounds the packets one push drops for the budget
	// (the largest batch frame needs at most sixteen single pooled
	// packets).
	maxEvictions = 32
	// maxCAS bounds retries of a contended reservation.
	maxCAS = 1024
)

func newBudget(limit int64) *budget { return &budget{limit: limit} }

// sizeClass is 0 below trackMin, else 1 + log2(bytes/trackMin).
func sizeClass(bytes int64) int {
	if bytes < trackMin {
		return 0
	}
	return min(bits.Len64(uint64(bytes/trackMin)), numClasses-1)
}

// reserve takes c bytes of the budget, evicting from the fullest queues
// as needed; false when it cannot.
func (b *budget) reserve(c int64) bool {
	evictions := 0
	for range maxCAS {
		u := b.used.Load()
		if u+c <= b.limit {
			if b.used.CompareAndSwap(u, u+c) {
				return true
			}
			continue
		}
		if evictions == maxEvictions || !b.evictOne() {
			break
		}
		evictions++
	}
	b.evicted.Add(1)
	return false
}

// release returns c bytes. A nil budget ignores it.
func (b *budget) release(c int64) {
	if b != nil && c != 0 {
		b.used.Add(-c)
	}
}

// evictOne drops the oldest packet of a queue in the highest size class;
// false when no queue is tracked.
func (b *budget) evictOne() bool {
	b.mu.Lock()
	var v *queue
	for c := numClasses - 1; c > 0; c-- {
		if v = b.heads[c]; v != nil {
			b.heads[c] = v.next // v goes to the back
			break
		}
	}
	b.mu.Unlock()
	if v == nil {
		return false
	}
	// Not under b.mu: the lock order is queue, then budget. v may have
	// drained or closed meanwhile; then this frees nothing and the
	// caller looks again.
	v.dropOldest()
	return true
}

// link puts q at the back of its class's circular list. b.mu held.
func (b *budget) link(q *queue) {
	if q.class == 0 {
		return
	}
	h := b.heads[q.class]
	if h == nil {
		q.prev, q.next = q, q
		b.heads[q.class] = q
		return
	}
	q.prev, q.next = h.prev, h
	h.prev.next = q
	h.prev = q
}

// unlink takes q out of its class's list. b.mu held.
func (b *budget) unlink(q *queue) {
	if q.class == 0 {
		return
	}
	if q.next == q {
		b.heads[q.class] = nil
	} else {
		q.prev.next, q.next.prev = q.next, q.prev
		if b.heads[q.class] == q {
			b.heads[q.class] = q.next
		}
	}
	q.prev, q.next = nil, nil
}

// writeItem writes it as a frame (without flushing).
func writeItem(bw *bufio.Writer, it *item) error {
	return writeFrame(bw, it.typ, it.pkt)
}
