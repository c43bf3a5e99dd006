package svcfwd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/internal/leaktest"
	"github.com/edgewire/edgewire/types/services"
)

// The test bed is loopback: 127.0.0.3 is the client's node (Ingress),
// 127.0.0.2 the endpoint's node (Server), 127.0.0.4 the endpoint, which
// answers with its name so a reply shows where it came from.
var (
	clientNode = netip.MustParseAddr("127.0.0.3")
	endNode    = netip.MustParseAddr("127.0.0.2")
	endpointIP = netip.MustParseAddr("127.0.0.4")
)

// freePort returns a TCP and UDP port free on a now.
func freePort(t *testing.T, a netip.Addr) uint16 {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(a, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).AddrPort().Port()
		ln.Close()
		if pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(a, p).String()); err == nil {
			pc.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// endpoint serves TCP (reply "name:" + request, then close on EOF) and
// UDP (reply "name:" + datagram) on a until the test ends.
func endpoint(t *testing.T, a netip.Addr, name string) netip.AddrPort {
	t.Helper()
	port := freePort(t, a)
	ap := netip.AddrPortFrom(a, port)
	ln, err := net.Listen("tcp4", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			c.Write(append([]byte(name+":"), b...))
			c.Close()
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(name+":"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { ln.Close(); pc.Close(); <-done; <-done })
	return ap
}

type bed struct {
	srv     *Server
	in      *Ingress
	allowed atomic.Bool
	local   atomic.Bool
}

func newBed(t *testing.T, idle time.Duration) *bed {
	t.Helper()
	snap := leaktest.Take()
	b := &bed{}
	b.allowed.Store(true)
	b.local.Store(true)
	sport := freePort(t, endNode)
	srv, err := NewServer(ServerConfig{Listen: netip.AddrPortFrom(endNode, sport), IdleTimeout: idle,
		Allow: func(peer netip.Addr, to netip.AddrPort, proto services.Protocol) bool {
			return b.allowed.Load() && peer == clientNode && to.Addr() == endpointIP
		}})
	if err != nil {
		t.Fatal(err)
	}
	first := freePort(t, clientNode)
	in, err := NewIngress(IngressConfig{Listen: clientNode, FirstPort: first, LastPort: first + 20, ServerPort: sport, IdleTimeout: idle,
		Local: func(netip.Addr) bool { return b.local.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	b.srv, b.in = srv, in
	t.Cleanup(func() {
		in.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
		if l := snap.Leaked(5 * time.Second); l != "" {
			t.Errorf("goroutines left behind:\n%s", l)
		}
	})
	// Wait for the server's listener.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp4", netip.AddrPortFrom(endNode, sport).String())
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not listening: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The probe counts as one bad request; wait for it, so tests count
	// from a settled number.
	for srv.Stats().Refused == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return b
}

// dialFrom dials to from the client node's address (the Server checks
// the peer address; the ingress sees the client's).
func tcpRequest(to netip.AddrPort, msg string) (string, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientNode, 0)), Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", to.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

func udpRequest(to netip.AddrPort, msg string) (string, netip.AddrPort, error) {
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientNode, 0)))
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.WriteToUDPAddrPort([]byte(msg), to); err != nil {
		return "", netip.AddrPort{}, err
	}
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return string(buf[:n]), from, err
}

func TestForwardTCPAndUDP(t *testing.T) {
	b := newBed(t, time.Minute)
	ep := endpoint(t, endpointIP, "pod-on-2")
	tcp := Target{Via: endNode, To: ep, Proto: services.TCP}
	udp := Target{Via: endNode, To: ep, Proto: services.UDP}
	ports := b.in.Set([]Target{tcp, udp})
	if len(ports) != 2 {
		t.Fatalf("ports %v", ports)
	}
	got, err := tcpRequest(netip.AddrPortFrom(clientNode, ports[tcp]), "hello")
	if err != nil || got != "pod-on-2:hello" {
		t.Fatalf("tcp: got %q, %v; want the endpoint's reply (the client's half-close passed on)", got, err)
	}
	// A large transfer, to see the splice carry more than one buffer.
	big := bytes.Repeat([]byte("0123456789"), 100_000)
	got, err = tcpRequest(netip.AddrPortFrom(clientNode, ports[tcp]), string(big))
	if err != nil || got != "pod-on-2:"+string(big) {
		t.Fatalf("tcp 1 MB: got %d bytes, %v", len(got), err)
	}
	reply, from, err := udpRequest(netip.AddrPortFrom(clientNode, ports[udp]), "ping")
	if err != nil || reply != "pod-on-2:ping" {
		t.Fatalf("udp: got %q, %v", reply, err)
	}
	// The reply comes from the port the client sent to (conntrack turns
	// it back into the ClusterIP).
	if from != netip.AddrPortFrom(clientNode, ports[udp]) {
		t.Errorf("udp reply from %v, want %v", from, netip.AddrPortFrom(clientNode, ports[udp]))
	}
	st, ss := b.in.Stats(), b.srv.Stats()
	if st.TCP != 2 || st.UDP != 1 || ss.TCP != 2 || ss.UDP != 1 || st.Ports != 2 {
		t.Errorf("stats: ingress %+v, server %+v", st, ss)
	}
}

func TestForwardRefusals(t *testing.T) {
	b := newBed(t, time.Minute)
	ep := endpoint(t, endpointIP, "pod")
	tcp := Target{Via: endNode, To: ep, Proto: services.TCP}
	ports := b.in.Set([]Target{tcp})
	to := netip.AddrPortFrom(clientNode, ports[tcp])

	b.allowed.Store(false)
	before := b.srv.Stats().Refused // newBed's probe of the listener was one
	if got, err := tcpRequest(to, "x"); got != "" || err == nil {
		t.Errorf("not allowed: got %q, %v; want a reset", got, err)
	}
	if n := b.srv.Stats().Refused - before; n != 1 {
		t.Errorf("server refused %d, want 1", n)
	}
	b.allowed.Store(true)

	b.local.Store(false)
	if got, _ := tcpRequest(to, "x"); got != "" {
		t.Errorf("not local: got %q, want nothing", got)
	}
	if st := b.in.Stats(); st.NotLocal != 1 {
		t.Errorf("not-local count %d, want 1", st.NotLocal)
	}
	b.local.Store(true)

	// An endpoint that is not listening: the client gets a reset at once,
	// not a hang.
	dead := Target{Via: endNode, To: netip.AddrPortFrom(endpointIP, freePort(t, endpointIP)), Proto: services.TCP}
	ports = b.in.Set([]Target{tcp, dead})
	start := time.Now()
	if got, err := tcpRequest(netip.AddrPortFrom(clientNode, ports[dead]), "x"); got != "" || err == nil {
		t.Errorf("dead endpoint: got %q, %v; want a reset", got, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("dead endpoint took %v", d)
	}
	if ss := b.srv.Stats(); ss.DialFailed != 1 {
		t.Errorf("dial failures %d, want 1", ss.DialFailed)
	}
}

func TestSetKeepsPorts(t *testing.T) {
	b := newBed(t, time.Minute)
	ep := endpoint(t, endpointIP, "pod")
	t1 := Target{Via: endNode, To: ep, Proto: services.TCP}
	t2 := Target{Via: endNode, To: ep, Proto: services.UDP}
	p1 := b.in.Set([]Target{t1})[t1]
	ports := b.in.Set([]Target{t1, t2})
	if ports[t1] != p1 || ports[t2] == 0 {
		t.Fatalf("ports %v, want %v kept for %v", ports, p1, t1)
	}
	ports = b.in.Set([]Target{t2})
	if _, ok := ports[t1]; ok {
		t.Fatalf("removed target still has a port: %v", ports)
	}
	if _, err := tcpRequest(netip.AddrPortFrom(clientNode, p1), "x"); err == nil {
		t.Errorf("the removed target's port still accepts")
	}
	// The freed port is reused.
	t3 := Target{Via: endNode, To: netip.AddrPortFrom(endpointIP, 9), Proto: services.TCP}
	if p := b.in.Set([]Target{t2, t3})[t3]; p != p1 {
		t.Errorf("new target got port %d, want the freed %d", p, p1)
	}
}

func TestUDPFlowIdles(t *testing.T) {
	b := newBed(t, 200*time.Millisecond)
	ep := endpoint(t, endpointIP, "pod")
	udp := Target{Via: endNode, To: ep, Proto: services.UDP}
	port := b.in.Set([]Target{udp})[udp]
	if r, _, err := udpRequest(netip.AddrPortFrom(clientNode, port), "a"); err != nil || r != "pod:a" {
		t.Fatalf("got %q, %v", r, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.in.mu.Lock()
		p := b.in.open[udp]
		b.in.mu.Unlock()
		p.mu.Lock()
		n := len(p.flows)
		p.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d flows left 5 s after a 200 ms idle timeout", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []Request{
		{services.TCP, netip.MustParseAddrPort("172.17.0.2:8080")},
		{services.UDP, netip.MustParseAddrPort("192.168.1.10:53")},
	} {
		b, err := AppendRequest(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseRequest(b)
		if err != nil || got != r {
			t.Errorf("%v: got %v, %v", r, got, err)
		}
	}
	for _, bad := range []Request{
		{services.Protocol("SCTP"), netip.MustParseAddrPort("10.0.0.1:1")},
		{services.TCP, netip.MustParseAddrPort("[fd00::1]:80")},
		{services.TCP, netip.MustParseAddrPort("10.0.0.1:0")},
	} {
		if _, err := AppendRequest(nil, bad); err == nil {
			t.Errorf("%v encoded", bad)
		}
	}
	good, _ := AppendRequest(nil, Request{services.TCP, netip.MustParseAddrPort("10.0.0.1:80")})
	for name, b := range map[string][]byte{
		"short":     good[:len(good)-1],
		"magic":     append([]byte("EWF2"), good[4:]...),
		"proto":     append(append([]byte{}, good[:4]...), append([]byte{1}, good[5:]...)...),
		"family":    append(append([]byte{}, good[:5]...), append([]byte{6}, good[6:]...)...),
		"zero addr": append(append([]byte{}, good[:6]...), 0, 0, 0, 0, 0, 80),
		"port 0":    append(append([]byte{}, good[:10]...), 0, 0),
		"broadcast": append(append([]byte{}, good[:6]...), 255, 255, 255, 255, 0, 80),
	} {
		if _, err := ParseRequest(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	for _, p := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte{7}, MaxDatagram)} {
		if err := WriteFrame(&buf, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteFrame(&buf, make([]byte, MaxDatagram+1)); err == nil {
		t.Error("oversized datagram framed")
	}
	rb := make([]byte, MaxDatagram)
	for _, n := range []int{0, 1, MaxDatagram} {
		p, err := ReadFrame(&buf, rb)
		if err != nil || len(p) != n {
			t.Fatalf("frame of %d: got %d, %v", n, len(p), err)
		}
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0xff, 0xff}), rb); err == nil {
		t.Error("frame longer than a datagram read")
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 5, 1}), rb); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated frame: %v", err)
	}
}

// Past MaxConns connections at once, a new one is refused at once (a
// reset) rather than queued, and the ones in progress keep working.
func TestIngressMaxConns(t *testing.T) {
	b := newBed(t, time.Minute)
	b.in.slots = make(chan struct{}, 1) // MaxConns 1
	ep := endpoint(t, endpointIP, "pod")
	tcp := Target{Via: endNode, To: ep, Proto: services.TCP}
	to := netip.AddrPortFrom(clientNode, b.in.Set([]Target{tcp})[tcp])
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientNode, 0)), Timeout: 5 * time.Second}
	first, err := d.Dial("tcp4", to.String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	first.Write([]byte("one"))
	// Wait until the first holds the slot.
	deadline := time.Now().Add(5 * time.Second)
	for len(b.in.slots) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got, err := tcpRequest(to, "two"); got != "" || err == nil {
		t.Errorf("second connection: got %q, %v; want a reset", got, err)
	}
	first.(*net.TCPConn).CloseWrite()
	first.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(first); err != nil || string(got) != "pod:one" {
		t.Errorf("first connection: got %q, %v", got, err)
	}
	if st := b.in.Stats(); st.Dropped != 1 {
		t.Errorf("dropped %d, want 1", st.Dropped)
	}
}
