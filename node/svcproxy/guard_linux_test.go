package svcproxy

// The local-only guard against the attack of issue 12, in network
// namespaces the test creates and always removes: an agent namespace runs
// the real DNS server and SOCKS5 proxy on 169.254.96.16; a pod (in the
// agent's local pod CIDR), a LAN neighbour and an overlay peer route that
// address through it.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/edgewire/edgewire/node/dnsserver"
	"github.com/edgewire/edgewire/node/localsrc"
	"github.com/edgewire/edgewire/node/socks5"
	"github.com/edgewire/edgewire/types/services"
)

var (
	guardDNS   = netip.MustParseAddrPort("169.254.96.16:53")
	guardSOCKS = netip.MustParseAddrPort("169.254.96.16:1080")
)

// goInNS runs fn on a thread switched into ns, in its own goroutine, and
// returns a channel with fn's result. Sockets fn opens belong to ns.
func goInNS(ns string, fn func() error) <-chan error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return errc
}

// dnsFrom asks the agent's DNS for name from ns, bound to src (invalid:
// any), and returns the rcode, or an error (a timeout when nothing came).
func dnsFrom(t *testing.T, ns string, src netip.Addr, name string) (int, error) {
	t.Helper()
	var rcode int
	err := inNS(ns, func() error {
		laddr := &net.UDPAddr{}
		if src.IsValid() {
			laddr.IP = src.AsSlice()
		}
		c, err := net.ListenUDP("udp4", laddr)
		if err != nil {
			return err
		}
		defer c.Close()
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		b, _ := q.Pack()
		c.SetDeadline(time.Now().Add(700 * time.Millisecond))
		if _, err := c.WriteToUDPAddrPort(b, guardDNS); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			return err
		}
		rcode = m.Rcode
		return nil
	})
	return rcode, err
}

// socksFrom connects from ns to the proxy and asks for edge-node-01:22.
// It returns the server's bytes (method selection and reply), or the
// dial or read error.
func socksFrom(t *testing.T, ns string) ([]byte, error) {
	t.Helper()
	var got []byte
	err := inNS(ns, func() error {
		c, err := net.DialTimeout("tcp4", guardSOCKS.String(), 700*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len("edge-node-01"))}
		req = append(req, "edge-node-01"...)
		req = append(req, 0, 22)
		if _, err := c.Write(req); err != nil {
			return err
		}
		buf := make([]byte, 12)
		n, err := io.ReadFull(c, buf)
		got = buf[:n]
		return err
	})
	return got, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var counterRE = regexp.MustCompile(`counter packets (\d+)`)

// guardDrops returns the packets counted by local-only's overlay drop and
// final drop rules.
func guardDrops(t *testing.T, ns, iface string) (overlay, other int) {
	t.Helper()
	for line := range strings.Lines(listTable(t, ns)) {
		m := counterRE.FindStringSubmatch(line)
		if m == nil || !strings.Contains(line, "drop") {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if strings.Contains(line, `iifname "`+iface+`"`) {
			overlay += n
		} else {
			other += n
		}
	}
	return overlay, other
}

func TestLocalOnlyGuard(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	agentNS, podNS, lanNS, peerNS := newNS(t), newNS(t), newNS(t), newNS(t)
	id := randHex(3)
	wg := "ewg" + id
	nsRun := func(ns string, argv ...string) { run(t, append([]string{"ip", "netns", "exec", ns}, argv...)...) }
	link := func(a, aName, b, bName string) {
		run(t, "ip", "link", "add", aName, "netns", a, "type", "veth", "peer", "name", bName, "netns", b)
		nsRun(a, "ip", "link", "set", aName, "up")
		nsRun(b, "ip", "link", "set", bName, "up")
	}
	// agent <-> pod: the pod CIDR 10.244.1.0/24 sits behind a veth, as
	// behind a CNI bridge.
	link(agentNS, "ewp"+id, podNS, "ewq"+id)
	nsRun(agentNS, "ip", "addr", "add", "10.244.1.1/24", "dev", "ewp"+id)
	nsRun(podNS, "ip", "addr", "add", "10.244.1.5/24", "dev", "ewq"+id)
	nsRun(podNS, "ip", "route", "add", "default", "via", "10.244.1.1")
	// agent <-> LAN neighbour, which routes the DNS address via the agent
	// and also holds a pod address to spoof.
	link(agentNS, "ewl"+id, lanNS, "ewn"+id)
	nsRun(agentNS, "ip", "addr", "add", "192.168.50.1/24", "dev", "ewl"+id)
	nsRun(lanNS, "ip", "addr", "add", "192.168.50.2/24", "dev", "ewn"+id)
	nsRun(lanNS, "ip", "addr", "add", "10.244.1.99/32", "dev", "ewn"+id)
	nsRun(lanNS, "ip", "route", "add", guardDNS.Addr().String(), "via", "192.168.50.1")
	// agent <-> overlay peer, over the "WireGuard" interface (a veth with
	// its name); the peer spoofs a pod address too.
	link(agentNS, wg, peerNS, "ewr"+id)
	nsRun(agentNS, "ip", "addr", "add", "100.64.0.1/24", "dev", wg)
	nsRun(peerNS, "ip", "addr", "add", "100.64.0.2/24", "dev", "ewr"+id)
	nsRun(peerNS, "ip", "addr", "add", "10.244.1.77/32", "dev", "ewr"+id)
	nsRun(peerNS, "ip", "route", "add", guardDNS.Addr().String(), "via", "100.64.0.1")
	// The DNS address on lo (the lab kernel has no dummy driver).
	nsRun(agentNS, "ip", "addr", "add", guardDNS.Addr().String()+"/32", "dev", "lo")

	// What the agent's servers count as local: read in the agent's namespace.
	local := localsrc.New(localsrc.Config{Addrs: func() (addrs []netip.Addr, err error) {
		err = inNS(agentNS, func() (err error) { addrs, err = localsrc.InterfaceAddrs(); return err })
		return addrs, err
	}})
	pods := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}
	local.SetPodCIDRs(pods)

	// Services off: the guard must be there anyway.
	p, err := New(Config{Mode: ModeOff, Interface: wg, NetNS: "/var/run/netns/" + agentNS, LocalOnly: []LocalPort{
		{guardDNS, services.UDP}, {guardDNS, services.TCP}, {guardSOCKS, services.TCP},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Cleanup(ctx) })
	if err := p.SetPodCIDRs(ctx, pods); err != nil {
		t.Fatal(err)
	}

	tbl, err := services.NewTable([]*services.Service{{Namespace: "default", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dnsserver.New(dnsserver.Config{Listen: guardDNS, Local: local.Contains})
	if err != nil {
		t.Fatal(err)
	}
	ds.SetServices(tbl)
	ss, err := socks5.New(socks5.Config{
		Listen: guardSOCKS, Local: local.Contains,
		Resolver: resolverFunc(func(h string) (netip.Addr, error) {
			if h == "edge-node-01" {
				return netip.MustParseAddr("100.64.0.9"), nil
			}
			return netip.Addr{}, socks5.ErrNotAllowed
		}),
		// No network: the "node" answers from a pipe.
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			near, far := net.Pipe()
			go func() { far.Write([]byte("SSH-2.0-node\r\n")); far.Close() }()
			return near, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	dnsDone := goInNS(agentNS, func() error { return ds.Run(sctx) })
	socksDone := goInNS(agentNS, func() error { return ss.Run(sctx) })
	var stopOnce sync.Once
	stopServers := func() {
		stopOnce.Do(func() {
			stop()
			for _, c := range []<-chan error{dnsDone, socksDone} {
				select {
				case err := <-c:
					if err != nil {
						t.Errorf("server: %v", err)
					}
				case <-time.After(10 * time.Second):
					t.Error("server did not stop")
				}
			}
		})
	}
	t.Cleanup(stopServers)

	const name = "web.default.svc.cluster.local."
	none := netip.Addr{}
	// Local clients are served: the agent's own namespace (lo) and a pod.
	var rc int
	for range 50 { // until the servers listen
		if rc, err = dnsFrom(t, agentNS, none, name); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []struct{ who, ns string }{{"agent itself", agentNS}, {"pod", podNS}} {
		if rc, err = dnsFrom(t, c.ns, none, name); err != nil || rc != dns.RcodeSuccess {
			t.Errorf("DNS from the %s: got %s, %v; want NOERROR", c.who, dns.RcodeToString[rc], err)
		}
		if got, err := socksFrom(t, c.ns); err != nil || len(got) != 12 || got[3] != 0 {
			t.Errorf("SOCKS5 from the %s: got %v, %v; want success", c.who, got, err)
		}
	}
	servedBefore := ds.Stats().Local

	// The attack: nothing comes back to the LAN neighbour or the overlay
	// peer, not even a refusal, and the servers never see their packets.
	overlay0, other0 := guardDrops(t, agentNS, wg)
	attacks := []struct {
		who string
		ns  string
		src netip.Addr
	}{
		{"LAN neighbour", lanNS, none},
		{"LAN neighbour spoofing a pod address", lanNS, netip.MustParseAddr("10.244.1.99")},
		{"overlay peer", peerNS, none},
		{"overlay peer spoofing a pod address", peerNS, netip.MustParseAddr("10.244.1.77")},
	}
	for _, a := range attacks {
		if rc, err := dnsFrom(t, a.ns, a.src, name); !isTimeout(err) {
			t.Errorf("DNS from the %s: got %s, %v; want no answer", a.who, dns.RcodeToString[rc], err)
		}
	}
	for _, a := range []struct{ who, ns string }{{"LAN neighbour", lanNS}, {"overlay peer", peerNS}} {
		if got, err := socksFrom(t, a.ns); !isTimeout(err) {
			t.Errorf("SOCKS5 from the %s: got %v, %v; want no connection", a.who, got, err)
		}
	}
	overlay1, other1 := guardDrops(t, agentNS, wg)
	// At least one packet per attempt (TCP retransmits SYNs).
	if overlay1-overlay0 < 3 || other1-other0 < 3 {
		t.Errorf("guard drops: overlay %d -> %d, others %d -> %d; want 3 or more new of each", overlay0, overlay1, other0, other1)
	}
	if st := ds.Stats(); st.Local != servedBefore || st.RefusedSource != 0 || ss.Refused() != 0 {
		t.Errorf("attack traffic reached the servers: DNS local answers %d -> %d, refused %d; SOCKS5 refused %d", servedBefore, st.Local, st.RefusedSource, ss.Refused())
	}

	// Pod CIDRs change: the swap is one batch and takes effect at once.
	if err := p.SetPodCIDRs(ctx, []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")}); err != nil {
		t.Fatal(err)
	}
	if nft := listTable(t, agentNS); !strings.Contains(nft, "10.244.9.0/24") || strings.Contains(nft, "10.244.1.0/24") {
		t.Errorf("pod rules after the change:\n%s", nft)
	}
	if rc, err := dnsFrom(t, podNS, none, name); !isTimeout(err) {
		t.Errorf("DNS from a pod outside the new pod CIDRs: got %s, %v; want no answer", dns.RcodeToString[rc], err)
	}
	if err := p.SetPodCIDRs(ctx, pods); err != nil {
		t.Fatal(err)
	}
	if rc, err := dnsFrom(t, podNS, none, name); err != nil || rc != dns.RcodeSuccess {
		t.Errorf("DNS from the pod after its CIDR is back: got %s, %v; want NOERROR", dns.RcodeToString[rc], err)
	}
	if s := p.Stats(); s.Applies != 3 {
		t.Errorf("guard applies: got %d, want 3 (install, two swaps)", s.Applies)
	}
	if err := p.SetPodCIDRs(ctx, pods); err != nil || p.Stats().Applies != 3 {
		t.Errorf("unchanged pod CIDRs: got %v and %d applies, want nothing sent", err, p.Stats().Applies)
	}

	// Clean exit removes the guard with the table.
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if s := listTable(t, agentNS); s != "" {
		t.Errorf("table left after Cleanup:\n%s", s)
	}

	// Second line: without the guard the servers refuse foreign clients
	// themselves. DNS answers REFUSED, SOCKS5 closes without a byte.
	if rc, err := dnsFrom(t, lanNS, none, name); err != nil || rc != dns.RcodeRefused {
		t.Errorf("DNS from the LAN neighbour without the guard: got %s, %v; want REFUSED", dns.RcodeToString[rc], err)
	}
	if got, err := socksFrom(t, lanNS); len(got) != 0 || err == nil || isTimeout(err) {
		t.Errorf("SOCKS5 from the LAN neighbour without the guard: got %v, %v; want the connection closed without a byte", got, err)
	}
	if ds.Stats().RefusedSource != 1 || ss.Refused() != 1 {
		t.Errorf("refused: DNS %d, SOCKS5 %d; want 1 each", ds.Stats().RefusedSource, ss.Refused())
	}
	if rc, err := dnsFrom(t, podNS, none, name); err != nil || rc != dns.RcodeSuccess {
		t.Errorf("DNS from the pod without the guard: got %s, %v; want NOERROR", dns.RcodeToString[rc], err)
	}
	stopServers()
}

type resolverFunc func(string) (netip.Addr, error)

func (f resolverFunc) Resolve(h string) (netip.Addr, error) { return f(h) }

// TestGuardWithServices: with Service rules on, the guard sits beside
// them, a full replace keeps it, and Cleanup removes both.
func TestGuardWithServices(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	ns := newNS(t)
	p, err := New(Config{Mode: ModeOn, Interface: "wg0", NetNS: "/var/run/netns/" + ns, LocalOnly: []LocalPort{
		{guardDNS, services.UDP}, {netip.MustParseAddrPort("0.0.0.0:1080"), services.TCP}, {netip.MustParseAddrPort("[::1]:1080"), services.TCP},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Cleanup(ctx) })
	if err := p.SetPodCIDRs(ctx, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.1.128/25"), netip.MustParsePrefix("fd00::/64")}); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		nft := listTable(t, ns)
		for _, want := range []string{
			"type filter hook input priority filter; policy accept;",
			"ip daddr 169.254.96.16 udp dport 53 goto local-only",
			"tcp dport 1080 goto local-only",
			`iifname "lo" accept`,
			`iifname "wg0" counter packets`,
			"jump local-pods",
			"ip saddr 10.244.1.0/24 fib saddr . iif oif != 0 accept",
			"dnat to 10.1.0.1:8080",
		} {
			if n := count(nft, want); n != 1 {
				t.Errorf("%s: %q appears %d times, want 1:\n%s", when, want, n, nft)
			}
		}
		if strings.Contains(nft, "10.244.1.128") || strings.Contains(nft, "::1") {
			t.Errorf("%s: covered or IPv6 entries programmed:\n%s", when, nft)
		}
	}
	check("after apply")
	t.Logf("nft list table ip %s:\n%s", tableName, listTable(t, ns))
	// A firewall reload removes our table: the next apply replaces it
	// whole, guard and pod rules included.
	run(t, "ip", "netns", "exec", ns, "nft", "delete", "table", "ip", tableName)
	if err := p.Apply(ctx, table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))); err != nil {
		t.Fatal(err)
	}
	check("after the table was deleted and re-applied")
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
}
