package svcproxy

// Integration tests against the real nftables, each inside network
// namespaces the test creates and always removes. Nothing here touches the
// root namespace's firewall.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/edgewire/edgewire/types/services"
)

// nsPrefix names this run's namespaces, so the leak check in TestMain
// sees only ours.
var nsPrefix = fmt.Sprintf("ewsvc-%d-", os.Getpid())

func TestMain(m *testing.M) {
	code := m.Run()
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil && strings.Contains(string(out), nsPrefix) {
		fmt.Fprintf(os.Stderr, "leaked network namespaces:\n%s", out)
		code = 1
	}
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s", bin)
		}
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newNS creates a namespace with loopback up and removes it at cleanup.
func newNS(t *testing.T) string {
	t.Helper()
	ns := nsPrefix + randHex(4)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	run(t, "ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	return ns
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func nsProxy(t *testing.T, ns, iface string) *Proxy {
	t.Helper()
	p, err := New(Config{Mode: ModeOn, Interface: iface, NetNS: "/var/run/netns/" + ns})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// listTable returns `nft -a list table ip edgewire` in ns ("" if the
// table does not exist).
func listTable(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-a", "list", "table", "ip", tableName).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file") {
			return ""
		}
		t.Fatalf("nft list table: %v: %s", err, out)
	}
	return string(out)
}

func count(text, sub string) int { return strings.Count(text, sub) }

// inNS runs fn on a thread switched into ns. Sockets fn opens stay in ns
// and can be used from any goroutine afterwards. The thread is never
// unlocked, so Go discards it when the goroutine ends instead of reusing
// it in the wrong namespace.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func assertClean(t *testing.T, ns string) {
	t.Helper()
	if s := listTable(t, ns); s != "" {
		t.Errorf("table ip %s still exists after Cleanup:\n%s", tableName, s)
	}
	for _, tb := range []string{"nat", "filter", "mangle"} {
		if s := run(t, "ip", "netns", "exec", ns, "iptables-save", "-t", tb); strings.Contains(s, "EDGEWIRE") {
			t.Errorf("%s table still mentions EDGEWIRE after Cleanup:\n%s", tb, s)
		}
	}
}

// handleOf returns the rule handle of the first line of text containing
// sub, or "" if none does.
func handleOf(text, sub string) string {
	for line := range strings.Lines(text) {
		if strings.Contains(line, sub) {
			_, h, _ := strings.Cut(line, "# handle ")
			return strings.TrimSpace(h)
		}
	}
	return ""
}

func TestApplyDiffAndStale(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	ns := newNS(t)
	p := nsProxy(t, ns, "wg0")
	other := svc("other", "10.96.0.20", services.TCP, 443, ep("10.2.0.1", 8443), ep("10.2.0.2", 8443))
	three := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080), ep("10.1.0.3", 8080)),
		svc("empty", "10.96.0.11", services.UDP, 53), other)

	for range 2 {
		if err := p.Apply(ctx, three); err != nil {
			t.Fatal(err)
		}
	}
	if s := p.Stats(); s.Applies != 1 || s.Skipped != 1 || s.Errors != 0 {
		t.Errorf("stats after two applies: got %+v, want 1 applied, 1 skipped", s)
	}
	nft := listTable(t, ns)
	for _, want := range []string{
		"type nat hook prerouting priority dstnat; policy accept;",
		"type nat hook output priority -100; policy accept;",
		"type nat hook postrouting priority srcnat; policy accept;",
		`meta mark & 0x00004000 != 0x00000000 oifname "wg0" masquerade`,
		`iifname "wg0" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`,
		"10.96.0.10 . tcp . 80 : goto svc-default/web/tcp",
		"10.96.0.11 . udp . 53",
		"dnat ip to numgen random mod 3 map",
	} {
		if n := count(nft, want); n != 1 {
			t.Errorf("%q appears %d times, want 1", want, n)
		}
	}
	for _, want := range []string{"ip daddr . meta l4proto . th dport vmap @services", "ip daddr . meta l4proto . th dport @no-endpoints reject"} {
		if n := count(nft, want); n != 2 {
			t.Errorf("%q appears %d times, want 2 (one per hook)", want, n)
		}
	}
	if n := count(nft, " . 8080") + count(nft, " . 8443"); n != 5 {
		t.Errorf("got %d endpoints, want 5:\n%s", n, nft)
	}

	// Endpoint 10.1.0.3 goes away, and the other Service's rule is not
	// rewritten (same handle).
	gone := "10.1.0.3 . 8080"
	otherRule := handleOf(nft, "10.2.0.1 . 8443")
	if !strings.Contains(nft, gone) || otherRule == "" {
		t.Fatalf("rules missing before the change:\n%s", nft)
	}
	two := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)),
		svc("empty", "10.96.0.11", services.UDP, 53), other)
	if err := p.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	nft = listTable(t, ns)
	if strings.Contains(nft, gone) || !strings.Contains(nft, "dnat ip to numgen random mod 2 map { 0 : 10.1.0.1 . 8080") {
		t.Errorf("endpoint %s still present, or web not spread over the other two:\n%s", gone, nft)
	}
	if got := handleOf(nft, "10.2.0.1 . 8443"); got != otherRule {
		t.Errorf("other Service's rule: handle %s, want %s (untouched)", got, otherRule)
	}

	// Someone removes our table (a firewall reload): the next apply,
	// with nothing new, notices and puts it back.
	run(t, "ip", "netns", "exec", ns, "nft", "delete", "table", "ip", tableName)
	if err := p.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	if n := count(listTable(t, ns), " . 8080") + count(listTable(t, ns), " . 8443"); n != 4 {
		t.Errorf("got %d endpoints after the table was deleted and re-applied, want 4", n)
	}

	// A restarted agent (new Proxy) replaces what its predecessor left.
	p2 := nsProxy(t, ns, "wg0")
	one := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))
	if err := p2.Apply(ctx, one); err != nil {
		t.Fatal(err)
	}
	nft = listTable(t, ns)
	if n := count(nft, "chain svc-"); n != 1 || !strings.Contains(nft, "dnat to 10.1.0.1:8080") {
		t.Errorf("got %d Service chains after restart, want 1 with dnat to 10.1.0.1:8080:\n%s", n, nft)
	}
	if strings.Contains(nft, "10.96.0.11") || strings.Contains(nft, "other") {
		t.Errorf("removed Services still have rules:\n%s", nft)
	}

	if err := p2.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
}

// TestApplyFailureChangesNothing makes the kernel refuse the last
// message of a batch that first rewrites a Service and deletes an
// endpoint chain, and checks none of it took effect; then bad input
// (two Services on one portal) is refused before anything is sent.
func TestApplyFailureChangesNothing(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	ns := newNS(t)
	p := nsProxy(t, ns, "wg0")
	t.Cleanup(func() { p.Cleanup(ctx) })
	two := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)))
	if err := p.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	before := listTable(t, ns)

	p.breakBatch = true
	one := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)),
		svc("new", "10.96.0.12", services.UDP, 53, ep("10.1.0.9", 53)))
	err := p.Apply(ctx, one)
	if err == nil {
		t.Fatal("apply succeeded; want the batch refused")
	}
	t.Logf("error (expected): %v", err)
	if !strings.Contains(err.Error(), "nothing applied") {
		t.Errorf("error %q does not say the batch was not applied", err)
	}
	if after := listTable(t, ns); after != before {
		t.Errorf("table changed by a refused batch:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	p.breakBatch = false
	conflict := svc("dup", "10.96.0.10", services.TCP, 80, ep("10.1.0.7", 80))
	err = p.Apply(ctx, table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)), conflict))
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "10.96.0.10:80/TCP") {
		t.Errorf("two Services on one portal: got %v, want ErrConflict naming 10.96.0.10:80/TCP", err)
	}
	if after := listTable(t, ns); after != before {
		t.Errorf("table changed by refused input:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	if err := p.Apply(ctx, one); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if s := listTable(t, ns); !strings.Contains(s, "dnat to 10.1.0.1:8080") || !strings.Contains(s, "dnat to 10.1.0.9:53") || strings.Contains(s, "10.1.0.2") {
		t.Errorf("retry did not converge:\n%s", s)
	}
	if s := p.Stats(); s.Errors != 2 || s.Applies != 2 {
		t.Errorf("stats: got %+v, want 2 applies, 2 errors", s)
	}
}

func TestEnabledAutoNetns(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		argv []string
	}{
		{"iptables mode", []string{"iptables", "-t", "nat", "-N", "KUBE-SERVICES"}},
		{"nftables mode", []string{"nft", "add", "table", "ip", "kube-proxy"}},
		{"iptables-legacy mode", []string{"iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.argv[0]); err != nil {
				t.Skipf("needs %s", tc.argv[0])
			}
			ns := newNS(t)
			p, err := New(Config{Mode: ModeAuto, Interface: "wg0", NetNS: "/var/run/netns/" + ns})
			if err != nil {
				t.Fatal(err)
			}
			if on, err := p.Enabled(ctx); !on || err != nil {
				t.Errorf("fresh namespace: got %v, %v; want enabled", on, err)
			}
			run(t, append([]string{"ip", "netns", "exec", ns}, tc.argv...)...)
			if on, err := p.Enabled(ctx); on || err != nil {
				t.Errorf("with kube-proxy's %s: got %v, %v; want disabled", tc.name, on, err)
			}
		})
	}
}

// TestLegacyChainsRemoved loads what the iptables-era svcproxy left and
// checks the first Apply removes it without touching foreign rules.
func TestLegacyChainsRemoved(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("needs iptables-restore")
	}
	ctx := context.Background()
	ns := newNS(t)
	f, err := os.CreateTemp(t.TempDir(), "rules")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`*nat
:EDGEWIRE-SERVICES - [0:0]
:EDGEWIRE-SVC-AAAAAAAAAAAAAAA - [0:0]
:EDGEWIRE-POSTROUTING - [0:0]
:KEEP - [0:0]
-A PREROUTING -m comment --comment edgewire -j EDGEWIRE-SERVICES
-A PREROUTING -j KEEP
-A OUTPUT -m comment --comment edgewire -j EDGEWIRE-SERVICES
-A POSTROUTING -m comment --comment edgewire -j EDGEWIRE-POSTROUTING
-A EDGEWIRE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j EDGEWIRE-SVC-AAAAAAAAAAAAAAA
-A EDGEWIRE-SVC-AAAAAAAAAAAAAAA -p tcp -j DNAT --to-destination 10.1.0.1:80
COMMIT
*mangle
:EDGEWIRE-MSS - [0:0]
-A FORWARD -m comment --comment edgewire -j EDGEWIRE-MSS
-A EDGEWIRE-MSS -o wg0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
COMMIT
`)
	f.Close()
	run(t, "ip", "netns", "exec", ns, "iptables-restore", f.Name())
	p := nsProxy(t, ns, "wg0")
	if err := p.Apply(ctx, table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))); err != nil {
		t.Fatal(err)
	}
	for _, tb := range []string{"nat", "mangle"} {
		if s := run(t, "ip", "netns", "exec", ns, "iptables-save", "-t", tb); strings.Contains(s, "EDGEWIRE") {
			t.Errorf("%s still has the old chains:\n%s", tb, s)
		}
	}
	if s := run(t, "ip", "netns", "exec", ns, "iptables-save", "-t", "nat"); !strings.Contains(s, "-A PREROUTING -j KEEP") {
		t.Errorf("a foreign rule went with the old chains:\n%s", s)
	}
	if !strings.Contains(listTable(t, ns), "dnat to 10.1.0.1:8080") {
		t.Error("no nftables rules after the migration")
	}
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
}

// TestTraffic programs a ClusterIP in a client namespace and connects to
// it: OUTPUT DNAT must deliver to the server namespace across a veth.
func TestTraffic(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	client, server := newNS(t), newNS(t)
	id := randHex(3)
	cveth, sveth := "ewc"+id, "ews"+id
	run(t, "ip", "link", "add", cveth, "netns", client, "type", "veth", "peer", "name", sveth, "netns", server)
	nsRun := func(ns string, argv ...string) { run(t, append([]string{"ip", "netns", "exec", ns}, argv...)...) }
	nsRun(client, "ip", "addr", "add", "10.99.0.1/24", "dev", cveth)
	nsRun(server, "ip", "addr", "add", "10.99.0.2/24", "dev", sveth)
	nsRun(server, "ip", "addr", "add", "10.99.0.3/24", "dev", sveth)
	nsRun(client, "ip", "link", "set", cveth, "up")
	nsRun(server, "ip", "link", "set", sveth, "up")
	// The agent routes the service range over the overlay; here the veth is the overlay.
	nsRun(client, "ip", "route", "add", "10.96.0.0/16", "dev", cveth)

	var ln net.Listener
	var pc net.PacketConn
	if err := inNS(server, func() (err error) {
		if ln, err = net.Listen("tcp4", ":8080"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", "10.99.0.2:5353")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello %s via %s\n", c.RemoteAddr(), c.LocalAddr())
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()

	p := nsProxy(t, client, cveth)
	t.Cleanup(func() { p.Cleanup(ctx) })
	web := svc("web", "10.96.0.10", services.TCP, 80, ep("10.99.0.2", 8080))
	dns := svc("dns", "10.96.0.10", services.UDP, 53, ep("10.99.0.2", 5353))
	empty := svc("empty", "10.96.0.11", services.TCP, 80)
	if err := p.Apply(ctx, table(t, web, dns, empty)); err != nil {
		t.Fatal(err)
	}

	var tcp, udp net.Conn
	var refused error
	if err := inNS(client, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		if tcp, err = d.Dial("tcp4", "10.96.0.10:80"); err != nil {
			return fmt.Errorf("dial ClusterIP: %w", err)
		}
		if udp, err = d.Dial("udp4", "10.96.0.10:53"); err != nil {
			return err
		}
		// A REJECT answers at once; a DROP would end in the dialer's
		// timeout, which the ECONNREFUSED check below tells apart.
		_, refused = d.Dial("tcp4", "10.96.0.11:80")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	defer udp.Close()

	tcp.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(tcp).ReadString('\n')
	if err != nil {
		t.Fatalf("read from ClusterIP: %v", err)
	}
	if want := "hello 10.99.0.1:"; !strings.HasPrefix(line, want) {
		t.Errorf("server said %q, want prefix %q", line, want)
	}

	udp.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := udp.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := udp.Read(buf)
	if err != nil || string(buf[:n]) != "echo ping" {
		t.Errorf("UDP via ClusterIP: got %q, %v; want %q", buf[:n], err, "echo ping")
	}

	if !errors.Is(refused, syscall.ECONNREFUSED) {
		t.Errorf("dial to a Service without endpoints: got %v, want connection refused", refused)
	}

	// Two endpoints: new connections spread over both; with ClientIP
	// affinity they stick to one.
	two := svc("web", "10.96.0.10", services.TCP, 80, ep("10.99.0.2", 8080), ep("10.99.0.3", 8080))
	if err := p.Apply(ctx, table(t, two, dns, empty)); err != nil {
		t.Fatal(err)
	}
	if got := servedBy(t, client, "10.96.0.10:80", 40); got["10.99.0.2:8080"] < 5 || got["10.99.0.3:8080"] < 5 {
		t.Errorf("40 connections without affinity: served by %v, want at least 5 each", got)
	}
	two.ClientIPAffinity = true
	if err := p.Apply(ctx, table(t, two, dns, empty)); err != nil {
		t.Fatal(err)
	}
	if got := servedBy(t, client, "10.96.0.10:80", 20); len(got) != 1 {
		t.Errorf("20 connections with ClientIP affinity: served by %v, want one endpoint", got)
	}
	if nft := listTable(t, client); !strings.Contains(nft, "update @aff-default/web/tcp__10.99.0.") || !strings.Contains(nft, "timeout 3h") {
		t.Errorf("affinity rules missing or without the default 3h timeout:\n%s", nft)
	}

	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, client)
}

// servedBy connects n times from ns to addr and counts the server
// addresses ("hello <client> via <server>") that answered.
func servedBy(t *testing.T, ns, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	err := inNS(ns, func() error {
		for range n {
			c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err != nil {
				return err
			}
			_, via, _ := strings.Cut(strings.TrimSpace(line), " via ")
			got[via]++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	return got
}

// TestApplyScale measures Apply for 1,000 Services x 10 endpoints. It
// logs timings; it asserts only correctness.
func TestApplyScale(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("slow")
	}
	ctx := context.Background()
	ns := newNS(t)
	p := nsProxy(t, ns, "wg0")
	big := bigTable(t, 1000, 10)

	start := time.Now()
	if err := p.Apply(ctx, big); err != nil {
		t.Fatal(err)
	}
	t.Logf("first apply, 1,000 Services x 10 endpoints: %v", time.Since(start))
	start = time.Now()
	if err := p.Apply(ctx, big); err != nil {
		t.Fatal(err)
	}
	t.Logf("unchanged apply: %v", time.Since(start))

	// One endpoint fewer in one Service.
	svcs := big.All()
	changed := *svcs[0]
	changed.Endpoints = changed.Endpoints[1:]
	svcs[0] = &changed
	start = time.Now()
	if err := p.Apply(ctx, table(t, svcs...)); err != nil {
		t.Fatal(err)
	}
	t.Logf("apply with one endpoint removed: %v", time.Since(start))

	if got, want := count(listTable(t, ns), " . 8080"), 9999; got != want {
		t.Errorf("got %d endpoints, want %d", got, want)
	}
	if s := p.Stats(); s.Applies != 2 || s.Skipped != 1 {
		t.Errorf("stats: got %+v, want 2 applies, 1 skipped", s)
	}
	start = time.Now()
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("cleanup: %v", time.Since(start))
	assertClean(t, ns)
}
