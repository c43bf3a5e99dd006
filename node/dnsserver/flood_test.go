package dnsserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestForwardFlood is the attack of issue 12: a flood of names that must
// be forwarded, to an upstream that never answers. 20,000 queries from 8
// loopback sources over about 4 s. The server must hold its file
// descriptors and heap within fixed bounds while a quiet client keeps
// getting local answers.
func TestForwardFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods for about 5 s")
	}
	const (
		sources   = 8
		perSource = 2500
		floodFor  = 4 * time.Second
		// Bounds: the pooled upstream sockets (retiring ones included)
		// and the TCP fallbacks, plus slack for the runtime; the heap
		// holds at most the in-flight forwards and the rate limiter's
		// table. Measured: +4 fds, +3.5 MiB (before the bounds: +10,025
		// fds, +82 MiB).
		maxExtraFDs   = udpSocketsPerUpstream + maxRetiring + maxTCPForwards + 8
		maxHeapGrowth = 16 << 20
	)
	black := deadUpstream(t)
	pc, ln := freePort(t)
	listen := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	ln.Close()
	s, err := New(Config{Listen: listen, Upstreams: []netip.AddrPort{black}})
	if err != nil {
		t.Fatal(err)
	}
	s.SetServices(testTable(t))
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-runErr:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	quiet, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 100)})
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	// ask is a stub resolver's query: up to 3 tries, 300 ms each.
	ask := func(id uint16) (int, error) {
		q := query("web.default.svc.cluster.local.", dns.TypeA)
		q.Id = id
		b, _ := q.Pack()
		buf := make([]byte, 1500)
		var err error
		for range 3 {
			quiet.SetDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err = quiet.WriteToUDPAddrPort(b, listen); err != nil {
				return 0, err
			}
			for range 10 {
				var n int
				if n, err = quiet.Read(buf); err != nil {
					break
				}
				var m dns.Msg
				if m.Unpack(buf[:n]) == nil && m.Id == id {
					return m.Rcode, nil
				}
			}
		}
		return 0, fmt.Errorf("no reply with id %d: %v", id, err)
	}
	var up bool // once the server answers
	for i := range 50 {
		if _, err := ask(uint16(i)); err == nil {
			up = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !up {
		t.Fatal("server not answering")
	}

	var socks []*net.UDPConn
	for i := range sources {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		socks = append(socks, c)
	}
	runtime.GC()
	baseFDs, baseHeap := openFDs(t), heapInuse()

	var replies, servfail, refused atomic.Int64
	var wg sync.WaitGroup
	stopRead := make(chan struct{})
	for _, c := range socks {
		wg.Go(func() { // drains replies until stopRead
			buf := make([]byte, 1500)
			for {
				select {
				case <-stopRead:
					return
				default:
				}
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				n, err := c.Read(buf)
				if err != nil {
					continue
				}
				replies.Add(1)
				var m dns.Msg
				if m.Unpack(buf[:n]) == nil {
					switch m.Rcode {
					case dns.RcodeServerFailure:
						servfail.Add(1)
					case dns.RcodeRefused:
						refused.Add(1)
					}
				}
			}
		})
	}
	var maxFDs int
	var maxHeap uint64
	var sampleMu sync.Mutex // guards maxFDs, maxHeap
	sample := func() {
		f, h := openFDs(t), heapInuse()
		sampleMu.Lock()
		maxFDs, maxHeap = max(maxFDs, f), max(maxHeap, h)
		sampleMu.Unlock()
	}
	stopSample := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSample:
				return
			case <-tick.C:
				sample()
			}
		}
	})

	start := time.Now()
	var senders sync.WaitGroup
	for i, c := range socks {
		senders.Go(func() {
			interval := floodFor / perSource
			next := time.Now()
			for j := range perSource {
				q := query(fmt.Sprintf("q%d-%d.flood.example.", i, j), dns.TypeA)
				q.Id = uint16(j)
				b, _ := q.Pack()
				c.WriteToUDPAddrPort(b, listen)
				if next = next.Add(interval); time.Until(next) > 0 {
					time.Sleep(time.Until(next))
				}
			}
		})
	}
	// The quiet client asks a local name every 50 ms during the flood.
	var asked, answered int
	for id := uint16(1000); time.Since(start) < floodFor; id++ {
		asked++
		if rc, err := ask(id); err == nil && rc == dns.RcodeSuccess {
			answered++
		}
		time.Sleep(50 * time.Millisecond)
	}
	senders.Wait()
	sendTime := time.Since(start)
	// Let in-flight forwards time out (2 s each) while sampling.
	time.Sleep(2500 * time.Millisecond)
	close(stopSample)
	sampler.Wait()
	close(stopRead)
	wg.Wait()

	st := s.Stats()
	t.Logf("%d queries in %v from %d sources: %d replies (%d SERVFAIL, %d REFUSED); open fds %d -> max %d; heap in use %.1f -> max %.1f MiB; quiet client %d/%d answered; stats %+v",
		sources*perSource, sendTime.Round(time.Millisecond), sources, replies.Load(), servfail.Load(), refused.Load(),
		baseFDs, maxFDs, float64(baseHeap)/(1<<20), float64(maxHeap)/(1<<20), answered, asked, st)
	if maxFDs > baseFDs+maxExtraFDs {
		t.Errorf("open fds: got max %d, want at most %d (%d + %d)", maxFDs, baseFDs+maxExtraFDs, baseFDs, maxExtraFDs)
	}
	if maxHeap > baseHeap+maxHeapGrowth {
		t.Errorf("heap in use: got max %d MiB, want at most %d MiB more than %d MiB", maxHeap>>20, maxHeapGrowth>>20, baseHeap>>20)
	}
	if answered < asked*95/100 {
		t.Errorf("quiet client: %d of %d local queries answered, want at least 95%%", answered, asked)
	}
}
