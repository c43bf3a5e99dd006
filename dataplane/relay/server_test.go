package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/secretbox"

	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/types/key"
)

func TestTwoClientsExchangePackets(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	c1, c2 := e.startPair(t, r)
	eventually(t, 5*time.Second, "two clients on the relay", func() bool { return r.s.Stats().Clients == 2 })
	sizes := []int{1, 32, 148, 1400, pktBufSize + 1, maxPacketSize}
	for _, n := range sizes {
		p := bytes.Repeat([]byte{byte(n)}, n)
		if err := c1.c.Send(c2.pub, p); err != nil {
			t.Fatal(err)
		}
		expectPacket(t, c2, c1.pub, p)
		if err := c2.c.Send(c1.pub, p); err != nil {
			t.Fatal(err)
		}
		expectPacket(t, c1, c2.pub, p)
	}
	st := r.s.Stats()
	if want := uint64(2 * len(sizes)); st.PacketsIn != want || st.PacketsOut != want {
		t.Errorf("packets in/out: got %d/%d, want %d/%d", st.PacketsIn, st.PacketsOut, want, want)
	}
	if err := c1.c.Send(c2.pub, make([]byte, maxPacketSize+1)); !errors.Is(err, ErrPacketTooLarge) {
		t.Errorf("oversize Send: got %v, want ErrPacketTooLarge", err)
	}
	// No route: a node that is nowhere.
	c1.c.Send(newKey().Public(), []byte("lost"))
	eventually(t, 5*time.Second, "no_route drop", func() bool { return r.s.Stats().Drops["no_route"] == 1 })
}

func TestPing(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k := newKey()
	c := e.startClient(r, k, e.ticket(k.Public(), time.Hour))
	waitConnected(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rtt, err := c.c.Ping(ctx)
	if err != nil || rtt <= 0 {
		t.Fatalf("Ping: got %v, %v; want a positive RTT", rtt, err)
	}
	c.stop()
	if _, err := c.c.Ping(ctx); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Ping after stop: got %v, want ErrNotConnected", err)
	}
	if err := c.c.Send(c.pub, []byte("x")); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send after stop: got %v, want ErrNotConnected", err)
	}
}

func TestClientRefusesWrongRelayKey(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k := newKey()
	c, err := NewClient(ClientConfig{URL: r.url, ServerKey: newKey().Public(), PrivateKey: k, Ticket: e.ticket(k.Public(), time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	eventually(t, 5*time.Second, "a failed connect", func() bool { return errors.Is(c.LastError(), ErrWrongServerKey) })
	if c.Connected() {
		t.Error("client connected to an impostor relay")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

// TestRelayRefusesClients drives the handshake by hand.
func TestRelayRefusesClients(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k := newKey()
	pub := k.Public()
	srv := r.s.PublicKey()
	// clientInfo answers the relay's key frame with a client info naming
	// node, sealed under the RelayClient key priv derives, holding the
	// server nonce (or zeros) and tk.
	clientInfo := func(rc *rawConn, node Key, priv key.Private, zeroNonce bool, tk []byte) error {
		snonce, _, err := readServerKey(rc.br, srv)
		if err != nil {
			return err
		}
		kc, err := handshakeKey(priv, srv, dhkey.RelayClient, srv, rc.hello.node, &rc.hello.cnonce, &snonce)
		if err != nil {
			return err
		}
		inner := snonce[:]
		if zeroNonce {
			inner = make([]byte, nonceLen)
		}
		var bn [boxNonceLen]byte
		rc.send(t, frameClientInfo, node[:], bn[:], secretbox.Seal(nil, append(inner, tk...), &bn, &kc))
		_, err = readReply(rc.br, frameServerInfo, serverInfoLen)
		return err
	}
	good := e.ticket(pub, time.Hour)
	withTicket := func(tk []byte) func(*testing.T) error {
		return func(t *testing.T) error { return dialNode(t, r, k).handshake(r, tk) }
	}
	tests := []struct {
		name   string
		do     func(*testing.T) error
		reason string
	}{
		{"no ticket", withTicket(nil), "invalid"},
		{"expired ticket", withTicket(e.ticket(pub, -time.Second)), "expired"},
		{"ticket beyond MaxTicketTTL", withTicket(e.ticket(pub, MaxTicketTTL+ticketClockSkew+time.Second)), "ahead"},
		{"ticket for another key", withTicket(e.ticket(newKey().Public(), time.Hour)), "another node"},
		{"ticket from another coordinator", withTicket(SignTicket(func() []byte { _, p := testTicketKey(9); return p }(), Ticket{Node: pub, Expires: e.clock.Now().Add(time.Hour)})), "invalid"},
		{"forged node key", func(t *testing.T) error {
			// Claims pub, but only knows another private key.
			return clientInfo(dialNode(t, r, k), pub, newKey(), false, good)
		}, "proof failed"},
		{"stale server nonce", func(t *testing.T) error {
			return clientInfo(dialNode(t, r, k), pub, k, true, good)
		}, "proof failed"},
		{"client info for another key than the header", func(t *testing.T) error {
			other := newKey()
			return clientInfo(dialNode(t, r, k), other.Public(), other, false, e.ticket(other.Public(), time.Hour))
		}, "another key than"},
		{"client info without the client header (v1 style)", func(t *testing.T) error {
			rc := dialRaw(t, r)
			if _, _, err := readServerKey(rc.br, srv); err != nil {
				return err
			}
			rc.send(t, frameClientInfo, pub[:], make([]byte, clientInfoMin-32+TicketLen))
			_, err := readReply(rc.br, frameServerInfo, serverInfoLen)
			return err
		}, "without the"},
		{"mesh info from a node", func(t *testing.T) error {
			rc := dialNode(t, r, k)
			_, err := meshHandshake(rc.br, rc.bw, srv, pub, newNonce(32))
			return err
		}, "unexpected frame"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do(t)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("got %v, want a refusal mentioning %q", err, tt.reason)
			}
			// The relay counts after telling the client.
			eventually(t, 5*time.Second, fmt.Sprintf("refused count %d", i+1), func() bool { return r.s.Stats().Refused == uint64(i+1) })
		})
	}
	if st := r.s.Stats(); st.Clients != 0 {
		t.Errorf("clients: got %d, want 0", st.Clients)
	}
	// The real client surfaces the reason.
	c := e.startClient(r, k, nil)
	eventually(t, 5*time.Second, "LastError to report the refusal", func() bool { return errors.Is(c.c.LastError(), ErrRefused) })
}

// TestClientRefusesUnprovenRelay: a relay that shows the pinned key but
// cannot prove it (a replay of the real relay's key frame, a proof for
// another nonce, no proof) gets nothing sealed from the client.
func TestClientRefusesUnprovenRelay(t *testing.T) {
	relayPriv, node := newKey(), newKey()
	relayPub, nodePub := relayPriv.Public(), node.Public()
	hello := newClientHello(nodePub)
	snonce := [nonceLen]byte(newNonce(nonceLen))
	proofFor := func(h *clientHello, priv key.Private) []byte {
		k, err := handshakeKey(priv, h.node, dhkey.RelayServerProof, relayPub, h.node, &h.cnonce, &snonce)
		if err != nil {
			t.Fatal(err)
		}
		m := dhkey.MAC(k, []byte(serverProofLabel))
		return m[:]
	}
	tests := []struct {
		name  string
		proof []byte
		ok    bool
	}{
		{"real proof", proofFor(hello, relayPriv), true},
		{"no proof (a mesh answer)", make([]byte, proofLen), false},
		{"proof for another client nonce (replayed)", proofFor(newClientHello(nodePub), relayPriv), false},
		{"proof by another key", proofFor(hello, newKey()), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in, out bytes.Buffer
			w := bufio.NewWriter(&in)
			writeFrame(w, frameServerKey, []byte(serverMagic), []byte{ProtocolVersion}, relayPub[:], snonce[:], tt.proof)
			w.Flush()
			bw := bufio.NewWriter(&out)
			_, err := clientHandshake(bufio.NewReader(&in), bw, relayPub, node, hello, nil)
			bw.Flush()
			if tt.ok {
				// It sent its client info and then found no reply.
				if out.Len() == 0 || errors.Is(err, ErrWrongServerKey) {
					t.Fatalf("got %v with %d bytes sent, want client info sent", err, out.Len())
				}
				return
			}
			if !errors.Is(err, ErrWrongServerKey) || out.Len() != 0 {
				t.Fatalf("got %v with %d bytes sent, want ErrWrongServerKey and nothing sent", err, out.Len())
			}
		})
	}
}

// upgrade is the headers of an Upgrade request plus kv pairs.
func upgrade(kv ...string) map[string]string {
	h := map[string]string{"Upgrade": upgradeProto, "Connection": "Upgrade"}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	return h
}

func TestHTTPSurface(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	base := "http://" + r.addr
	tests := []struct {
		name     string
		path     string
		header   map[string]string
		wantCode int
		wantBody string
	}{
		{"probe", "/relay/probe", nil, 200, "ok"},
		{"other path", "/nope", nil, 404, ""},
		{"relay without upgrade", "/relay", nil, http.StatusUpgradeRequired, "Upgrade: edgewire-relay"},
		{"protocol version 1", "/relay", upgrade(versionHeader, "1"), 400, `unsupported protocol version "1", this relay speaks 2`},
		{"no protocol version", "/relay", map[string]string{"Upgrade": upgradeProto, "Connection": "Upgrade"}, 400, `unsupported protocol version ""`},
		{"malformed client header", "/relay", upgrade(versionHeader, "2", clientHeader, "AAAA"), 400, "malformed"},
		{"low-order client key", "/relay", upgrade(versionHeader, "2", clientHeader, base64.StdEncoding.EncodeToString(make([]byte, 64))), 400, "bad node key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", base+tt.path, nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode || !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
		})
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestClientRefusesOtherVersion(t *testing.T) {
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	srv := newKey().Public()
	writeFrame(bw, frameServerKey, []byte(serverMagic), []byte{1}, srv[:], make([]byte, nonceLen)) // a version 1 frame
	bw.Flush()
	_, _, err := readServerKey(bufio.NewReader(&b), srv)
	if err == nil || !strings.Contains(err.Error(), "protocol version 1") {
		t.Fatalf("got %v, want a version refusal", err)
	}
}

func TestBadFrameClosesOnlyThatConnection(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	c1, c2 := e.startPair(t, r)
	tests := []struct {
		name string
		send func(t *testing.T, rc *rawConn, self Key)
	}{
		{"unknown type", func(t *testing.T, rc *rawConn, _ Key) { rc.send(t, frameType(0x7f), []byte("hi")) }},
		{"oversize length", func(t *testing.T, rc *rawConn, _ Key) {
			rc.nc.Write(frameBytes(frameSendPacket, maxFramePayload+1, nil))
		}},
		{"oversize revocation list", func(t *testing.T, rc *rawConn, _ Key) {
			rc.nc.Write(frameBytes(frameRevocations, uint32(maxRevocationsLen+1), nil))
		}},
		{"short send packet", func(t *testing.T, rc *rawConn, _ Key) { rc.send(t, frameSendPacket, make([]byte, 31)) }},
		{"ping of 7 bytes", func(t *testing.T, rc *rawConn, _ Key) { rc.send(t, framePing, make([]byte, 7)) }},
		{"packet to self", func(t *testing.T, rc *rawConn, self Key) { rc.send(t, frameSendPacket, self[:], []byte("me")) }},
		{"mesh frame from a node", func(t *testing.T, rc *rawConn, _ Key) { rc.send(t, frameForwardPacket, make([]byte, 70)) }},
		{"server frame from a node", func(t *testing.T, rc *rawConn, _ Key) { rc.send(t, frameServerKey, make([]byte, serverKeyLen)) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKey()
			rc := dialNode(t, r, k)
			if err := rc.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
				t.Fatal(err)
			}
			tt.send(t, rc, k.Public())
			rc.waitClosed(t)
			if got := r.s.Stats().Drops["bad_frame"]; got != uint64(i+1) {
				t.Errorf("bad_frame: got %d, want %d", got, i+1)
			}
			msg := []byte(fmt.Sprintf("still fine %d", i))
			c1.c.Send(c2.pub, msg)
			expectPacket(t, c2, c1.pub, msg)
			c2.c.Send(c1.pub, msg)
			expectPacket(t, c1, c2.pub, msg)
		})
	}
	if !c1.c.Connected() || !c2.c.Connected() {
		t.Error("a bystander client lost its connection")
	}
}

func TestSecondConnectionReplacesFirst(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k := newKey()
	first, second := dialNode(t, r, k), dialNode(t, r, k)
	if err := first.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := second.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	first.waitClosed(t)
	second.send(t, framePing, []byte("12345678"))
	typ, p, err := readFrame(second.br, nil, maxFramePayload)
	if err != nil || typ != framePong || string(p) != "12345678" {
		t.Fatalf("second connection: got %#x %q %v, want a pong echoing the ping", byte(typ), p, err)
	}
	if got := r.s.Stats().Clients; got != 1 {
		t.Errorf("clients: got %d, want 1", got)
	}
}

// A node's connections count in the order their handshakes finished, not
// the order they reach the registry: the older one, late, is turned away
// instead of replacing the newer.
func TestStaleConnectionRefused(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k := Key(newKey().Public())
	conn := func(seq uint64) *sconn {
		return &sconn{s: r.s, key: k, seq: seq, log: slog.New(slog.DiscardHandler), done: make(chan struct{})}
	}
	newer, older := conn(2), conn(1)
	if !r.s.addClient(newer) {
		t.Fatal("the newer connection was refused")
	}
	if r.s.addClient(older) {
		t.Error("the older connection replaced the newer")
	}
	r.s.removeClient(older) // as its serveConn would not: it never registered
	if got := r.s.Stats().Clients; got != 1 {
		t.Errorf("clients: got %d, want 1 (the newer)", got)
	}
	r.s.removeClient(newer)
}

func TestRateLimitDrops(t *testing.T) {
	e := newEnv(t) // the fake clock stands still: no refill
	r := e.startRelay(ServerConfig{RateBytes: 1, RateBurst: 64 << 10}, "")
	c1, c2 := e.startPair(t, r)
	const n, size = 100, 1400
	allowed := (64 << 10) / size
	for i := 0; i < n; i++ {
		if err := c1.c.Send(c2.pub, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "all packets at the relay", func() bool { return r.s.Stats().PacketsIn == n })
	if got := r.s.Stats().Drops["rate_limited"]; got != uint64(n-allowed) {
		t.Errorf("rate_limited: got %d, want %d", got, n-allowed)
	}
	eventually(t, 5*time.Second, "allowed packets delivered", func() bool { return len(c2.got) == allowed })
}

func TestNoRateLimit(t *testing.T) {
	e := newEnv(t) // the fake clock stands still: a limiter would allow one burst only
	inf, err := RateFromMbit(0)
	if err != nil {
		t.Fatal(err)
	}
	r := e.startRelay(ServerConfig{RateBytes: inf, RateBurst: 64 << 10}, "")
	c1, c2 := e.startPair(t, r)
	const n, size = 200, 1400 // 4x the burst
	for i := 0; i < n; i++ {
		if err := c1.c.Send(c2.pub, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 { // stay under the client queue's bound
			eventually(t, 5*time.Second, "packets at the relay", func() bool { return r.s.Stats().PacketsIn == uint64(i+1) })
		}
	}
	eventually(t, 5*time.Second, "all packets delivered", func() bool { return len(c2.got) == n })
	if got := r.s.Stats().Drops["rate_limited"]; got != 0 {
		t.Errorf("rate_limited: got %d, want 0", got)
	}
}

func TestRateFromMbit(t *testing.T) {
	tests := []struct {
		mbit    float64
		want    float64
		wantErr bool
	}{
		{0, math.Inf(1), false},
		{400, 50e6, false},
		{1, 125e3, false},
		{0.1, 12500, false},
		{0.07, 0, true}, // below one max-size packet per second
		{-1, 0, true},
		{math.NaN(), 0, true},
		{math.Inf(1), 0, true},
	}
	for _, tt := range tests {
		got, err := RateFromMbit(tt.mbit)
		if (err != nil) != tt.wantErr || (err == nil && got != tt.want) {
			t.Errorf("RateFromMbit(%v) = %v, %v; want %v (error %v)", tt.mbit, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestServerQueueFullDrops(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{QueueLen: 2}, "")
	dst := newKey()
	// A node that never reads: its socket buffers fill, then its queue.
	slow := dialNode(t, r, dst)
	if err := slow.handshake(r, e.ticket(dst.Public(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	k := newKey()
	c := e.startClient(r, k, e.ticket(k.Public(), time.Hour))
	waitConnected(t, c)
	pkt := make([]byte, maxPacketSize)
	d := dst.Public()
	eventually(t, 10*time.Second, "queue_full drops", func() bool {
		for i := 0; i < 64; i++ {
			c.c.Send(d, pkt)
		}
		return r.s.Stats().Drops["queue_full"] > 0
	})
}

func TestTicketExpiryAndRenewal(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	kOld, kNew := newKey(), newKey()
	stale := e.startClient(r, kOld, e.ticket(kOld.Public(), time.Minute))
	renewed := e.startClient(r, kNew, e.ticket(kNew.Public(), time.Minute))
	waitConnected(t, stale, renewed)
	conn := renewed.c.cur.Load()
	renewed.c.SetTicket(e.ticket(kNew.Public(), time.Hour))
	// The relay handles frames in order: once the ping returns, the
	// renewed ticket is in.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := renewed.c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute + time.Second)
	eventually(t, 5*time.Second, "the expired client to be dropped", func() bool {
		return errors.Is(stale.c.LastError(), ErrTicketExpired) || strings.Contains(fmt.Sprint(stale.c.LastError()), "expired")
	})
	time.Sleep(100 * time.Millisecond) // several sweeps
	if renewed.c.cur.Load() != conn {
		t.Error("the renewed client's connection was dropped")
	}
	if got := r.s.Stats().Clients; got != 1 {
		t.Errorf("clients: got %d, want 1", got)
	}
	// A fresh ticket lets the stale client back in.
	stale.c.SetTicket(e.ticket(kOld.Public(), time.Hour))
	waitConnected(t, stale)
}

func TestRevoke(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k := newKey()
	c := e.startClient(r, k, e.ticket(k.Public(), time.Hour))
	waitConnected(t, c)
	conn := c.c.cur.Load()
	r.s.Revoke(c.pub, e.clock.Now().Add(time.Hour))
	eventually(t, time.Second, "the connection to drop at once", func() bool { return c.c.cur.Load() != conn })
	eventually(t, 5*time.Second, "reconnects to be refused", func() bool {
		return strings.Contains(fmt.Sprint(c.c.LastError()), "revoked")
	})
	if c.c.Connected() {
		t.Fatal("revoked client reconnected")
	}
	e.clock.Advance(time.Hour)
	c.c.SetTicket(e.ticket(k.Public(), time.Hour))
	waitConnected(t, c)
}

func TestNewServerValidates(t *testing.T) {
	pub, _ := testTicketKey(1)
	good := ServerConfig{PrivateKey: key.Private{1}, TicketKey: pub}
	tests := []struct {
		name string
		mod  func(*ServerConfig)
		want string
	}{
		{"ok", func(*ServerConfig) {}, ""},
		{"no private key", func(c *ServerConfig) { c.PrivateKey = key.Private{} }, "PrivateKey"},
		{"no ticket key", func(c *ServerConfig) { c.TicketKey = nil }, "TicketKey"},
		{"short mesh key", func(c *ServerConfig) { c.MeshKey = make([]byte, 16) }, "MeshKey"},
		{"peers without mesh key", func(c *ServerConfig) { c.MeshPeers = []MeshPeer{{URL: "http://x/relay", Key: Key{2}}} }, "MeshKey"},
		{"bad peer URL", func(c *ServerConfig) {
			c.MeshKey = make([]byte, 32)
			c.MeshPeers = []MeshPeer{{URL: "ftp://x", Key: Key{2}}}
		}, "scheme"},
		{"burst below a packet", func(c *ServerConfig) { c.RateBurst = 1000 }, "RateBurst"},
		{"keepalive too short", func(c *ServerConfig) { c.KeepAlive = time.Millisecond }, "KeepAlive"},
		{"negative queue", func(c *ServerConfig) { c.QueueLen = -1 }, "QueueLen"},
		{"queue bytes below a packet", func(c *ServerConfig) { c.QueueBytes = 9000 }, "QueueBytes"},
		{"budget below a queue", func(c *ServerConfig) { c.QueueBytes = 1 << 20; c.QueueBudget = 1 << 19 }, "QueueBudget"},
		{"budget default follows a big queue", func(c *ServerConfig) { c.QueueBytes = 128 << 20 }, ""},
		{"negative pending", func(c *ServerConfig) { c.MaxPendingHandshakes = -1 }, "MaxPendingHandshakes"},
		{"negative pending per IP", func(c *ServerConfig) { c.MaxPendingPerIP = -1 }, "MaxPendingPerIP"},
		{"negative conns per IP", func(c *ServerConfig) { c.MaxConnsPerIP = -1 }, "MaxConnsPerIP"},
		{"negative rate", func(c *ServerConfig) { c.RateBytes = -1 }, "RateBytes"},
		{"NaN rate", func(c *ServerConfig) { c.RateBytes = math.NaN() }, "RateBytes"},
		{"no limit", func(c *ServerConfig) { c.RateBytes = math.Inf(1) }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			_, err := NewServer(cfg)
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestTLSAndKeepAlive(t *testing.T) {
	e := newEnv(t)
	s, err := NewServer(ServerConfig{PrivateKey: newKey(), TicketKey: e.tpub, Now: e.clock.Now, KeepAlive: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewTLSServer(s)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error)
	go func() { runDone <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
		hs.Close()
	}()
	r := &testRelay{s: s, addr: hs.Listener.Addr().String(), url: "https://" + hs.Listener.Addr().String() + "/relay"}
	c1, c2 := e.startPair(t, r)
	c1.c.Send(c2.pub, []byte("over tls"))
	expectPacket(t, c2, c1.pub, []byte("over tls"))
	// Batch frames spanning TLS records arrive whole and in order.
	pkts := testPackets(300)
	if err := c1.c.SendBatch(c2.pub, pkts); err != nil {
		t.Fatal(err)
	}
	for i, r := range recvAll(t, c2, len(pkts)) {
		if !bytes.Equal(r.data, pkts[i]) {
			t.Fatalf("packet %d over tls: got %d bytes, want %d", i, len(r.data), len(pkts[i]))
		}
	}

	// An idle connection gets keepalives.
	k := newKey()
	rc := dialNode(t, r, k)
	if err := rc.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	rc.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	typ, p, err := readFrame(rc.br, nil, maxFramePayload)
	if err != nil || typ != frameKeepAlive || len(p) != 0 {
		t.Fatalf("idle connection: got %#x (%d bytes) %v, want an empty keepalive", byte(typ), len(p), err)
	}
	c1.stop()
	c2.stop()
}

// TestClientBatchAndFlush sends a batch through the relay to a client with
// OnFlush: the packets arrive whole and in order, and OnFlush follows the
// last of them (a receiver that holds packets until OnFlush gets them all).
func TestClientBatchAndFlush(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	k1, k2 := newKey(), newKey()
	sender := e.startClient(r, k1, e.ticket(k1.Public(), time.Hour))
	var mu sync.Mutex
	var got [][]byte
	flushedAt := -1 // packets received at the last OnFlush
	rc, err := NewClient(ClientConfig{
		URL: r.url, ServerKey: r.s.PublicKey(), PrivateKey: k2, Ticket: e.ticket(k2.Public(), time.Hour),
		OnPacket: func(_ Key, p []byte) {
			mu.Lock()
			got = append(got, bytes.Clone(p))
			mu.Unlock()
		},
		OnFlush: func() {
			mu.Lock()
			flushedAt = len(got)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { rc.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	waitConnected(t, sender)
	eventually(t, 10*time.Second, "receiver to connect", rc.Connected)
	eventually(t, 10*time.Second, "both clients at the relay", func() bool { return r.s.Stats().Clients == 2 })

	var batch [][]byte
	for i := range 100 {
		batch = append(batch, bytes.Repeat([]byte{byte(i)}, 100+i*13))
	}
	batch = append(batch, make([]byte, maxPacketSize+1)) // too large: skipped, reported
	if err := sender.c.SendBatch(k2.Public(), batch); !errors.Is(err, ErrPacketTooLarge) {
		t.Errorf("SendBatch with an oversize packet: got %v, want ErrPacketTooLarge", err)
	}
	batch = batch[:100]
	eventually(t, 10*time.Second, "the batch and a flush after it", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return flushedAt == len(batch)
	})
	mu.Lock()
	defer mu.Unlock()
	for i, p := range got {
		if !bytes.Equal(p, batch[i]) {
			t.Fatalf("packet %d: got %d bytes of %d, want %d bytes of %d", i, len(p), p[0], len(batch[i]), i)
		}
	}
}
