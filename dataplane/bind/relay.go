package bind

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/edgewire/edgewire/types/key"
)

// RelayPrefix holds the synthetic WireGuard endpoints of relayed peers.
// Each peer key gets one address in it (port RelayPort) on first use; the
// Bind sends packets for such an endpoint through the relay instead of the
// socket, and hands packets that arrive over the relay to WireGuard with
// the same endpoint. 127.77.0.0/16 is loopback space: no real peer can be
// there and nothing is ever sent to it on the wire. `wg show` displays it
// as the endpoint of a relayed peer.
var RelayPrefix = netip.MustParsePrefix("127.77.0.0/16")

// RelayPort is the port of every synthetic relay endpoint.
const RelayPort = 1

// relayQueue bounds packets from the relay waiting for WireGuard (the
// backlog: those that arrive while no receive call waits).
const relayQueue = 4096

// relayBufSize fits any WireGuard packet the device sends at MTU <= 1500
// (plus overhead); larger ones are allocated.
const relayBufSize = 2048

// ErrNoRelay is returned when a relayed peer is sent to with no relay.
var ErrNoRelay = errors.New("bind: no relay connection")

// Relay is where the Bind sends relayed packets.
type Relay interface {
	// SendBatch queues pkts, in order, for the node with public key dst.
	// It must copy them and must not block for long. WireGuard hands
	// the Bind its packets in batches; taking them whole lets the relay
	// connection write them together.
	SendBatch(dst key.Public, pkts [][]byte) error
}

// relayEndpoint is the conn.Endpoint of a relayed peer.
type relayEndpoint struct {
	ap netip.AddrPort
	nk key.Public
}

var _ conn.Endpoint = (*relayEndpoint)(nil)

func (e *relayEndpoint) ClearSrc()           {}
func (e *relayEndpoint) SrcToString() string { return "" }
func (e *relayEndpoint) DstToString() string { return e.ap.String() }
func (e *relayEndpoint) DstToBytes() []byte  { b, _ := e.ap.MarshalBinary(); return b }
func (e *relayEndpoint) DstIP() netip.Addr   { return e.ap.Addr() }
func (e *relayEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

type relayPacket struct {
	buf *[]byte // from relayBufs when it fits
	b   []byte
	ep  *relayEndpoint
}

// relayState is the Bind's relay half.
type relayState struct {
	bufs sync.Pool

	relay atomic.Pointer[relayHolder] // read per send batch without a lock

	// Packets from the relay go straight into the buffers of a waiting
	// receive call (WireGuard's), one copy; only those that arrive while
	// none waits are copied to the backlog first.
	rmu     sync.Mutex // guards rx, backlog, head
	rx      *relayRecv // the receive call waiting for packets; nil: none
	backlog []relayPacket
	head    int // backlog[head:] are waiting, oldest first

	mu    sync.Mutex // guards byKey, byAdr, next
	byKey map[key.Public]*relayEndpoint
	byAdr map[netip.AddrPort]*relayEndpoint
	next  uint32 // last host index handed out
}

// relayRecv is a receive call waiting for packets from the relay. Its
// fields are written under relayState.rmu while it is relayState.rx.
type relayRecv struct {
	bufs  [][]byte
	sizes []int
	eps   []conn.Endpoint
	n     int           // packets in bufs
	wake  chan struct{} // cap 1: the call has packets to return
}

type relayHolder struct{ r Relay }

func newRelayState() *relayState {
	return &relayState{
		bufs:  sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }},
		byKey: map[key.Public]*relayEndpoint{},
		byAdr: map[netip.AddrPort]*relayEndpoint{},
	}
}

// SetRelay sets (or with nil clears) the relay the Bind sends through.
func (b *Bind) SetRelay(r Relay) {
	if r == nil {
		b.rs.relay.Store(nil)
		return
	}
	b.rs.relay.Store(&relayHolder{r})
}

// RelayEndpoint returns the synthetic endpoint of the peer with key.
func (b *Bind) RelayEndpoint(nk key.Public) netip.AddrPort { return b.rs.endpoint(nk).ap }

// RelayPeer returns the key whose synthetic endpoint ap is, if any.
func (b *Bind) RelayPeer(ap netip.AddrPort) (key.Public, bool) {
	if e := b.rs.lookup(ap); e != nil {
		return e.nk, true
	}
	return key.Public{}, false
}

func (rs *relayState) endpoint(nk key.Public) *relayEndpoint {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if e := rs.byKey[nk]; e != nil {
		return e
	}
	rs.next++
	if rs.next > 0xfffe {
		rs.next = 1 // 65,534 relayed peers at once is far beyond a node's peer count
	}
	base := RelayPrefix.Addr().As4()
	a := netip.AddrFrom4([4]byte{base[0], base[1], byte(rs.next >> 8), byte(rs.next)})
	e := &relayEndpoint{ap: netip.AddrPortFrom(a, RelayPort), nk: nk}
	if old := rs.byAdr[e.ap]; old != nil {
		delete(rs.byKey, old.nk)
	}
	rs.byKey[nk] = e
	rs.byAdr[e.ap] = e
	return e
}

func (rs *relayState) lookup(ap netip.AddrPort) *relayEndpoint {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.byAdr[ap]
}

// DeliverRelayed hands a packet that arrived over the relay from the node
// src to WireGuard. It copies pkt and never blocks: when WireGuard is
// behind, the packet is dropped and false returned. It is
// QueueRelayed and FlushRelayed in one.
func (b *Bind) DeliverRelayed(src key.Public, pkt []byte) bool {
	ok := b.QueueRelayed(src, pkt)
	b.FlushRelayed()
	return ok
}

// QueueRelayed is DeliverRelayed for a caller with more packets at hand:
// WireGuard gets the packet at the latest at the next FlushRelayed, so it
// takes the caller's packets in one batch. Callers must call
// FlushRelayed before they wait for more.
func (b *Bind) QueueRelayed(src key.Public, pkt []byte) bool {
	if Classify(pkt) != WireGuard {
		b.C.OtherDrop.Add(1)
		return false
	}
	ep := b.rs.endpoint(src)
	rs := b.rs
	rs.rmu.Lock()
	// Straight into a waiting call's buffers, unless older packets wait
	// in the backlog (they go first).
	if r := rs.rx; r != nil && rs.head == len(rs.backlog) && len(pkt) <= len(r.bufs[r.n]) {
		r.sizes[r.n] = copy(r.bufs[r.n], pkt)
		r.eps[r.n] = ep
		r.n++
		if r.n == len(r.bufs) {
			rs.wakeLocked()
		}
		rs.rmu.Unlock()
		b.C.RelayIn.Add(1)
		return true
	}
	if len(rs.backlog)-rs.head >= relayQueue {
		rs.rmu.Unlock()
		b.C.RelayDropped.Add(1)
		return false
	}
	p := relayPacket{ep: ep}
	if len(pkt) <= relayBufSize {
		p.buf = rs.bufs.Get().(*[]byte)
		p.b = (*p.buf)[:copy(*p.buf, pkt)]
	} else {
		p.b = append([]byte(nil), pkt...)
	}
	rs.backlog = append(rs.backlog, p)
	rs.rmu.Unlock()
	b.C.RelayIn.Add(1)
	return true
}

// FlushRelayed hands WireGuard the packets QueueRelayed holds for it.
func (b *Bind) FlushRelayed() {
	b.rs.rmu.Lock()
	if r := b.rs.rx; r != nil && r.n > 0 {
		b.rs.wakeLocked()
	}
	b.rs.rmu.Unlock()
}

// wakeLocked ends the wait of rs.rx. rs.rmu held, rs.rx not nil.
func (rs *relayState) wakeLocked() {
	rs.rx.wake <- struct{}{} // cap 1, and only the waker of rx sends
	rs.rx = nil
}

func (rs *relayState) put(p relayPacket) {
	if p.buf != nil {
		rs.bufs.Put(p.buf)
	}
}

// takeLocked moves up to len(bufs) backlog packets into bufs. rs.rmu held.
func (rs *relayState) takeLocked(bufs [][]byte, sizes []int, eps []conn.Endpoint) int {
	n := 0
	for ; n < len(bufs) && rs.head < len(rs.backlog); rs.head++ {
		p := &rs.backlog[rs.head]
		if len(p.b) <= len(bufs[n]) { // WireGuard's buffers fit any message
			sizes[n] = copy(bufs[n], p.b)
			eps[n] = p.ep
			n++
		}
		rs.put(*p)
		*p = relayPacket{}
	}
	if rs.head == len(rs.backlog) {
		rs.backlog, rs.head = rs.backlog[:0], 0
	} else if rs.head > len(rs.backlog)/2 { // keep the slice from creeping
		k := copy(rs.backlog, rs.backlog[rs.head:])
		clear(rs.backlog[k:])
		rs.backlog, rs.head = rs.backlog[:k], 0
	}
	return n
}

// receiveRelay is the ReceiveFunc for relayed packets; it returns
// net.ErrClosed once closed is closed (the conn.Bind contract).
// wireguard-go calls a ReceiveFunc from one goroutine at a time.
func (b *Bind) receiveRelay(closed <-chan struct{}) conn.ReceiveFunc {
	r := &relayRecv{wake: make(chan struct{}, 1)}
	rs := b.rs
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case <-closed:
			return 0, net.ErrClosed
		default:
		}
		if len(bufs) == 0 {
			return 0, nil
		}
		rs.rmu.Lock()
		if n := rs.takeLocked(bufs, sizes, eps); n > 0 {
			rs.rmu.Unlock()
			return n, nil
		}
		r.bufs, r.sizes, r.eps, r.n = bufs, sizes, eps, 0
		rs.rx = r // a call of an earlier Open, if any, ends with its closed
		rs.rmu.Unlock()
		select {
		case <-r.wake:
		case <-closed:
			rs.rmu.Lock()
			if rs.rx == r {
				rs.rx = nil
			}
			rs.rmu.Unlock()
			select { // a wake that raced with closed
			case <-r.wake:
			default:
			}
			return 0, net.ErrClosed
		}
		rs.rmu.Lock() // the waker is done with r
		n := r.n
		r.bufs, r.sizes, r.eps = nil, nil, nil
		rs.rmu.Unlock()
		return n, nil
	}
}

// sendRelay sends bufs to a relayed peer.
func (b *Bind) sendRelay(bufs [][]byte, e *relayEndpoint) error {
	h := b.rs.relay.Load()
	if h == nil {
		return ErrNoRelay
	}
	if err := h.r.SendBatch(e.nk, bufs); err != nil {
		return err
	}
	b.C.RelayOut.Add(uint64(len(bufs)))
	return nil
}
