package relay

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// fakeClock is the injected clock of test relays.
type fakeClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a coordinator's ticket key and a shared clock.
type env struct {
	t     testing.TB
	clock *fakeClock
	tpub  ed25519.PublicKey
	tpriv ed25519.PrivateKey
}

func newEnv(t testing.TB) *env {
	pub, priv := testTicketKey(1)
	return &env{t: t, clock: &fakeClock{t: time.Unix(1_800_000_000, 0)}, tpub: pub, tpriv: priv}
}

func newKey() key.Private { return key.Private(newNonce(32)) }

func (e *env) ticket(node Key, ttl time.Duration) []byte {
	return SignTicket(e.tpriv, Ticket{Node: node, Expires: e.clock.Now().Add(ttl)})
}

type testRelay struct {
	s    *Server
	addr string
	url  string
	stop func()
}

// startRelay serves a relay on addr ("": any loopback port) until stop or
// the end of the test.
func (e *env) startRelay(cfg ServerConfig, addr string) *testRelay {
	e.t.Helper()
	return e.startRelayWith(cfg, addr, nil)
}

// startRelayWith is startRelay with a change to the server (if not nil)
// before it serves.
func (e *env) startRelayWith(cfg ServerConfig, addr string, change func(*Server)) *testRelay {
	e.t.Helper()
	if cfg.PrivateKey == (key.Private{}) {
		cfg.PrivateKey = newKey()
	}
	if cfg.TicketKey == nil {
		cfg.TicketKey = e.tpub
	}
	if cfg.Now == nil {
		cfg.Now = e.clock.Now
	}
	s, err := NewServer(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	s.sweepEvery = 20 * time.Millisecond
	if change != nil {
		change(s)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	for i := 0; ; i++ { // a restarted relay may wait for its old port
		if ln, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return e.serveRelay(s, ln)
}

func (e *env) serveRelay(s *Server, ln net.Listener) *testRelay {
	hs := &http.Server{Handler: s}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { hs.Serve(ln) })
	wg.Go(func() {
		if err := s.Run(ctx); err != nil {
			e.t.Errorf("Run: %v", err)
		}
	})
	var once sync.Once
	r := &testRelay{s: s, addr: ln.Addr().String(), url: "http://" + ln.Addr().String() + "/relay"}
	r.stop = func() {
		once.Do(func() {
			cancel()
			hs.Close()
			wg.Wait()
		})
	}
	e.t.Cleanup(r.stop)
	return r
}

type received struct {
	src  Key
	data []byte
}

type testClient struct {
	c    *Client
	priv key.Private
	pub  Key
	got  chan received
	stop func()
}

// startClient runs a client of r until stop or the end of the test.
func (e *env) startClient(r *testRelay, priv key.Private, ticket []byte) *testClient {
	e.t.Helper()
	return e.startClientWith(r, priv, ticket, nil)
}

// startClientWith is startClient with a change to the client (if not
// nil) before it runs.
func (e *env) startClientWith(r *testRelay, priv key.Private, ticket []byte, change func(*Client)) *testClient {
	e.t.Helper()
	tc := &testClient{priv: priv, pub: priv.Public(), got: make(chan received, 4096)}
	c, err := NewClient(ClientConfig{
		URL:        r.url,
		ServerKey:  r.s.PublicKey(),
		PrivateKey: priv,
		Ticket:     ticket,
		OnPacket: func(src Key, pkt []byte) {
			select {
			case tc.got <- received{src, append([]byte(nil), pkt...)}:
			default:
			}
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if change != nil {
		change(c)
	}
	tc.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			e.t.Errorf("client Run: %v", err)
		}
	}()
	var once sync.Once
	tc.stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(tc.stop)
	return tc
}

// eventually polls cond for up to d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startPair connects two clients with fresh keys and hour-long tickets to r.
func (e *env) startPair(t testing.TB, r *testRelay) (c1, c2 *testClient) {
	t.Helper()
	k1, k2 := newKey(), newKey()
	c1 = e.startClient(r, k1, e.ticket(k1.Public(), time.Hour))
	c2 = e.startClient(r, k2, e.ticket(k2.Public(), time.Hour))
	waitConnected(t, c1, c2)
	return c1, c2
}

func waitConnected(t testing.TB, cs ...*testClient) {
	t.Helper()
	for _, c := range cs {
		eventually(t, 10*time.Second, "client to connect", c.c.Connected)
	}
}

// expectPacket waits for one packet on to.
func expectPacket(t testing.TB, to *testClient, src Key, data []byte) {
	t.Helper()
	select {
	case r := <-to.got:
		if r.src != src || string(r.data) != string(data) {
			t.Fatalf("got %d bytes from %x, want %d bytes from %x (intact)", len(r.data), r.src[:4], len(data), src[:4])
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no packet from %x within 5s", src[:4])
	}
}

// sendUntilDelivered resends until the first packet arrives (routes over
// the mesh take a moment to appear), then drains stragglers.
func sendUntilDelivered(t testing.TB, from, to *testClient, data []byte) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		from.c.Send(to.pub, data)
		select {
		case r := <-to.got:
			if r.src != from.pub || string(r.data) != string(data) {
				t.Fatalf("got %q from %x, want %q from %x", r.data, r.src[:4], data, from.pub[:4])
			}
			time.Sleep(50 * time.Millisecond)
			for len(to.got) > 0 {
				<-to.got
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("packet %q from %x never reached %x", data, from.pub[:4], to.pub[:4])
		}
	}
}

// rawConn is a hand-driven relay connection for protocol tests.
type rawConn struct {
	nc    net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	priv  key.Private  // node key (dialNode)
	hello *clientHello // sent in the Upgrade request (dialNode)
}

// dialRaw upgrades a connection to r without a client header, as mesh
// relays do.
func dialRaw(t testing.TB, r *testRelay) *rawConn { return dialHello(t, r, nil) }

// dialNode upgrades a connection to r as node priv, announcing it in the
// client header; rc.handshake completes it.
func dialNode(t testing.TB, r *testRelay, priv key.Private) *rawConn {
	rc := dialHello(t, r, newClientHello(priv.Public()))
	rc.priv = priv
	return rc
}

func dialHello(t testing.TB, r *testRelay, hello *clientHello) *rawConn {
	t.Helper()
	u, err := parseRelayURL(r.url)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, br, _, err := dialUpgrade(ctx, nil, u, nil, hello)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{nc: nc, br: br, bw: bufio.NewWriter(nc), hello: hello}
}

// handshake authenticates rc (from dialNode) with ticket.
func (rc *rawConn) handshake(r *testRelay, ticket []byte) error {
	_, err := clientHandshake(rc.br, rc.bw, r.s.PublicKey(), rc.priv, rc.hello, ticket)
	return err
}

func (rc *rawConn) send(t testing.TB, typ frameType, parts ...[]byte) {
	t.Helper()
	if err := writeFrame(rc.bw, typ, parts...); err != nil {
		t.Fatal(err)
	}
	if err := rc.bw.Flush(); err != nil {
		t.Fatal(err)
	}
}

// waitClosed reads until the relay closes rc; it fails on a timeout.
func (rc *rawConn) waitClosed(t testing.TB) {
	t.Helper()
	rc.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := readFrame(rc.br, nil, maxRevocationsLen)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("relay did not close the connection")
		}
		return
	}
}

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
