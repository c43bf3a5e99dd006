//go:build bench

package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/node/control"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// fleet is a set of simulated nodes speaking the real control protocol
// (Join with a token, then a Connect stream with the NaCl-box challenge
// proof) from this process, each over its own TLS connection as a real
// agent's would be. They have real Curve25519 keys but no WireGuard. To
// keep the harness cheap, received network maps are not decoded: a wire
// scan finds the version and whether a watched key is in the message.
type fleet struct {
	ctx    context.Context
	cancel context.CancelFunc
	dial   func(ctx context.Context, addr string) (net.Conn, error)
	target string // coordinator host:port as the dialer sees it
	tok    string
	tls    *tls.Config // the agent's pinned check, run once per certificate chain

	watch atomic.Pointer[[32]byte] // key whose arrival the nodes time-stamp
	msgs  atomic.Int64             // map messages received by all nodes
	bytes atomic.Int64             // their total size
	// current counts first maps that said the node's map is current,
	// patched those that patched a few buckets of it.
	current atomic.Int64
	patched atomic.Int64
	model   mapModel

	mu    sync.Mutex // guards nodes
	nodes []*simNode
}

type simNode struct {
	name   string
	local  *dhkey.Local // the node key, prepared: each proof costs one scalar multiplication
	pub    key.Public
	conn   *grpc.ClientConn
	stream grpc.ClientStream
	gotMap chan struct{} // closed when the first network map arrived
	seenAt atomic.Int64  // unix ns when the watched key arrived; 0: not yet
	sendMu sync.Mutex    // serialises SendMsg on stream
	// digest is NetworkMap.digest of the last map message, sent back in
	// Hello when the node reconnects, as an agent does.
	digest atomic.Pointer[[]byte]
	eps    []string // the endpoints last reported (under sendMu), sent in Hello as an agent does
}

func newFleet(dial func(ctx context.Context, addr string) (net.Conn, error), target, tok string) (*fleet, error) {
	tk, err := jointoken.Parse(tok)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var ca *x509.Certificate
	tc := jointoken.PinnedConfig(tk.CAPin, jointoken.ServerName, &ca)
	tc.VerifyPeerCertificate = verifyOnce(tc.VerifyPeerCertificate)
	return &fleet{ctx: ctx, cancel: cancel, dial: dial, target: target, tok: tok, tls: tc}, nil
}

// verifyOnce remembers the chains verify accepted and accepts them again
// without verifying: every simulated node sees the coordinators' few
// chains, and an agent checks its coordinator's when it connects, not
// once per node of a fleet. Refusals are not remembered. Safe for
// concurrent use: verify runs under the lock (it writes the CA it found).
func verifyOnce(verify func([][]byte, [][]*x509.Certificate) error) func([][]byte, [][]*x509.Certificate) error {
	var (
		mu sync.Mutex // guards ok and verify's output
		ok = map[string]bool{}
	)
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		k := string(bytes.Join(raw, nil)) // DER is self-delimiting
		mu.Lock()
		defer mu.Unlock()
		if ok[k] {
			return nil
		}
		if err := verify(raw, chains); err != nil {
			return err
		}
		ok[k] = true
		return nil
	}
}

// Close ends every stream and connection.
func (f *fleet) Close() {
	f.cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.conn != nil {
			n.conn.Close()
		}
	}
}

// newNode creates a node with a fresh key and its (lazy) connection.
func (f *fleet) newNode(name string) (*simNode, error) {
	n := &simNode{name: name, gotMap: make(chan struct{})}
	priv, err := key.NewPrivate()
	if err != nil {
		return nil, err
	}
	if n.local, err = dhkey.NewLocal(priv); err != nil {
		return nil, err
	}
	n.pub = n.local.Public()
	conn, err := grpc.NewClient("passthrough:///"+f.target,
		grpc.WithTransportCredentials(credentials.NewTLS(f.tls)),
		grpc.WithContextDialer(f.dial),
		// No read buffer, as on the coordinator: TLS already holds a
		// decrypted record, and gRPC's buffer would copy every map byte
		// once more.
		grpc.WithReadBufferSize(0), grpc.WithWriteBufferSize(16<<10),
		// The agent's window (a coordinator pays for window updates).
		grpc.WithInitialWindowSize(control.Window), grpc.WithInitialConnWindowSize(control.Window),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
	)
	if err != nil {
		return nil, err
	}
	n.conn = conn
	f.mu.Lock()
	f.nodes = append(f.nodes, n)
	f.mu.Unlock()
	return n, nil
}

// newNodes creates n nodes named sim0, sim1, ...
func (f *fleet) newNodes(n int) ([]*simNode, error) {
	nodes := make([]*simNode, n)
	for j := range nodes {
		var err error
		if nodes[j], err = f.newNode(fmt.Sprintf("sim%d", j)); err != nil {
			return nil, err
		}
	}
	return nodes, nil
}

// join registers n with the fleet's token.
func (f *fleet) join(n *simNode) error {
	ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
	defer cancel()
	js, err := api.NewControlClient(n.conn).Join(ctx)
	if err == nil {
		err = control.Authenticate(js, n.local, api.AuthJoin, &api.Hello{Hostname: n.name}, nil)
	}
	if err == nil {
		err = js.Send(&api.ClientMessage{Msg: &api.ClientMessage_Join{Join: &api.JoinRequest{Token: f.tok, Name: n.name, Hostname: n.name}}})
	}
	if err == nil {
		_, err = js.Recv()
	}
	if err != nil {
		return fmt.Errorf("join %s: %w", n.name, err)
	}
	return nil
}

// connect opens n's stream, proves its key and starts the receive loop.
func (f *fleet) connect(n *simNode) error {
	cs, err := n.conn.NewStream(f.ctx, &api.Control_ServiceDesc.Streams[0], api.Control_Connect_FullMethodName, grpc.ForceCodecV2(scanCodec{}))
	if err != nil {
		return fmt.Errorf("connect %s: %w", n.name, err)
	}
	hello := &api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: &api.Hello{PublicKey: n.pub[:],
		ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1, Hostname: n.name}}}
	if d := n.digest.Load(); d != nil {
		hello.GetHello().MapDigest = *d
		hello.GetHello().MapBuckets = f.model.buckets(*d)
	}
	n.sendMu.Lock()
	hello.GetHello().Endpoints = n.eps
	n.sendMu.Unlock()
	if err := cs.SendMsg(hello); err != nil {
		return fmt.Errorf("hello %s: %w", n.name, err)
	}
	var m scanned
	if err := cs.RecvMsg(&m); err != nil {
		return fmt.Errorf("challenge for %s: %w", n.name, err)
	}
	var bind []byte
	if p, ok := peer.FromContext(cs.Context()); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			bind, _ = api.Binding(&ti.State)
		}
	}
	proof, err := api.ProveWith(n.local, m.challenge, api.AuthConnect, bind, nil)
	if err != nil {
		return fmt.Errorf("challenge for %s: %w", n.name, err)
	}
	if err := cs.SendMsg(&api.ClientMessage{Msg: &api.ClientMessage_Proof{Proof: proof}}); err != nil {
		return fmt.Errorf("proof %s: %w", n.name, err)
	}
	n.stream = cs
	go func() {
		first := true
		for {
			m := scanned{watch: &f.watch, model: &f.model}
			if d := n.digest.Load(); d != nil {
				m.prev = *d
			}
			if err := cs.RecvMsg(&m); err != nil {
				return
			}
			if !m.isMap {
				continue
			}
			f.msgs.Add(1)
			f.bytes.Add(int64(m.size))
			if m.current {
				f.current.Add(1)
			}
			if m.patch {
				f.patched.Add(1)
			}
			if !m.current {
				d := m.digest
				n.digest.Store(&d)
			}
			if first {
				close(n.gotMap)
				first = false
			}
			if m.found {
				n.seenAt.CompareAndSwap(0, time.Now().UnixNano())
			}
		}
	}()
	return nil
}

// setEndpoints sends an endpoint update on n's stream.
func (n *simNode) setEndpoints(eps ...string) error {
	n.sendMu.Lock()
	defer n.sendMu.Unlock()
	n.eps = eps
	return n.stream.SendMsg(&api.ClientMessage{Msg: &api.ClientMessage_Endpoints{Endpoints: &api.EndpointUpdate{Endpoints: eps}}})
}

// bringUp joins and connects nodes with the given concurrency and waits
// until each has its first network map, or until timeout; it returns when
// the last Join finished. A stream that ends before its first map (on a
// loaded machine the coordinator may give up on an authentication that
// took longer than its timeout) is opened again, as a real agent would,
// instead of leaving the node without a map until the cap. reconnects (if
// not nil) counts how often that happened.
func (f *fleet) bringUp(nodes []*simNode, workers int, timeout time.Duration, reconnects *atomic.Int64) (joined time.Duration, err error) {
	if reconnects == nil {
		reconnects = new(atomic.Int64)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(f.ctx, timeout)
	defer cancel()
	work := make(chan *simNode)
	var (
		wg, watchers sync.WaitGroup
		errMu        sync.Mutex // guards firstErr
		firstErr     error
		left         atomic.Int64
		joinedAt     atomic.Int64
	)
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
		cancel()
	}
	// watch reconnects n (once a second at most) until it has a map:
	// connected says whether its stream is open now.
	watch := func(n *simNode, connected bool) {
		defer watchers.Done()
		for {
			if connected {
				select {
				case <-n.gotMap:
					return
				case <-ctx.Done():
					return
				case <-n.stream.Context().Done():
				}
				select {
				case <-n.gotMap: // the map and the end raced
					return
				default:
				}
			} else {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
			reconnects.Add(1)
			connected = f.connect(n) == nil
		}
	}
	left.Store(int64(len(nodes)))
	for range workers {
		wg.Go(func() {
			for n := range work {
				err := f.join(n)
				if left.Add(-1) == 0 {
					joinedAt.Store(int64(time.Since(start)))
				}
				if err != nil {
					fail(err)
					continue
				}
				watchers.Add(1)
				go watch(n, f.connect(n) == nil)
			}
		})
	}
feed:
	for _, n := range nodes {
		select {
		case work <- n:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	for _, n := range nodes {
		select {
		case <-n.gotMap:
		case <-ctx.Done():
		}
	}
	cancel() // ends the watchers of nodes without a map
	watchers.Wait()
	errMu.Lock()
	defer errMu.Unlock()
	if firstErr != nil {
		return 0, firstErr
	}
	up := 0
	for _, n := range nodes {
		select {
		case <-n.gotMap:
			up++
		default:
		}
	}
	if up < len(nodes) {
		return 0, fmt.Errorf("%d of %d nodes got no network map within %v", len(nodes)-up, len(nodes), timeout)
	}
	return time.Duration(joinedAt.Load()), nil
}

// quiesce waits until no map message arrived for quiet, up to timeout.
func (f *fleet) quiesce(quiet, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last, since := f.msgs.Load(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		if n := f.msgs.Load(); n != last {
			last, since = n, time.Now()
			continue
		}
		if time.Since(since) >= quiet {
			return nil
		}
	}
	return fmt.Errorf("map messages still arriving after %v", timeout)
}

// propagation arms the watch on key, runs change, and returns for every
// node in nodes the delay until a map carrying key reached it; missing
// counts nodes it did not reach within timeout.
func (f *fleet) propagation(nodes []*simNode, key [32]byte, change func() error, timeout time.Duration) (lat []float64, missing int, err error) {
	for _, n := range nodes {
		n.seenAt.Store(0)
	}
	f.watch.Store(&key)
	defer f.watch.Store(nil)
	t0 := time.Now()
	if err := change(); err != nil {
		return nil, 0, err
	}
	deadline := t0.Add(timeout)
	for {
		missing = 0
		for _, n := range nodes {
			if n.seenAt.Load() == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, n := range nodes {
		if at := n.seenAt.Load(); at != 0 {
			lat = append(lat, time.Duration(at-t0.UnixNano()).Seconds()*1e3)
		}
	}
	return lat, missing, nil
}

// scanCodec marshals client messages with protobuf and reads server
// messages into *scanned without decoding network maps.
type scanCodec struct{}

func (scanCodec) Name() string { return "proto" }

func (scanCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (scanCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*scanned)
	if !ok {
		return proto.Unmarshal(data.Materialize(), v.(proto.Message))
	}
	return m.scan(newWire(data))
}

// scanned is what the fleet needs from one ServerMessage.
type scanned struct {
	watch     *atomic.Pointer[[32]byte] // in: key to look for among peers and self, read when the message arrives
	challenge *api.Challenge
	isMap     bool
	found     bool   // the watched key is in the map
	digest    []byte // NetworkMap.digest
	current   bool   // NetworkMap.current
	patch     bool   // NetworkMap.patched_buckets set
	model     *mapModel
	prev      []byte // in: the digest of the map the node held before this message
	size      int
}

var errBadWire = errors.New("malformed server message")

// wire reads protobuf wire format where it lies: a large message arrives
// as one buffer per HTTP/2 frame, and gathering it into one would cost
// the harness a copy (and a cleared buffer) of every map byte, which with
// 10,000 agents in one process is CPU the coordinator needs. A wire is a
// value: copies read on independently.
type wire struct {
	bufs [][]byte // never written
	i    int      // current buffer
	off  int      // offset in it
	n    int      // bytes left to read
}

func newWire(data mem.BufferSlice) wire {
	w := wire{bufs: make([][]byte, 0, len(data))}
	for _, b := range data {
		w.bufs = append(w.bufs, b.ReadOnlyData())
		w.n += b.Len()
	}
	return w
}

// cur returns the contiguous bytes at the read position (within n).
func (w *wire) cur() []byte {
	for w.i < len(w.bufs) && w.off >= len(w.bufs[w.i]) {
		w.i, w.off = w.i+1, 0
	}
	if w.i == len(w.bufs) {
		return nil
	}
	b := w.bufs[w.i][w.off:]
	return b[:min(len(b), w.n)]
}

// skip moves k bytes on; false if fewer are left.
func (w *wire) skip(k int) bool {
	if k < 0 || k > w.n {
		return false
	}
	for k > 0 {
		b := w.cur()
		if len(b) == 0 {
			return false
		}
		t := min(k, len(b))
		w.off += t
		w.n -= t
		k -= t
	}
	return true
}

// bytes returns the next k bytes, copied only when they span buffers.
func (w *wire) bytes(k int) ([]byte, bool) {
	if k < 0 || k > w.n {
		return nil, false
	}
	if b := w.cur(); len(b) >= k {
		w.off += k
		w.n -= k
		return b[:k], true
	}
	out := make([]byte, 0, k)
	for len(out) < k {
		b := w.cur()
		if len(b) == 0 {
			return nil, false
		}
		t := min(k-len(out), len(b))
		out = append(out, b[:t]...)
		w.off += t
		w.n -= t
	}
	return out, true
}

func (w *wire) varint() (uint64, bool) {
	b := w.cur()
	v, n := protowire.ConsumeVarint(b)
	if n < 0 { // spans buffers, or bad
		var tmp [binary.MaxVarintLen64]byte
		c := *w
		p, ok := c.bytes(min(len(tmp), w.n))
		if !ok {
			return 0, false
		}
		if v, n = protowire.ConsumeVarint(p); n < 0 {
			return 0, false
		}
	}
	return v, w.skip(n)
}

// field reads the next field: its number and type, a varint's value in
// x, a length-delimited field's contents as a wire of their own in v (w
// reads on past them); fixed-size values are skipped. ok is false at the
// end or on bad input (bad is then true).
func (w *wire) field() (num protowire.Number, typ protowire.Type, x uint64, v wire, ok, bad bool) {
	if w.n == 0 {
		return 0, 0, 0, wire{}, false, false
	}
	tag, ok := w.varint()
	if !ok || tag>>3 == 0 || tag>>3 > uint64(protowire.MaxValidNumber) {
		return 0, 0, 0, wire{}, false, true
	}
	num, typ = protowire.Number(tag>>3), protowire.Type(tag&7)
	switch typ {
	case protowire.VarintType:
		x, ok = w.varint()
	case protowire.Fixed32Type:
		ok = w.skip(4)
	case protowire.Fixed64Type:
		ok = w.skip(8)
	case protowire.BytesType:
		var l uint64
		if l, ok = w.varint(); ok && l <= uint64(w.n) {
			v = *w
			v.n = int(l)
			ok = w.skip(int(l))
		} else {
			ok = false
		}
	default: // groups are not in edgewire.proto
		ok = false
	}
	return num, typ, x, v, ok, !ok
}

// ServerMessage: 1 challenge, 2 map; NetworkMap: 4 self, 5 peers (Node);
// Node: 1 public_key. Field numbers from coordinator/api/edgewire.proto.
func (m *scanned) scan(w wire) error {
	m.size = w.n
	for {
		num, typ, _, v, ok, bad := w.field()
		if bad {
			return errBadWire
		}
		if !ok {
			return nil
		}
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			b, _ := v.bytes(v.n)
			m.challenge = new(api.Challenge)
			if err := proto.Unmarshal(b, m.challenge); err != nil {
				return err
			}
		case 2:
			m.isMap = true
			m.digest, m.current, m.patch = mapFlags(v)
			if m.model != nil && m.model.wants(m.digest, m.current) {
				c := v // bytes reads on: v is read again below
				raw, _ := c.bytes(c.n)
				m.model.apply(m.prev, m.digest, m.current, raw)
			}
			if m.watch != nil {
				if k := m.watch.Load(); k != nil {
					m.found = mapHasKey(v, k[:])
				}
			}
		}
	}
}

// mapModel is the maps the fleet's nodes hold, as agents hold them
// (mapstate.State, with the agent's own bucket sums), by the
// coordinator's digest: a map is exactly the map at its version, so every
// node with one digest holds the same map, and each is decoded once
// however many nodes receive it. It keeps the last modelStates.
type mapModel struct {
	mu     sync.Mutex
	states map[string]*mapstate.State
	order  []string
}

const modelStates = 16

// apply records the map a node holds after a message (raw NetworkMap
// bytes, with its digest d and current flag as mapFlags reads them),
// given the digest of the one it held before.
func (mm *mapModel) apply(prev, d []byte, current bool, raw []byte) {
	if len(d) == 0 {
		return
	}
	mm.mu.Lock()
	defer mm.mu.Unlock()
	if _, ok := mm.states[string(d)]; ok && !current {
		return
	}
	var m api.NetworkMap
	if err := proto.Unmarshal(raw, &m); err != nil {
		return
	}
	var st mapstate.State
	switch base := mm.states[string(prev)]; {
	case m.Full:
		st = *mapstate.New()
	case base != nil:
		st = *base // Apply replaces what it changes, never writes into base's maps
	default:
		return
	}
	if err := st.Apply(&m); err != nil {
		return
	}
	if mm.states == nil {
		mm.states = map[string]*mapstate.State{}
	}
	if _, ok := mm.states[string(d)]; !ok {
		mm.order = append(mm.order, string(d))
	}
	mm.states[string(d)] = &st // a current message: the same map, at the new coordinator's version
	if len(mm.order) > modelStates {
		delete(mm.states, mm.order[0])
		mm.order = mm.order[1:]
	}
}

// wants reports whether apply would record a message with digest d
// (whose bytes must then be gathered for it).
func (mm *mapModel) wants(d []byte, current bool) bool {
	if len(d) == 0 {
		return false
	}
	mm.mu.Lock()
	defer mm.mu.Unlock()
	_, known := mm.states[string(d)]
	return current || !known
}

// buckets returns the bucket sums of the map with digest d, as its
// holder sends them in Hello, or nil if the model has none.
func (mm *mapModel) buckets(d []byte) []byte {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	if st := mm.states[string(d)]; st != nil {
		return st.Buckets()
	}
	return nil
}

// mapFlags returns NetworkMap.digest (13), whether .current (14) is set
// and whether .patched_buckets (15) is not empty.
func mapFlags(w wire) (digest []byte, current, patch bool) {
	for {
		// Most fields are peers wholly inside one buffer: skip them
		// there, at the cost of the contiguous scan.
		if b := w.cur(); len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n > 0 && typ == protowire.BytesType && num != 13 && num != 15 {
				if _, m := protowire.ConsumeBytes(b[n:]); m >= 0 {
					w.off += n + m
					w.n -= n + m
					continue
				}
			}
		}
		num, typ, x, v, ok, _ := w.field()
		if !ok {
			return digest, current, patch
		}
		switch {
		case num == 13 && typ == protowire.BytesType:
			b, _ := v.bytes(v.n)
			digest = slices.Clone(b)
		case num == 15 && typ == protowire.BytesType:
			patch = v.n > 0
		case num == 14 && typ == protowire.VarintType:
			current = x != 0
		}
	}
}

func mapHasKey(w wire, key []byte) bool {
	for {
		num, typ, _, v, ok, _ := w.field()
		if !ok {
			return false
		}
		if typ == protowire.BytesType && (num == 4 || num == 5) && nodeKeyIs(v, key) {
			return true
		}
	}
}

func nodeKeyIs(w wire, key []byte) bool {
	for {
		num, typ, _, v, ok, _ := w.field()
		if !ok {
			return false
		}
		if num == 1 && typ == protowire.BytesType {
			b, ok := v.bytes(v.n)
			return ok && bytes.Equal(b, key)
		}
	}
}
