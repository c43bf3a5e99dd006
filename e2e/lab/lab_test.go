//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// topo is the standard test topology.
type topo struct {
	lab                *Lab
	p                  *Host
	a, b, u, g, c      *Site
	a1, a2, b1, u1, c1 *Host
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	l := New(t)
	tp := &topo{lab: l, p: l.AddPublicHost("p")}
	tp.a = l.AddSite("a", NATEIM)
	tp.a1 = tp.a.AddNode("a1")
	tp.a2 = tp.a.AddNode("a2")
	tp.b = l.AddSite("b", NATSymmetric)
	tp.b1 = tp.b.AddNode("b1")
	tp.u = l.AddSite("u", NATUDPBlocked)
	tp.u1 = tp.u.AddNode("u1")
	tp.g = l.AddSite("g", NATEIM)
	tp.c = tp.g.AddSite("c", NATEIM)
	tp.c1 = tp.c.AddNode("c1")
	return tp
}

func TestTopology(t *testing.T) {
	Require(t)
	tp := newTopo(t)
	ctx := context.Background()

	t.Run("nodes reach public host", func(t *testing.T) {
		for _, h := range []*Host{tp.a1, tp.a2, tp.b1, tp.u1, tp.c1} {
			got, err := h.Ping(ctx, tp.p.IP(), 3)
			if err != nil {
				t.Fatal(err)
			}
			if got != 3 {
				t.Errorf("%s ping %s: got %d replies, want 3", h.Name(), tp.p.IP(), got)
			}
		}
	})
	t.Run("lan", func(t *testing.T) {
		got, err := tp.a1.Ping(ctx, tp.a2.IP(), 3)
		if err != nil {
			t.Fatal(err)
		}
		if got != 3 {
			t.Errorf("a1 ping a2: got %d replies, want 3", got)
		}
	})
	t.Run("private address unreachable from internet", func(t *testing.T) {
		got, err := tp.p.Ping(ctx, tp.a1.IP(), 2)
		if err != nil {
			t.Fatal(err)
		}
		if got != 0 {
			t.Errorf("p ping a1 %s: got %d replies, want 0", tp.a1.IP(), got)
		}
	})
	t.Run("addressing", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			got  netip.Addr
			in   netip.Prefix
		}{
			{"p", tp.p.IP(), publicNet},
			{"a wan", tp.a.PublicIP(), publicNet},
			{"a1", tp.a1.IP(), tp.a.LAN()},
			{"c wan", tp.c.PublicIP(), tp.g.LAN()},
			{"c1", tp.c1.IP(), tp.c.LAN()},
		} {
			if !tc.in.Contains(tc.got) {
				t.Errorf("%s: got %s, want inside %s", tc.name, tc.got, tc.in)
			}
		}
		if tp.a.LAN() == tp.b.LAN() {
			t.Errorf("sites a and b share LAN %s", tp.a.LAN())
		}
	})
}

// probe sends one datagram from a fresh socket on src to each port of dst
// and returns the source addresses dst observed, in port order.
func probe(t *testing.T, src, dst *Host, ports []int) []netip.AddrPort {
	t.Helper()
	var lns []*net.UDPConn
	for _, port := range ports {
		ln, err := dst.ListenUDP(fmt.Sprintf("%s:%d", dst.IP(), port))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns = append(lns, ln)
	}
	c, err := src.ListenUDP(src.IP().String() + ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var seen []netip.AddrPort
	for i, port := range ports {
		to := netip.AddrPortFrom(dst.IP(), uint16(port))
		if _, err := c.WriteToUDPAddrPort([]byte("probe"), to); err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
		lns[i].SetReadDeadline(time.Now().Add(2 * time.Second))
		var buf [64]byte
		_, from, err := lns[i].ReadFromUDPAddrPort(buf[:])
		if err != nil {
			t.Fatalf("%s to %s: %v", src.Name(), to, err)
		}
		seen = append(seen, from)
	}
	return seen
}

func TestNAT(t *testing.T) {
	Require(t)
	tp := newTopo(t)

	t.Run("eim keeps mapping across destinations", func(t *testing.T) {
		seen := probe(t, tp.a1, tp.p, []int{4000, 4001})
		for _, s := range seen {
			if s.Addr() != tp.a.PublicIP() {
				t.Errorf("source seen by p: got %s, want %s", s.Addr(), tp.a.PublicIP())
			}
		}
		if seen[0] != seen[1] {
			t.Errorf("mapped sources: got %s and %s, want equal", seen[0], seen[1])
		}
	})
	t.Run("double nat shows outer address", func(t *testing.T) {
		seen := probe(t, tp.c1, tp.p, []int{4010, 4011})
		if seen[0].Addr() != tp.g.PublicIP() {
			t.Errorf("source seen by p: got %s, want %s", seen[0].Addr(), tp.g.PublicIP())
		}
		if seen[0] != seen[1] {
			t.Errorf("mapped sources: got %s and %s, want equal", seen[0], seen[1])
		}
	})
	t.Run("symmetric maps per destination", func(t *testing.T) {
		seen := probe(t, tp.b1, tp.p, []int{4020, 4021, 4022})
		if seen[0].Addr() != tp.b.PublicIP() {
			t.Errorf("source seen by p: got %s, want %s", seen[0].Addr(), tp.b.PublicIP())
		}
		if seen[0].Port() == seen[1].Port() && seen[1].Port() == seen[2].Port() {
			t.Errorf("mapped ports: got %v, want not all equal", seen)
		}
	})
	t.Run("udp blocked tcp passes", func(t *testing.T) {
		const port = 4100
		out, err := tp.u.Router().AddCounter("FORWARD", "-i", "lan", "-p", "udp", "--dport", fmt.Sprint(port))
		if err != nil {
			t.Fatal(err)
		}
		in, err := tp.p.AddCounter("INPUT", "-p", "udp", "--dport", fmt.Sprint(port))
		if err != nil {
			t.Fatal(err)
		}
		ln, err := tp.p.ListenUDP(fmt.Sprintf("%s:%d", tp.p.IP(), port))
		if err != nil {
			t.Fatal(err)
		}
		c, err := tp.u1.ListenUDP(":0")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteToUDPAddrPort([]byte("probe"), netip.AddrPortFrom(tp.p.IP(), port)); err != nil {
			t.Fatal(err)
		}
		ln.SetReadDeadline(time.Now().Add(time.Second))
		var buf [64]byte
		if _, from, err := ln.ReadFromUDPAddrPort(buf[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("udp read at p: got from %s err %v, want deadline exceeded", from, err)
		}
		if n, err := out.Packets(); err != nil || n != 1 {
			t.Errorf("udp packets leaving u's lan: got %d (%v), want 1", n, err)
		}
		if n, err := in.Packets(); err != nil || n != 0 {
			t.Errorf("udp packets reaching p: got %d (%v), want 0", n, err)
		}

		tl, err := tp.p.ListenTCP(fmt.Sprintf("%s:%d", tp.p.IP(), port))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		tc, err := tp.u1.DialTCP(ctx, fmt.Sprintf("%s:%d", tp.p.IP(), port))
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		tl.SetDeadline(time.Now().Add(2 * time.Second))
		ac, err := tl.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer ac.Close()
		if got := ac.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != tp.u.PublicIP() {
			t.Errorf("tcp source seen by p: got %s, want %s", got, tp.u.PublicIP())
		}
	})
	t.Run("router drops unsolicited wan input", func(t *testing.T) {
		const port = 4200
		r := tp.a.Router()
		rc, err := r.ListenUDP(fmt.Sprintf("%s:%d", r.IP(), port))
		if err != nil {
			t.Fatal(err)
		}
		pc, err := tp.p.ListenUDP(fmt.Sprintf("%s:%d", tp.p.IP(), port))
		if err != nil {
			t.Fatal(err)
		}
		r.MustExec(t, "conntrack", "-F")
		if _, err := pc.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(r.IP(), port)); err != nil {
			t.Fatal(err)
		}
		var buf [64]byte
		rc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, _, err := rc.ReadFromUDPAddrPort(buf[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("unsolicited read at router: got err %v, want deadline exceeded", err)
		}
		// Once the router has sent, the reply is ESTABLISHED and passes.
		if _, err := rc.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(tp.p.IP(), port)); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, _, err := pc.ReadFromUDPAddrPort(buf[:]); err != nil {
			t.Fatalf("read at p: %v", err)
		}
		if _, err := pc.WriteToUDPAddrPort([]byte("y"), netip.AddrPortFrom(r.IP(), port)); err != nil {
			t.Fatal(err)
		}
		rc.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, _, err := rc.ReadFromUDPAddrPort(buf[:]); err != nil {
			t.Errorf("reply read at router: got %v, want it delivered", err)
		}
	})
}

func TestProcess(t *testing.T) {
	Require(t)
	l := New(t)
	h := l.AddPublicHost("p")

	t.Run("stop", func(t *testing.T) {
		p, err := h.Start("sleeper", []string{"EWLAB_MSG=hello"}, "sh", "-c", `echo "$EWLAB_MSG"; ip -br addr show eth0; exec sleep 30`)
		if err != nil {
			t.Fatal(err)
		}
		if err := Eventually(5*time.Second, 50*time.Millisecond, func() error {
			if !strings.Contains(p.Log(), h.IP().String()) {
				return fmt.Errorf("log %q: want hello and %s", p.Log(), h.IP())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.Log(), "hello") {
			t.Errorf("log: got %q, want it to contain hello", p.Log())
		}
		if p.Exited() {
			t.Fatal("exited before Stop")
		}
		start := time.Now()
		err = p.Stop(5 * time.Second)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("Stop: got %v, want killed by SIGTERM", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Stop took %v, want SIGTERM to end sleep quickly", d)
		}
		if !p.Exited() {
			t.Error("Exited after Stop: got false")
		}
		if err2 := p.Stop(time.Second); err2 != err {
			t.Errorf("second Stop: got %v, want %v", err2, err)
		}
	})
	t.Run("clean exit", func(t *testing.T) {
		p, err := h.Start("true", nil, "true")
		if err != nil {
			t.Fatal(err)
		}
		if err := Eventually(5*time.Second, 20*time.Millisecond, func() error {
			if !p.Exited() {
				return errors.New("still running")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := p.Stop(time.Second); err != nil {
			t.Errorf("Stop after exit 0: got %v, want nil", err)
		}
	})
	t.Run("kill ignores sigterm", func(t *testing.T) {
		p, err := h.Start("stubborn", nil, "sh", "-c", `trap "" TERM; sleep 30 & wait`)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // let the trap install
		err = p.Stop(200 * time.Millisecond)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("Stop: got %v, want killed by SIGKILL", err)
		}
	})
}

func TestTeardown(t *testing.T) {
	Require(t)
	var id string
	var proc *Process
	t.Run("sub lab", func(t *testing.T) {
		l := New(t)
		id = l.ID()
		s := l.AddSite("s", NATSymmetric)
		n := s.AddNode("n1")
		var err error
		proc, err = n.Start("sleep", nil, "sleep", "60")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.ListenUDP(":0"); err != nil {
			t.Fatal(err)
		}
		if got := labNamespaces(t, id); len(got) != 3 {
			t.Errorf("namespaces while running: got %v, want 3 (inet, s, n1)", got)
		}
	})
	if got := labNamespaces(t, id); len(got) != 0 {
		t.Errorf("namespaces after teardown: got %v, want none", got)
	}
	if !proc.Exited() {
		t.Error("process still running after teardown")
	}
}

func TestSweep(t *testing.T) {
	Require(t)
	// A pid that just exited stands in for a killed earlier test run.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%s%d-zzzz-x", nsPrefix, dead.Process.Pid)
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { deleteNS(stale) })
	New(t)
	if _, err := os.Stat("/var/run/netns/" + stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale namespace %s after New: got %v, want gone", stale, err)
	}
}

func labNamespaces(t *testing.T, id string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	prefix := fmt.Sprintf("%s%d-%s-", nsPrefix, os.Getpid(), id)
	var got []string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, prefix) {
			got = append(got, f)
		}
	}
	return got
}

func TestParseNSName(t *testing.T) {
	for _, tc := range []struct {
		in     string
		pid    int
		id     string
		wantOK bool
	}{
		{"ewlab-123-ab12-a1", 123, "ab12", true},
		{"ewlab-123-ab12-a-b", 123, "ab12", true},
		{"ewlab-x-ab12-a1", 0, "", false},
		{"ewlab-123", 0, "", false},
		{"other-123-ab12-a1", 0, "", false},
	} {
		pid, id, ok := parseNSName(tc.in)
		if pid != tc.pid || id != tc.id || ok != tc.wantOK {
			t.Errorf("parseNSName(%q): got %d %q %v, want %d %q %v", tc.in, pid, id, ok, tc.pid, tc.id, tc.wantOK)
		}
	}
}

func TestParseConntrack(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name    string
		in      string
		want    []ctFlow
		wantErr bool
	}{
		{
			name: "default output with summary",
			in: "udp      17 29 src=10.1.0.2 dst=203.0.113.2 sport=51820 dport=3478 [UNREPLIED] src=203.0.113.2 dst=203.0.113.5 sport=3478 dport=40001 mark=0 use=1\n" +
				"conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n",
			want: []ctFlow{{ap("10.1.0.2:51820"), ap("203.0.113.2:3478"), ap("203.0.113.2:3478"), ap("203.0.113.5:40001")}},
		},
		{
			name: "extended output, assured",
			in:   "ipv4     2 udp      17 119 src=10.2.0.2 dst=203.0.113.9 sport=5 dport=6 src=203.0.113.9 dst=203.0.113.3 sport=6 dport=7 [ASSURED] mark=0 zone=0 use=2\n",
			want: []ctFlow{{ap("10.2.0.2:5"), ap("203.0.113.9:6"), ap("203.0.113.9:6"), ap("203.0.113.3:7")}},
		},
		{name: "empty", in: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n"},
		{name: "one tuple only", in: "udp 17 29 src=10.1.0.2 dst=203.0.113.2 sport=1 dport=2\n", wantErr: true},
		{name: "bad address", in: "udp 17 29 src=10.1.0.x dst=203.0.113.2 sport=1 dport=2 src=203.0.113.2 dst=203.0.113.5 sport=2 dport=1\n", wantErr: true},
		{name: "bad port", in: "udp 17 29 src=10.1.0.2 dst=203.0.113.2 sport=70000 dport=2 src=203.0.113.2 dst=203.0.113.5 sport=2 dport=1\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseConntrack(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error: got %v, want error %v", err, tc.wantErr)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("flows: got %v, want %v", got, tc.want)
			}
		})
	}
}

// sendFrom sends one datagram from c to each destination port on dst and
// returns the sources dst observed, in order.
func sendFrom(t *testing.T, c *net.UDPConn, dst *Host, ports ...int) []netip.AddrPort {
	t.Helper()
	var seen []netip.AddrPort
	for _, port := range ports {
		ln, err := dst.ListenUDP(fmt.Sprintf("%s:%d", dst.IP(), port))
		if err != nil {
			t.Fatal(err)
		}
		to := netip.AddrPortFrom(dst.IP(), uint16(port))
		if _, err := c.WriteToUDPAddrPort([]byte("probe"), to); err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
		ln.SetReadDeadline(time.Now().Add(2 * time.Second))
		var buf [64]byte
		_, from, err := ln.ReadFromUDPAddrPort(buf[:])
		ln.Close()
		if err != nil {
			t.Fatalf("read at %s: %v", to, err)
		}
		seen = append(seen, from)
	}
	return seen
}

func TestMappings(t *testing.T) {
	Require(t)
	tp := newTopo(t)
	ctx := context.Background()
	listen := func(h *Host) (*net.UDPConn, netip.AddrPort) {
		c, err := h.ListenUDP(h.IP().String() + ":0")
		if err != nil {
			t.Fatal(err)
		}
		return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	mappings := func(s *Site, inner netip.AddrPort) []netip.AddrPort {
		t.Helper()
		m, err := s.UDPMappings(ctx, inner)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	t.Run("eim has one mapping and it is what the peer sees", func(t *testing.T) {
		c, local := listen(tp.a1)
		seen := sendFrom(t, c, tp.p, 4300, 4301)
		if got := mappings(tp.a, local); len(got) != 1 || got[0] != seen[0] {
			t.Errorf("mappings of %s: got %v, want [%s]", local, got, seen[0])
		}
		if got := mappings(tp.a, netip.AddrPortFrom(local.Addr(), local.Port()+1)); len(got) != 0 {
			t.Errorf("mappings of an unused source: got %v, want none", got)
		}
	})
	t.Run("double nat chains through both routers", func(t *testing.T) {
		c, local := listen(tp.c1)
		seen := sendFrom(t, c, tp.p, 4310, 4311)
		inner := mappings(tp.c, local)
		if len(inner) != 1 || inner[0].Addr() != tp.c.PublicIP() {
			t.Fatalf("inner mappings of %s: got %v, want one on %s", local, inner, tp.c.PublicIP())
		}
		if got := mappings(tp.g, inner[0]); len(got) != 1 || got[0] != seen[0] || got[0].Addr() != tp.g.PublicIP() {
			t.Errorf("outer mappings of %s: got %v, want [%s] on %s", inner[0], got, seen[0], tp.g.PublicIP())
		}
	})
	t.Run("symmetric has a mapping per destination", func(t *testing.T) {
		c, local := listen(tp.b1)
		seen := sendFrom(t, c, tp.p, 4320, 4321, 4322)
		got := mappings(tp.b, local)
		for _, s := range seen {
			if !slices.Contains(got, s) {
				t.Errorf("mappings of %s: got %v, want it to hold %s", local, got, s)
			}
		}
		if len(got) < 2 {
			t.Errorf("mappings of %s: got %v, want several", local, got)
		}
	})
}

func TestRemapUDP(t *testing.T) {
	Require(t)
	l := New(t)
	ctx := context.Background()
	p := l.AddPublicHost("p")
	a := l.AddSite("a", NATEIM)
	a1 := a.AddNode("a1")
	const lo, hi = 40000, 40999
	c, err := a1.ListenUDP(a1.IP().String() + ":51820")
	if err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()

	before := sendFrom(t, c, p, 4400)[0]
	if want := netip.AddrPortFrom(a.PublicIP(), 51820); before != want {
		t.Fatalf("source before remap: got %s, want %s (port kept)", before, want)
	}
	if err := a.RemapUDP(ctx, lo, hi); err != nil {
		t.Fatal(err)
	}
	if got, err := a.UDPMappings(ctx, local); err != nil || len(got) != 0 {
		t.Errorf("mappings right after remap: got %v (%v), want none", got, err)
	}
	after := sendFrom(t, c, p, 4400, 4401)
	if after[0].Addr() != a.PublicIP() || after[0].Port() < lo || after[0].Port() > hi {
		t.Errorf("source after remap: got %s, want %s:%d-%d", after[0], a.PublicIP(), lo, hi)
	}
	if after[0] != after[1] {
		t.Errorf("sources after remap: got %s and %s, want one mapping (still EIM)", after[0], after[1])
	}
	if got, err := a.UDPMappings(ctx, local); err != nil || len(got) != 1 || got[0] != after[0] {
		t.Errorf("mappings after remap: got %v (%v), want [%s]", got, err, after[0])
	}
	if n, err := a1.Ping(ctx, p.IP(), 2); err != nil || n != 2 {
		t.Errorf("ping through remapped site: got %d replies (%v), want 2", n, err)
	}
	if err := l.AddSite("n", NATNone).RemapUDP(ctx, lo, hi); err == nil {
		t.Error("RemapUDP on a site without NAT: got nil, want an error")
	}
	if err := a.RemapUDP(ctx, hi, lo); err == nil {
		t.Errorf("RemapUDP(%d, %d): got nil, want an error", hi, lo)
	}
}

func TestAddPod(t *testing.T) {
	Require(t)
	l := New(t)
	s := l.AddSite("s", NATEIM)
	n := s.AddNode("n")
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	p1, p2 := n.AddPod("p1", cidr), n.AddPod("p2", cidr)
	ctx := context.Background()

	for _, tc := range []struct {
		pod  *Host
		want string
	}{{p1, "10.244.7.2"}, {p2, "10.244.7.3"}} {
		if got := tc.pod.IP().String(); got != tc.want {
			t.Errorf("pod %s address: got %s, want %s", tc.pod.Name(), got, tc.want)
		}
	}
	if out := n.MustExec(t, "ip", "-4", "-o", "addr", "show", "dev", "pods"); !strings.Contains(out, "10.244.7.1/24") {
		t.Errorf("node's pod bridge: got %q, want 10.244.7.1/24 on it", out)
	}
	// The site router learns the pod CIDR, as the overlay does for peers,
	// so a reply proves the node forwards for its pods.
	s.Router().MustExec(t, "ip", "route", "add", cidr.String(), "via", n.IP().String())
	for _, tc := range []struct {
		from *Host
		to   netip.Addr
	}{
		{p1, p2.IP()},         // pod to pod on the bridge
		{p2, n.IP()},          // pod to its node
		{p1, s.gateway()},     // forwarded by the node
		{n, p1.IP()},          // node to pod
		{s.Router(), p2.IP()}, // routed in from the LAN
	} {
		got, err := tc.from.Ping(ctx, tc.to, 2)
		if err != nil {
			t.Fatal(err)
		}
		if got != 2 {
			t.Errorf("%s ping %s: got %d replies, want 2", tc.from.Name(), tc.to, got)
		}
	}
}
