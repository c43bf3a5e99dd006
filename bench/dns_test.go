//go:build bench

package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgewire/edgewire/node/dnsserver"
	"github.com/edgewire/edgewire/types/services"
)

// benchDNS runs the agent's DNS server (node/dnsserver, the code the agent
// runs) in-process on a loopback port with 1,000 Services and drives it
// with a UDP load generator: queries per second and latency percentiles.
func benchDNS(t *testing.T, rep *Report, cfg config) {
	const nsvc = 1000
	var svcs []*services.Service
	var names []string
	for i := range nsvc {
		s := &services.Service{
			Namespace:  fmt.Sprintf("ns-%d", i%20),
			Name:       fmt.Sprintf("svc-%d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})},
			Ports:      []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}},
		}
		for e := range 3 {
			s.Endpoints = append(s.Endpoints, services.Endpoint{
				Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(i % 250), byte(e + 1)})},
				Ports:     map[string]uint16{"http": 8080},
			})
		}
		svcs = append(svcs, s)
		names = append(names, fmt.Sprintf("svc-%d.ns-%d.svc.cluster.local.", i, i%20))
	}
	tbl, err := services.NewTable(svcs)
	if err != nil {
		t.Fatal(err)
	}
	addr := freeLoopbackUDP(t)
	srv, err := dnsserver.New(dnsserver.Config{Listen: addr})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetServices(tbl)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	// Pre-packed queries: the generator only patches the ID, so it costs
	// far less per query than the server does.
	var queries [][]byte
	for _, n := range names {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		m.RecursionDesired = true
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		queries = append(queries, b)
	}
	if err := lookupOnce(addr, queries[0]); err != nil {
		t.Fatalf("dns server on %s not answering: %v", addr, err)
	}

	dur := min(cfg.dur, 10*time.Second)
	const workers = 16
	var qps, p50, p99, genShare []float64
	for r := range cfg.reps {
		cpu0, wall0 := selfCPU(), time.Now()
		res := dnsLoad(addr, queries, workers, dur)
		share := (selfCPU() - cpu0).Seconds() / time.Since(wall0).Seconds()
		if res.errors > 0 || res.n == 0 {
			t.Logf("rep %d: %d answers, %d errors/timeouts", r, res.n, res.errors)
		}
		qps = append(qps, float64(res.n)/dur.Seconds())
		p50 = append(p50, quantile(res.lat, 0.5)*1e3)
		p99 = append(p99, quantile(res.lat, 0.99)*1e3)
		genShare = append(genShare, share)
		rep.SetRaw(fmt.Sprintf("dns/rep%d", r), map[string]any{"answers": res.n, "errors": res.errors, "seconds": dur.Seconds(),
			"p50_ms": p50[r], "p99_ms": p99[r], "process_cores": share})
	}
	sec := "DNS (agent DNS server, 1,000 Services, UDP A queries)"
	rep.Add(&Measure{Section: sec, Name: fmt.Sprintf("queries per second (%d concurrent clients)", workers), Unit: "qps", Edgewire: qps,
		Target: ">= 50,000 qps", Met: met(median(qps) >= 50000)})
	rep.Add(&Measure{Section: sec, Name: "latency p50", Unit: "ms", Edgewire: p50})
	rep.Add(&Measure{Section: sec, Name: "latency p99", Unit: "ms", Edgewire: p99})
	rep.Note("DNS: server and load generator share this process and the machine's %d CPUs (process used %.2f cores of them, median); the generator only patches query IDs and checks the reply ID and RCODE, so most of that is the server and the kernel's loopback UDP path.",
		runtime.NumCPU(), median(genShare))
}

// freeLoopbackUDP returns a loopback address whose UDP and TCP ports were
// free a moment ago.
func freeLoopbackUDP(t *testing.T) netip.AddrPort {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(pc.LocalAddr().String())
		pc.Close()
		if ln, err := net.Listen("tcp4", ap.String()); err == nil {
			ln.Close()
			return ap
		}
	}
	t.Fatal("no free loopback port")
	return netip.AddrPort{}
}

func lookupOnce(addr netip.AddrPort, q []byte) error {
	var err error
	for range 50 {
		var c *net.UDPConn
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		c.Write(q)
		buf := make([]byte, 1500)
		var n int
		n, err = c.Read(buf)
		c.Close()
		if err == nil && n >= 12 && buf[3]&0x0f == dns.RcodeSuccess {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

type dnsResult struct {
	n, errors int
	lat       []float64 // seconds
}

// dnsLoad runs workers closed-loop clients for d, each with its own
// socket and one query in flight.
func dnsLoad(addr netip.AddrPort, queries [][]byte, workers int, d time.Duration) dnsResult {
	var (
		mu  sync.Mutex // guards res
		res dnsResult
		wg  sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	for w := range workers {
		wg.Go(func() {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
			if err != nil {
				mu.Lock()
				res.errors++
				mu.Unlock()
				return
			}
			defer c.Close()
			buf := make([]byte, 1500)
			q := make([]byte, 512)
			var lat []float64
			n, errs := 0, 0
			id := uint16(w << 12)
			for i := w; time.Now().Before(deadline); i++ {
				src := queries[i%len(queries)]
				q = append(q[:0], src...)
				id++
				binary.BigEndian.PutUint16(q, id)
				t0 := time.Now()
				c.SetReadDeadline(t0.Add(time.Second))
				if _, err := c.Write(q); err != nil {
					errs++
					continue
				}
				for {
					m, err := c.Read(buf)
					if err != nil {
						errs++
						break
					}
					if m < 12 || binary.BigEndian.Uint16(buf) != id {
						continue // a late answer to an earlier, timed-out query
					}
					if buf[3]&0x0f != dns.RcodeSuccess {
						errs++
					} else {
						n++
						lat = append(lat, time.Since(t0).Seconds())
					}
					break
				}
			}
			mu.Lock()
			res.n += n
			res.errors += errs
			res.lat = append(res.lat, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return res
}
