package relay

import (
	"bufio"
	"sync"
)

// pktBufSize fits any WireGuard packet at MTU <= 1500 plus slack; such
// packets get pooled buffers, bigger ones their own allocation.
const pktBufSize = 2048

var pktBufs = sync.Pool{New: func() any { b := make([]byte, pktBufSize); return &b }}

// item is one frame waiting for a connection's writer.
type item struct {
	typ    frameType
	k1, k2 Key     // first and (frameForwardPacket) second key field
	pkt    []byte  // packet bytes or other payload after the keys
	buf    *[]byte // pooled backing of pkt, returned by release
}

// newPacketItem copies p into a pooled buffer when it fits.
func newPacketItem(t frameType, k1, k2 Key, p []byte) item {
	it := item{typ: t, k1: k1, k2: k2}
	if len(p) <= pktBufSize {
		it.buf = pktBufs.Get().(*[]byte)
		it.pkt = (*it.buf)[:len(p)]
	} else {
		it.pkt = make([]byte, len(p))
	}
	copy(it.pkt, p)
	return it
}

func (it *item) release() {
	if it.buf != nil {
		pktBufs.Put(it.buf)
	}
	*it = item{}
}

// queue feeds one connection's writer. Packets sit in a bounded ring that
// drops the oldest when full: under overload fresh packets are worth more
// than stale ones, and WireGuard recovers from loss. Control frames (pongs,
// presence, revocations) sit in their own list and are never dropped; a
// peer that lets that list overflow is too slow to keep and pushCtrl
// reports it.
type queue struct {
	ready chan struct{} // cap 1: signalled when something was pushed

	mu      sync.Mutex // guards the fields below
	ring    []item     // packets; grows by doubling up to max
	max     int        // bound on queued packets
	head, n int        // oldest packet's index, packets queued
	ctrl    []item
	closed  bool
}

// initialRing is the ring's starting size: an idle connection holds a
// small ring, and a busy one grows its own to the bound.
const initialRing = 32

// maxCtrl bounds queued control frames (see queue).
const maxCtrl = 1 << 14

func newQueue(n int) *queue {
	return &queue{ring: make([]item, min(n, initialRing)), max: n, ready: make(chan struct{}, 1)}
}

// grow doubles the ring (up to max), keeping packets in order. q.mu held.
func (q *queue) grow() {
	r := make([]item, min(2*len(q.ring), q.max))
	for i := range q.n {
		r[i] = q.ring[(q.head+i)%len(q.ring)]
	}
	q.ring, q.head = r, 0
}

// pushPacket queues it; when full the oldest packet is dropped and
// pushPacket reports it. On a closed queue it is dropped (and released).
func (q *queue) pushPacket(it item) (droppedOldest bool) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		it.release()
		return false
	}
	if q.n == len(q.ring) && len(q.ring) < q.max {
		q.grow()
	}
	if q.n == len(q.ring) {
		q.ring[q.head].release()
		q.ring[q.head] = it
		q.head = (q.head + 1) % len(q.ring)
		droppedOldest = true
	} else {
		q.ring[(q.head+q.n)%len(q.ring)] = it
		q.n++
	}
	q.mu.Unlock()
	q.signal()
	return droppedOldest
}

// pushCtrl queues a control frame. It returns false when the queue is
// closed or, unless force, when the control list is full.
func (q *queue) pushCtrl(it item, force bool) bool {
	q.mu.Lock()
	if q.closed || (!force && len(q.ctrl) >= maxCtrl) {
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

// drain appends everything queued to dst, control frames first, and
// empties the queue.
func (q *queue) drain(dst []item) []item {
	q.mu.Lock()
	dst = append(dst, q.ctrl...)
	clear(q.ctrl)
	q.ctrl = q.ctrl[:0]
	for ; q.n > 0; q.n-- {
		dst = append(dst, q.ring[q.head])
		q.ring[q.head] = item{}
		q.head = (q.head + 1) % len(q.ring)
	}
	q.mu.Unlock()
	return dst
}

// close drops everything queued; later pushes are dropped.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	for _, it := range q.drain(nil) {
		it.release()
	}
}

// writeItem writes it as a frame (without flushing).
func writeItem(bw *bufio.Writer, it *item) error {
	switch it.typ {
	case frameForwardPacket:
		return writeFrame(bw, it.typ, it.k1[:], it.k2[:], it.pkt)
	case frameSendPacket, frameRecvPacket, framePeerPresent, framePeerGone, frameRevoke:
		return writeFrame(bw, it.typ, it.k1[:], it.pkt)
	}
	return writeFrame(bw, it.typ, it.pkt)
}
