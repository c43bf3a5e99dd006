package relay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// heapAfterGC is the live heap once garbage (and sync.Pool's two
// generations) is gone.
func heapAfterGC() uint64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// smallBufListener gives accepted connections small kernel send buffers,
// so a relay's queues fill after little data instead of megabytes of
// loopback socket buffers.
type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

// Per-connection memory outside the budget, from the constants that
// size it. A relay connection past the handshake: the 64 KiB reader and
// writer, a batch in the writer's hands (maxBatchCost plus one item, at
// most a batch frame),
// the read buffer, a full ring, and slack for structs, the limiter and
// what net/http leaves behind. The test's side of a raw connection: its
// 64 KiB reader and 4 KiB writer.
const (
	relayConnMem = 64<<10 + 64<<10 + maxBatchCost + maxBatchPayload + maxFramePayload + DefaultQueueLen*int(unsafe.Sizeof(item{})) + 16<<10
	rawConnMem   = 64<<10 + 4<<10 + 4<<10
)

// TestStalledReceiversStayWithinBudget is the attack of issue 12: ticket
// holders that stop reading while others send them maximum-size packets.
// Before the byte bounds, 4 of them grew a relay by ~380 MB in seconds.
// Now the queued bytes never exceed the budget, no queue exceeds its own
// bound, and the heap stays under the budget plus a fixed cost per
// connection.
func TestStalledReceiversStayWithinBudget(t *testing.T) {
	const (
		stalled    = 64
		senders    = 4
		budget     = 8 << 20
		queueBytes = 1 << 20
		perDst     = 64 // packets sent to each stalled receiver by each sender
	)
	e := newEnv(t)
	s, err := NewServer(ServerConfig{PrivateKey: newKey(), TicketKey: e.tpub, Now: e.clock.Now,
		RateBytes: math.Inf(1), QueueBytes: queueBytes, QueueBudget: budget})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenLoopback()
	if err != nil {
		t.Fatal(err)
	}
	r := e.serveRelay(s, smallBufListener{ln})
	base := heapAfterGC()

	var dsts []Key
	for range stalled {
		k := newKey()
		rc := dialNode(t, r, k)
		if err := rc.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
			t.Fatal(err)
		}
		rc.nc.(*net.TCPConn).SetReadBuffer(4 << 10)
		rc.nc.SetDeadline(time.Time{})
		dsts = append(dsts, k.Public()) // and never read again
	}
	var maxQueued atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			if q := s.Stats().QueuedBytes; q > maxQueued.Load() {
				maxQueued.Store(q)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	})
	pkt := make([]byte, maxPacketSize)
	var wg sync.WaitGroup
	for range senders {
		k := newKey()
		rc := dialNode(t, r, k)
		if err := rc.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
			t.Fatal(err)
		}
		rc.nc.SetDeadline(time.Now().Add(60 * time.Second))
		wg.Go(func() {
			for range perDst {
				for _, d := range dsts {
					if err := writeFrame(rc.bw, frameSendPacket, d[:], pkt); err != nil {
						t.Error(err)
						return
					}
				}
			}
			if err := rc.bw.Flush(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	want := uint64(senders * perDst * stalled)
	eventually(t, 30*time.Second, "every packet at the relay", func() bool { return s.Stats().PacketsIn == want })
	close(stop)
	sampler.Wait()

	st := s.Stats()
	if got := maxQueued.Load(); got > budget || st.QueuedBytes > budget {
		t.Errorf("queued bytes: peak %d, now %d; want at most the budget %d", got, st.QueuedBytes, budget)
	}
	if st.QueuedBytes < budget/2 || st.Drops["over_budget"] == 0 {
		t.Errorf("queued %d bytes with %d over_budget drops; want the attack to reach the budget %d", st.QueuedBytes, st.Drops["over_budget"], budget)
	}
	s.mu.RLock()
	for _, c := range s.clients {
		c.q.mu.Lock()
		if c.q.bytes > queueBytes {
			t.Errorf("a queue holds %d bytes, bound %d", c.q.bytes, queueBytes)
		}
		c.q.mu.Unlock()
	}
	s.mu.RUnlock()
	heap := heapAfterGC()
	bound := base + budget + uint64((stalled+senders)*(relayConnMem+rawConnMem))
	t.Logf("heap: %.1f MiB before, %.1f MiB under attack; bound %.1f MiB; drops %v", mib(base), mib(heap), mib(bound), st.Drops)
	if heap > bound {
		t.Errorf("heap under attack: got %.1f MiB, want at most %.1f MiB", mib(heap), mib(bound))
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// TestBudgetEvictsFullest: when the budget is spent, the fullest queue
// pays, not the one that drains.
func TestBudgetEvictsFullest(t *testing.T) {
	b := newBudget(40 * pktBufSize)
	full := newQueue(queueConfig{pkts: 1024, bytes: 1 << 20, ctrl: 1}, b)
	light := newQueue(queueConfig{pkts: 1024, bytes: 1 << 20, ctrl: 1}, b)
	for i := range 36 {
		full.pushPacket(testPkt(byte(i), 100))
	}
	for i := range 4 {
		light.pushPacket(testPkt(byte(i), 100))
	}
	if got := b.used.Load(); got != b.limit {
		t.Fatalf("used %d, want the limit %d", got, b.limit)
	}
	for i := range 10 {
		if _, refused := light.pushPacket(testPkt(byte(100+i), 100)); refused {
			t.Fatalf("push %d to the light queue refused", i)
		}
	}
	if full.n != 26 || light.n != 14 {
		t.Errorf("queues hold %d and %d packets, want 26 (10 evicted) and 14", full.n, light.n)
	}
	if got := b.used.Load(); got > b.limit {
		t.Errorf("used %d, over the limit %d", got, b.limit)
	}
	if got := b.evicted.Load(); got != 10 {
		t.Errorf("evicted: got %d, want 10", got)
	}
	// The oldest of the full queue went first.
	got := drainAll(full)
	if got[0].pkt[32] != 10 {
		t.Errorf("full queue's oldest left: got %d, want 10", got[0].pkt[32])
	}
	full.close()
	light.close()
	if u := b.used.Load(); u != 0 {
		t.Errorf("closed queues leave %d bytes in the budget", u)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for c, h := range b.heads {
		if h != nil {
			t.Errorf("class %d still lists a closed queue", c)
		}
	}
}

// TestBudgetConcurrent: many queues pushing and draining at once never
// take the budget past its limit, and leave it at zero when closed.
func TestBudgetConcurrent(t *testing.T) {
	b := newBudget(256 << 10)
	var qs []*queue
	for range 16 {
		qs = append(qs, newQueue(queueConfig{pkts: 256, bytes: 128 << 10, ctrl: 1}, b))
	}
	var over atomic.Bool
	var wg sync.WaitGroup
	for i, q := range qs {
		wg.Go(func() {
			for j := range 2000 {
				q.pushPacket(testPkt(byte(j), 100+(j*37)%maxPacketSize))
				if b.used.Load() > b.limit {
					over.Store(true)
				}
				if i%2 == 0 && j%8 == 0 { // half the queues drain
					for _, it := range q.drain(nil) {
						it.release()
					}
				}
			}
		})
	}
	wg.Wait()
	if over.Load() {
		t.Error("used exceeded the limit")
	}
	for _, q := range qs {
		q.close()
	}
	if u := b.used.Load(); u != 0 {
		t.Errorf("closed queues leave %d bytes in the budget", u)
	}
}

// TestTooLargePacketDropped: a packet bigger than any WireGuard message
// is dropped, counted, and costs the sender nothing else.
func TestTooLargePacketDropped(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{}, "")
	_, c2 := e.startPair(t, r)
	k := newKey()
	rc := dialNode(t, r, k)
	if err := rc.handshake(r, e.ticket(k.Public(), time.Hour)); err != nil {
		t.Fatal(err)
	}
	rc.send(t, frameSendPacket, c2.pub[:], make([]byte, maxPacketSize+1))
	rc.send(t, frameSendPacket, c2.pub[:], []byte("fits"))
	expectPacket(t, c2, k.Public(), []byte("fits"))
	if got := r.s.Stats().Drops["too_large"]; got != 1 {
		t.Errorf("too_large: got %d, want 1", got)
	}
	if err := c2.c.Send(k.Public(), make([]byte, maxPacketSize+1)); !errors.Is(err, ErrPacketTooLarge) {
		t.Errorf("Client.Send of %d bytes: got %v, want ErrPacketTooLarge", maxPacketSize+1, err)
	}
}

// pendingUpgrade opens a connection from src that sends an Upgrade
// request and then nothing; it returns the status and the connection
// (nil unless 101).
func pendingUpgrade(t *testing.T, r *testRelay, src string, hello bool) (int, net.Conn) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /relay HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProto + "\r\n" + versionHeader + ": 2\r\n"
	if hello {
		req += clientHeader + ": " + newClientHello(newKey().Public()).header() + "\r\n"
	}
	if _, err := io.WriteString(nc, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(nc, 512), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return resp.StatusCode, nil
	}
	t.Cleanup(func() { nc.Close() })
	return resp.StatusCode, nc
}

// pendingConnMem is what one connection in the handshake may hold on a
// relay: net/http's 4 KiB reader, the 4 KiB writer Hijack makes, our
// 512-byte writer, and slack for the request, the conn structs and the
// handshake's few small frames.
const pendingConnMem = 4<<10 + 4<<10 + 512 + 12<<10

// TestPendingHandshakesBounded: unauthenticated connections are bounded
// per source address and in all, and each is cheap.
func TestPendingHandshakesBounded(t *testing.T) {
	const (
		maxPending = 300
		perIP      = 40
		attempts   = 1000
	)
	e := newEnv(t)
	r := e.startRelay(ServerConfig{MaxPendingHandshakes: maxPending, MaxPendingPerIP: perIP}, "")
	base := heapAfterGC()

	// One address: perIP get in, the rest get 429.
	codes := map[int]int{}
	for range perIP + 10 {
		code, _ := pendingUpgrade(t, r, "127.0.0.1", true)
		codes[code]++
	}
	if codes[101] != perIP || codes[429] != 10 {
		t.Fatalf("from one address: got %v, want %d × 101 and 10 × 429", codes, perIP)
	}
	// Many addresses: maxPending get in, the rest get 503.
	clear(codes)
	for i := range attempts - perIP {
		code, _ := pendingUpgrade(t, r, fmt.Sprintf("127.0.1.%d", 1+i/perIP), i%2 == 0)
		codes[code]++
	}
	if got := r.s.Stats().Pending; got != maxPending {
		t.Errorf("pending handshakes: got %d, want %d", got, maxPending)
	}
	if codes[101] != maxPending-perIP || codes[503] != attempts-maxPending {
		t.Errorf("from many addresses: got %v, want %d × 101 and %d × 503", codes, maxPending-perIP, attempts-maxPending)
	}
	heap := heapAfterGC()
	bound := base + maxPending*pendingConnMem
	t.Logf("heap: %.1f MiB before, %.1f MiB with %d pending (%d refused); %.1f KiB each; bound %.1f MiB",
		mib(base), mib(heap), maxPending, attempts-maxPending, float64(heap-base)/maxPending/1024, mib(bound))
	if heap > bound {
		t.Errorf("heap with %d pending handshakes: got %.1f MiB, want at most %.1f MiB", maxPending, mib(heap), mib(bound))
	}
	// Still a relay: a real node gets in once the pending ones give up.
	r.s.mu.RLock()
	for nc := range r.s.conns {
		nc.Close()
	}
	r.s.mu.RUnlock()
	eventually(t, 5*time.Second, "pending handshakes to end", func() bool { return r.s.Stats().Pending == 0 })
	k := newKey()
	c := e.startClient(r, k, e.ticket(k.Public(), time.Hour))
	waitConnected(t, c)
	r.s.limits.mu.Lock()
	if n := len(r.s.limits.byIP); n != 1 {
		t.Errorf("per-address table holds %d entries, want 1 (the node)", n)
	}
	r.s.limits.mu.Unlock()
}

// TestConnsPerIP: one address holds at most MaxConnsPerIP connections.
func TestConnsPerIP(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay(ServerConfig{MaxConnsPerIP: 3}, "")
	var cs []*testClient
	for range 3 {
		k := newKey()
		cs = append(cs, e.startClient(r, k, e.ticket(k.Public(), time.Hour)))
	}
	waitConnected(t, cs...)
	k := newKey()
	over := e.startClient(r, k, e.ticket(k.Public(), time.Hour))
	eventually(t, 5*time.Second, "the fourth to be refused", func() bool {
		return strings.Contains(fmt.Sprint(over.c.LastError()), "429")
	})
	if code, _ := pendingUpgrade(t, r, "127.0.0.2", true); code != 101 {
		t.Errorf("another address: got %d, want 101", code)
	}
	cs[0].stop()
	waitConnected(t, over)
}
