package relay

// Fuzz targets for every parser of bytes from the network: the relay's
// handshake (Upgrade header and first frames), a connection's frames
// after it (node or mesh relay), the client's handshake and read loop,
// and the mesh link's read loop. (FuzzReadFrame, FuzzVerifyTicket and
// FuzzVerifyRevocations cover the formats underneath.) Seeds are real
// frames; a few bytes of each are all the mutator needs to reach the
// checks behind them.

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/secretbox"

	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/types/key"
)

// frame encodes one frame.
func frame(t frameType, parts ...[]byte) []byte {
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	if err := writeFrame(bw, t, parts...); err != nil {
		panic(err)
	}
	bw.Flush()
	return b.Bytes()
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// totalAlloc is the bytes allocated by the process so far.
func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// verdict is what a relay must do with a stream of frames from a peer.
type verdict int

const (
	vUnknown verdict = iota // the model cannot tell
	vClose                  // close the connection
	vPong                   // answer the final ping: everything before it was fine
	vWait                   // wait for more bytes
)

func (v verdict) String() string {
	return [...]string{"unknown", "close", "pong", "wait"}[v]
}

// connVerdict runs the rules of sconn.handle over stream, which ends
// with a ping carrying marker.
func connVerdict(stream []byte, self Key, mesh bool, tpub ed25519.PublicKey, marker []byte) verdict {
	limit, ctrl := maxRevocationsLen, clientCtrl
	if mesh {
		limit, ctrl = maxFramePayload, meshCtrl
	}
	pings := 0
	for len(stream) > 0 {
		if len(stream) < frameHeaderLen {
			return vWait
		}
		t, n := frameType(stream[0]), uint64(binary.BigEndian.Uint32(stream[1:]))
		if n > uint64(min(limit, maxPayload(t))) {
			return vClose
		}
		if uint64(len(stream)-frameHeaderLen) < n {
			return vWait
		}
		p := stream[frameHeaderLen : frameHeaderLen+n]
		stream = stream[frameHeaderLen+n:]
		switch {
		case t == framePing:
			if len(p) != pingLen {
				return vClose
			}
			if pings++; pings > ctrl {
				return vUnknown // the control queue may overflow first
			}
			if len(stream) == 0 && bytes.Equal(p, marker) {
				return vPong
			}
		case t == frameKeepAlive || t == framePong:
		case t == frameSendPacket && !mesh:
			if len(p) < 32 || Key(p[:32]) == self {
				return vClose
			}
		case t == frameSendPackets && !mesh:
			if len(p) < 32 || Key(p[:32]) == self {
				return vClose
			}
			if _, _, err := packetRecords(p[32:]); err != nil {
				return vClose
			}
		case t == frameTicket && !mesh:
		case t == frameRevocations && !mesh:
			rv, err := VerifyRevocations(tpub, p)
			if err != nil {
				return vClose
			}
			for _, e := range rv.Entries {
				if e.Node == self {
					return vUnknown
				}
			}
		case t == frameForwardPacket && mesh:
			if len(p) < 64 {
				return vClose
			}
		default:
			return vClose
		}
	}
	return vWait // the final ping became part of another frame
}

// FuzzServerConn drives a relay connection with arbitrary frames after a
// real handshake (as a node, or as a mesh relay), over net.Pipe. The
// relay must close it at the first frame the protocol refuses and only
// then, answer a ping after valid frames, end the connection when the
// peer goes, and leave no queued bytes, clients or handshake slots.
func FuzzServerConn(f *testing.F) {
	e := newEnv(f)
	meshKey := newNonce(32)
	s, err := NewServer(ServerConfig{PrivateKey: newKey(), TicketKey: e.tpub, MeshKey: meshKey, Now: e.clock.Now})
	if err != nil {
		f.Fatal(err)
	}
	node, peer, other := newKey(), newKey(), newKey().Public()
	self := node.Public()
	now := e.clock.Now()
	list := SignRevocations(e.tpriv, Revocations{Issued: now, Entries: []Revocation{{Node: other, Until: now.Add(time.Hour)}}})
	for _, seed := range []struct {
		in   []byte
		mesh bool
	}{
		{frame(framePing, []byte("12345678")), false},
		{cat(frame(frameKeepAlive), frame(frameSendPacket, other[:], []byte("wireguard"))), false},
		{frame(frameSendPacket, other[:], make([]byte, maxPacketSize+1)), false},
		{frame(frameSendPacket, self[:], []byte("me")), false},
		{frame(frameTicket, e.ticket(self, time.Hour)), false},
		{frame(frameRevocations, list), false},
		{frame(frameRevocations, list[:len(list)-1]), false},
		{frameBytes(frameRevocations, uint32(maxRevocationsLen), list), false},
		{frameBytes(frameSendPacket, maxFramePayload+1, nil), false},
		{frame(frameForwardPacket, other[:], self[:], []byte("x")), false},
		{frame(frameForwardPacket, self[:], other[:], []byte("wireguard")), true},
		{frame(frameForwardPacket, make([]byte, 63)), true},
		{frame(frameSendPacket, other[:], []byte("x")), true},
		{frame(frameRevocations, list), true},
		{frame(frameSendPackets, other[:], records([]byte("wireguard"), []byte("x"))), false},
		{frame(frameSendPackets, other[:], []byte{0, 2, 'x'}), false},
		{frame(frameSendPackets, self[:], records([]byte("me"))), false},
		{frame(frameSendPackets, other[:], records([]byte("x"))), true},
		{[]byte{0x7f, 0, 0}, false},
	} {
		f.Add(seed.in, seed.mesh)
	}
	f.Fuzz(func(t *testing.T, in []byte, mesh bool) {
		before := totalAlloc()
		sc, cc := net.Pipe()
		var hello *clientHello
		if !mesh {
			hello = newClientHello(self)
		}
		slot, _, msg := s.limits.admit(netip.Prefix{})
		if slot == nil {
			t.Fatalf("limits refused the connection: %s", msg)
		}
		served := make(chan struct{})
		go func() {
			defer close(served)
			defer slot.close()
			defer sc.Close()
			s.serveConn(sc, bufio.NewReaderSize(sc, 4096), hello, hello != nil, slot)
		}()
		var reader sync.WaitGroup
		defer func() {
			cc.Close()
			reader.Wait()
			select {
			case <-served:
			case <-time.After(10 * time.Second):
				t.Fatal("the relay did not end the connection after the peer closed it")
			}
			st := s.Stats()
			if st.Clients != 0 || st.MeshClients != 0 || st.Pending != 0 || st.QueuedBytes != 0 {
				t.Fatalf("after the connection: %d clients, %d mesh clients, %d pending, %d bytes queued; want none", st.Clients, st.MeshClients, st.Pending, st.QueuedBytes)
			}
			// The handshake and a connection's buffers cost a fixed
			// amount; the rest must follow the bytes sent.
			if got, max := totalAlloc()-before, uint64(1<<20+8*len(in)); got > max {
				t.Fatalf("allocated %d bytes for %d input bytes, want at most %d", got, len(in), max)
			}
		}()
		cc.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(cc)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: got %v, %v; want 101", resp, err)
		}
		bw := bufio.NewWriter(cc)
		if mesh {
			_, err = meshHandshake(br, bw, s.pub, peer.Public(), meshKey)
		} else {
			_, err = clientHandshake(br, bw, s.pub, node, hello, e.ticket(self, time.Hour))
		}
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		marker := newNonce(pingLen)
		events := make(chan verdict, 2)
		reader.Go(func() {
			for {
				t, p, err := readFrame(br, nil, maxFramePayload)
				if err != nil {
					events <- vClose
					return
				}
				if t == framePong && bytes.Equal(p, marker) {
					events <- vPong
				}
			}
		})
		stream := cat(in, frame(framePing, marker))
		cc.Write(stream) // fails once the relay has closed
		switch want := connVerdict(stream, self, mesh, e.tpub, marker); want {
		case vPong, vClose:
			select {
			case got := <-events:
				if got != want {
					t.Fatalf("relay: got %v, want %v for %x", got, want, in)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("relay did nothing within 10s; want %v for %x", want, in)
			}
		}
	})
}

// FuzzServerHandshake feeds the relay's handshake an arbitrary client
// header and first frames. Nobody without the node's key (or the mesh
// key) completes it; a refusal is told before the relay closes; the
// relay's key frame carries a proof exactly when the client sent a
// header.
func FuzzServerHandshake(f *testing.F) {
	e := newEnv(f)
	s, err := NewServer(ServerConfig{PrivateKey: newKey(), TicketKey: e.tpub, MeshKey: make([]byte, 32), Now: e.clock.Now})
	if err != nil {
		f.Fatal(err)
	}
	k := newKey()
	pub := k.Public()
	h := newClientHello(pub).header()
	info := cat(pub[:], make([]byte, clientInfoMin-32+TicketLen))
	f.Add(h, frame(frameClientInfo, info))
	stranger := newKey().Public()
	f.Add(h, frame(frameClientInfo, cat(stranger[:], info[32:])))
	f.Add(h, frame(frameClientInfo, info[:clientInfoMin-1]))
	f.Add("", frame(frameMeshInfo, make([]byte, meshInfoLen)))
	f.Add("", frame(frameClientInfo, info))
	f.Add(h, frame(frameMeshInfo, make([]byte, meshInfoLen)))
	f.Add(h, frameBytes(frameClientInfo, maxHandshakePayload+1, nil))
	f.Add("AAAA", []byte{2, 0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, header string, in []byte) {
		var hello *clientHello
		if header != "" {
			h, err := parseClientHello([]string{header})
			if err != nil {
				return
			}
			if dhkey.CheckPublic(h.node) != nil {
				t.Fatalf("header %q accepted with a low-order key", header)
			}
			hello = &h
		}
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		pi, err := s.serverHandshake(bufio.NewReader(bytes.NewReader(in)), bw, hello)
		if err == nil {
			t.Fatalf("handshake accepted %q %x as %+v", header, in, pi)
		}
		br := bufio.NewReader(&out)
		typ, p, ferr := readFrame(br, nil, maxHandshakePayload)
		if ferr != nil || typ != frameServerKey || len(p) != serverKeyLen {
			t.Fatalf("first frame: type %#x, %d bytes, %v; want the server key", byte(typ), len(p), ferr)
		}
		if zero := bytes.Equal(p[serverKeyLen-proofLen:], make([]byte, proofLen)); zero != (hello == nil) {
			t.Fatalf("proof all zero: %v; want %v (client header %q)", zero, hello == nil, header)
		}
		var r refusal
		if errors.As(err, &r) {
			if typ, p, ferr := readFrame(br, nil, maxHandshakePayload); ferr != nil || typ != frameRefused || string(p) != string(r) {
				t.Fatalf("after refusing with %q the relay sent %#x %q (%v), want frameRefused with the reason", r, byte(typ), p, ferr)
			}
		}
	})
}

// FuzzClientHandshake feeds a client's handshake arbitrary bytes from a
// fake relay. The client must send nothing before the relay has proven
// the pinned key, and succeed only with the relay's real answer.
func FuzzClientHandshake(f *testing.F) {
	relayPriv, node := newKey(), newKey()
	relayPub, nodePub := relayPriv.Public(), node.Public()
	hello := newClientHello(nodePub)
	ticket := []byte("ticket")
	// proofFor is the real relay's proof for a server nonce.
	proofFor := func(snonce []byte) []byte {
		k, err := handshakeKey(relayPriv, nodePub, dhkey.RelayServerProof, relayPub, nodePub, &hello.cnonce, (*[nonceLen]byte)(snonce))
		if err != nil {
			f.Fatal(err)
		}
		m := dhkey.MAC(k, []byte(serverProofLabel))
		return m[:]
	}
	snonce := newNonce(nonceLen)
	keyFrame := frame(frameServerKey, []byte(serverMagic), []byte{ProtocolVersion}, relayPub[:], snonce, proofFor(snonce))
	ks, err := handshakeKey(relayPriv, nodePub, dhkey.RelayServerInfo, relayPub, nodePub, &hello.cnonce, (*[nonceLen]byte)(snonce))
	if err != nil {
		f.Fatal(err)
	}
	var bn [boxNonceLen]byte
	info := frame(frameServerInfo, bn[:], secretbox.Seal(nil, cat(snonce, []byte{ProtocolVersion, 0, 30}), &bn, &ks))
	f.Add(cat(keyFrame, info))
	f.Add(cat(keyFrame, frame(frameRefused, []byte("node revoked"))))
	f.Add(cat(keyFrame, frame(frameServerInfo, make([]byte, serverInfoLen))))
	f.Add(frame(frameServerKey, []byte(serverMagic), []byte{ProtocolVersion}, relayPub[:], snonce, make([]byte, proofLen)))
	f.Add(frame(frameServerKey, []byte(serverMagic), []byte{1}, relayPub[:], snonce))
	f.Add(frame(frameRefused, []byte("busy")))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		_, err := clientHandshake(bufio.NewReader(bytes.NewReader(in)), bw, relayPub, node, hello, ticket)
		bw.Flush()
		proven := len(in) >= len(keyFrame) && bytes.Equal(in[:frameHeaderLen+serverKeyLen-nonceLen-proofLen], keyFrame[:frameHeaderLen+serverKeyLen-nonceLen-proofLen]) &&
			bytes.Equal(in[frameHeaderLen+serverKeyLen-proofLen:len(keyFrame)], proofFor(in[frameHeaderLen+serverKeyLen-nonceLen-proofLen:frameHeaderLen+serverKeyLen-proofLen]))
		if out.Len() > 0 && !proven {
			t.Fatalf("sent %d bytes to a relay that did not prove its key (input %x)", out.Len(), in)
		}
		if err == nil && !proven {
			t.Fatalf("handshake succeeded on %x without the relay's proof", in)
		}
		if err == nil {
			if typ, p, ferr := readFrame(bufio.NewReader(&out), nil, maxHandshakePayload); ferr != nil || typ != frameClientInfo || !bytes.Equal(p[:32], nodePub[:]) {
				t.Fatalf("client sent %#x (%v), want its client info", byte(typ), ferr)
			}
		}
	})
}

// nopConn is a net.Conn whose deadlines do nothing, for read loops fed
// from memory.
type nopConn struct{ net.Conn }

func (nopConn) SetReadDeadline(time.Time) error  { return nil }
func (nopConn) SetWriteDeadline(time.Time) error { return nil }
func (nopConn) SetDeadline(time.Time) error      { return nil }
func (nopConn) Close() error                     { return nil }

// FuzzClientReadLoop feeds a client's read loop arbitrary frames from a
// fake relay. It must deliver exactly the well-formed packets, answer
// pings within its control bound, stop with an error at the end, and
// allocate in proportion to the input.
func FuzzClientReadLoop(f *testing.F) {
	src := newKey().Public()
	f.Add(frame(frameRecvPacket, src[:], []byte("wireguard")))
	f.Add(cat(frame(framePing, []byte("12345678")), frame(frameKeepAlive), frame(framePong, []byte("87654321"))))
	f.Add(frame(frameRecvPacket, make([]byte, 31)))
	f.Add(frame(frameRecvPacket, src[:], make([]byte, maxPacketSize)))
	f.Add(frameBytes(frameRecvPacket, maxFramePayload+1, nil))
	f.Add(frame(frameType(0x7f), []byte("a later version")))
	f.Add(frame(frameRecvPackets, src[:], records([]byte("wire"), []byte("guard"))))
	f.Add(frame(frameRecvPackets, src[:], []byte{0, 5, 'x'}))
	f.Add(frame(frameRecvPackets, src[:], records(make([]byte, maxPacketSize), make([]byte, maxPacketSize))))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := NewClient(ClientConfig{URL: "http://relay/relay", ServerKey: Key{1}, PrivateKey: key.Private{2}})
		if err != nil {
			t.Fatal(err)
		}
		var got [][]byte
		c.cfg.OnPacket = func(s Key, p []byte) {
			if len(p) > maxFramePayload-32 {
				t.Fatalf("delivered a packet of %d bytes", len(p))
			}
			got = append(got, bytes.Clone(cat(s[:], p)))
		}
		cc := &cconn{nc: nopConn{}, q: newQueue(queueConfig{pkts: clientQueueLen, bytes: clientQueueBytes, ctrl: clientCtrl}, nil), done: make(chan struct{}), pings: map[[pingLen]byte]chan struct{}{}}
		br := bufio.NewReader(bytes.NewReader(in))
		before := totalAlloc()
		err = c.readLoop(cc, br, time.Second)
		alloc := totalAlloc() - before
		if err == nil {
			t.Fatal("read loop ended without an error")
		}
		// The model: packets up to the first malformed one; pings answered.
		var want [][]byte
		pings := 0
		for rest := in; len(rest) >= frameHeaderLen; {
			typ, n := frameType(rest[0]), uint64(binary.BigEndian.Uint32(rest[1:]))
			if n > uint64(maxPayload(typ)) || uint64(len(rest)-frameHeaderLen) < n {
				break
			}
			p := rest[frameHeaderLen : frameHeaderLen+n]
			rest = rest[frameHeaderLen+n:]
			if typ == frameRecvPacket {
				if len(p) < 32 {
					break
				}
				want = append(want, p)
			}
			if typ == frameRecvPackets {
				if len(p) < 32 {
					break
				}
				if _, _, err := packetRecords(p[32:]); err != nil {
					break
				}
				for recs := p[32:]; len(recs) > 0; {
					var pkt []byte
					pkt, recs = nextRecord(recs)
					want = append(want, cat(p[:32], pkt))
				}
			}
			if typ == framePing && len(p) == pingLen {
				pings++
			}
		}
		if len(got) != len(want) {
			t.Fatalf("delivered %d packets, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("packet %d: got %x, want %x", i, got[i], want[i])
			}
		}
		if q := len(cc.q.ctrl); q != min(pings, clientCtrl) {
			t.Fatalf("queued %d pongs for %d pings, want %d", q, pings, min(pings, clientCtrl))
		}
		if max := uint64(16<<10 + 8*len(in) + 64*pings); alloc > max {
			t.Fatalf("allocated %d bytes for %d input bytes, want at most %d", alloc, len(in), max)
		}
	})
}

// FuzzMeshReadLoop feeds a mesh link's read loop arbitrary frames from
// the relay it dialled. Presence and revocations must follow exactly the
// well-formed frames; the loop stops with an error at the end.
func FuzzMeshReadLoop(f *testing.F) {
	e := newEnv(f)
	k := newKey().Public()
	until := make([]byte, 8)
	binary.BigEndian.PutUint64(until, uint64(e.clock.Now().Add(time.Hour).Unix()))
	f.Add(cat(frame(framePeerPresent, k[:]), frame(framePeerGone, k[:])))
	f.Add(frame(frameRevoke, k[:], until))
	f.Add(frame(frameRevoke, k[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}))
	f.Add(cat(frame(framePing, []byte("12345678")), frame(frameKeepAlive)))
	f.Add(frame(framePeerPresent, k[:31]))
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := NewServer(ServerConfig{PrivateKey: newKey(), TicketKey: e.tpub, MeshKey: make([]byte, 32), Now: e.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		l := &meshLink{q: newQueue(queueConfig{pkts: meshQueueLen, bytes: meshQueueBytes, ctrl: meshCtrl}, s.budget)}
		if err := s.meshReadLoop(l, bufio.NewReader(bytes.NewReader(in)), nopConn{}, time.Second); err == nil {
			t.Fatal("read loop ended without an error")
		}
		// The model: presence and revocations up to the first bad frame.
		present := map[Key]bool{}
		revoked := map[Key]time.Time{}
		now := e.clock.Now()
	model:
		for rest := in; len(rest) >= frameHeaderLen; {
			typ, n := frameType(rest[0]), uint64(binary.BigEndian.Uint32(rest[1:]))
			if n > maxFramePayload || uint64(len(rest)-frameHeaderLen) < n {
				break
			}
			p := rest[frameHeaderLen : frameHeaderLen+n]
			rest = rest[frameHeaderLen+n:]
			switch typ {
			case framePeerPresent, framePeerGone:
				if len(p) != 32 {
					break model
				}
				present[Key(p)] = typ == framePeerPresent
			case frameRevoke:
				if len(p) != 40 {
					break model
				}
				u := time.Unix(int64(min(binary.BigEndian.Uint64(p[32:]), maxUnix)), 0)
				if cur, ok := revoked[Key(p[:32])]; !ok || u.After(cur) {
					revoked[Key(p[:32])] = u
				}
			}
		}
		for k, v := range s.remote {
			if v != l || !present[k] {
				t.Fatalf("route to %x: got one, want none", k[:4])
			}
		}
		for k, up := range present {
			if _, ok := s.remote[k]; ok != up {
				t.Fatalf("route to %x: got %v, want %v", k[:4], ok, up)
			}
		}
		if len(s.revoked) != len(revoked) {
			t.Fatalf("revoked %d nodes, want %d", len(s.revoked), len(revoked))
		}
		for k, u := range revoked {
			if !s.revoked[k].Equal(u) || s.revokedUntil(k, now) != now.Before(u) {
				t.Fatalf("node %x revoked until %v, want %v", k[:4], s.revoked[k], u)
			}
		}
		l.q.close()
	})
}
