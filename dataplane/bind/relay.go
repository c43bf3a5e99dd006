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

// relayQueue bounds packets from the relay waiting for WireGuard.
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
	in   chan relayPacket
	bufs sync.Pool

	relay atomic.Pointer[relayHolder] // read per send batch without a lock

	mu    sync.Mutex // guards byKey, byAdr, next
	byKey map[key.Public]*relayEndpoint
	byAdr map[netip.AddrPort]*relayEndpoint
	next  uint32 // last host index handed out
}

type relayHolder struct{ r Relay }

func newRelayState() *relayState {
	return &relayState{
		in:    make(chan relayPacket, relayQueue),
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
// behind, the packet is dropped and false returned.
func (b *Bind) DeliverRelayed(src key.Public, pkt []byte) bool {
	if Classify(pkt) != WireGuard {
		b.C.OtherDrop.Add(1)
		return false
	}
	p := relayPacket{ep: b.rs.endpoint(src)}
	if len(pkt) <= relayBufSize {
		p.buf = b.rs.bufs.Get().(*[]byte)
		p.b = (*p.buf)[:copy(*p.buf, pkt)]
	} else {
		p.b = append([]byte(nil), pkt...)
	}
	select {
	case b.rs.in <- p:
		b.C.RelayIn.Add(1)
		return true
	default:
		b.rs.put(p)
		b.C.RelayDropped.Add(1)
		return false
	}
}

func (rs *relayState) put(p relayPacket) {
	if p.buf != nil {
		rs.bufs.Put(p.buf)
	}
}

// receiveRelay is the ReceiveFunc for relayed packets; it returns
// net.ErrClosed once closed is closed (the conn.Bind contract).
func (b *Bind) receiveRelay(closed <-chan struct{}) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p relayPacket
		select {
		case p = <-b.rs.in:
		case <-closed:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			sizes[n] = copy(bufs[n], p.b)
			eps[n] = p.ep
			b.rs.put(p)
			n++
			if n == len(bufs) {
				return n, nil
			}
			select {
			case p = <-b.rs.in:
			default:
				return n, nil
			}
		}
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
