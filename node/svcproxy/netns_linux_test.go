package svcproxy

// Integration tests against the real iptables, each inside network
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

	"github.com/edgewire/edgewire/node/services"
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
	for _, bin := range []string{"ip", "iptables", "iptables-save", "iptables-restore"} {
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

// nsExec is a Config.Exec that runs every command inside ns.
func nsExec(ns string) func(ctx context.Context, argv ...string) ([]byte, error) {
	return func(ctx context.Context, argv ...string) ([]byte, error) {
		argv = append([]string{"netns", "exec", ns}, argv...)
		return exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
	}
}

func nsProxy(t *testing.T, ns, iface string) *Proxy {
	t.Helper()
	p, err := New(Config{Mode: ModeOn, Interface: iface, Exec: nsExec(ns)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func save(t *testing.T, ns, table string) string {
	t.Helper()
	return run(t, "ip", "netns", "exec", ns, "iptables-save", "-t", table)
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

func TestApplyIdempotentAndStale(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	ns := newNS(t)
	p := nsProxy(t, ns, "wg0")
	three := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080), ep("10.1.0.3", 8080)),
		svc("empty", "10.96.0.11", services.UDP, 53))

	for range 2 {
		if err := p.Apply(ctx, three); err != nil {
			t.Fatal(err)
		}
	}
	if s := p.Stats(); s.Applies != 1 || s.Skipped != 1 || s.Errors != 0 {
		t.Errorf("stats after two applies: got %+v, want 1 applied, 1 skipped", s)
	}
	nat, filter, mangle := save(t, ns, "nat"), save(t, ns, "filter"), save(t, ns, "mangle")
	for _, c := range []struct{ text, sub string }{
		{nat, "-A PREROUTING -m comment --comment edgewire -j EDGEWIRE-SERVICES\n"},
		{nat, "-A OUTPUT -m comment --comment edgewire -j EDGEWIRE-SERVICES\n"},
		{nat, "-A POSTROUTING -m comment --comment edgewire -j EDGEWIRE-POSTROUTING\n"},
		{nat, ":" + chainName(prefixSVC, "default/web//TCP") + " "},
		{nat, "-j MASQUERADE\n"},
		{filter, "-A OUTPUT -m comment --comment edgewire -j EDGEWIRE-SERVICES\n"},
		{filter, "-A FORWARD -m comment --comment edgewire -j EDGEWIRE-SERVICES\n"},
		{filter, "-d 10.96.0.11/32 -p udp"},
		{mangle, "-A FORWARD -m comment --comment edgewire -j EDGEWIRE-MSS\n"},
		{mangle, "-A OUTPUT -m comment --comment edgewire -j EDGEWIRE-MSS\n"},
	} {
		if n := count(c.text, c.sub); n != 1 {
			t.Errorf("%q appears %d times, want 1", c.sub, n)
		}
	}
	if n := count(nat, "-j DNAT"); n != 3 {
		t.Errorf("got %d DNAT rules, want 3:\n%s", n, nat)
	}

	// Endpoint 10.1.0.3 goes away: its SEP chain must go with it.
	gone := chainName(prefixSEP, "default/web//TCP/10.1.0.3:8080")
	if !strings.Contains(nat, ":"+gone+" ") {
		t.Fatalf("SEP chain %s missing before the change", gone)
	}
	two := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)),
		svc("empty", "10.96.0.11", services.UDP, 53))
	if err := p.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	nat = save(t, ns, "nat")
	if strings.Contains(nat, gone) {
		t.Errorf("stale chain %s still present:\n%s", gone, nat)
	}
	if n := count(nat, "-j DNAT"); n != 2 {
		t.Errorf("got %d DNAT rules, want 2", n)
	}
	if n := count(nat, "-A PREROUTING "); n != 1 {
		t.Errorf("got %d PREROUTING rules after a change, want 1", n)
	}

	// Someone deletes a jump (a firewall reload): the next apply restores it once.
	run(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "edgewire", "-j", chainServices)
	if err := p.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	if n := count(save(t, ns, "nat"), "-A PREROUTING -m comment --comment edgewire -j EDGEWIRE-SERVICES\n"); n != 1 {
		t.Errorf("PREROUTING jump present %d times after repair, want 1", n)
	}

	// A restarted agent (new Proxy) removes chains its predecessor left.
	p2 := nsProxy(t, ns, "wg0")
	one := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))
	if err := p2.Apply(ctx, one); err != nil {
		t.Fatal(err)
	}
	nat = save(t, ns, "nat")
	if n := count(nat, ":"+prefixSEP); n != 1 {
		t.Errorf("got %d SEP chains after restart, want 1:\n%s", n, nat)
	}
	if n := count(save(t, ns, "filter"), "-j REJECT"); n != 0 {
		t.Errorf("got %d REJECT rules for a removed Service, want 0", n)
	}

	if err := p2.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
}

func assertClean(t *testing.T, ns string) {
	t.Helper()
	for _, table := range []string{"nat", "filter", "mangle"} {
		if s := save(t, ns, table); strings.Contains(s, "EDGEWIRE") {
			t.Errorf("%s table still mentions EDGEWIRE after Cleanup:\n%s", table, s)
		}
	}
}

// TestApplyFailureKeepsRules makes the nat restore fail (a foreign rule
// still references a chain the new rules drop) and checks the previous
// rules stay in force.
func TestApplyFailureKeepsRules(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	ns := newNS(t)
	p := nsProxy(t, ns, "wg0")
	t.Cleanup(func() { p.Cleanup(ctx) })
	two := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)))
	if err := p.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	before := save(t, ns, "nat")
	pinned := chainName(prefixSEP, "default/web//TCP/10.1.0.2:8080")
	run(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-N", "PIN")
	run(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "PIN", "-j", pinned)

	one := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))
	err := p.Apply(ctx, one)
	if err == nil {
		t.Fatal("apply succeeded; want the nat restore to fail")
	}
	t.Logf("error (expected): %v", err)
	if !strings.Contains(err.Error(), "iptables-restore nat") {
		t.Errorf("error %q does not name the restore and table", err)
	}
	if n := count(save(t, ns, "nat"), "-j DNAT"); n != 2 || count(before, "-j DNAT") != 2 {
		t.Errorf("got %d DNAT rules after the failed apply, want the previous 2", n)
	}
	run(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-F", "PIN")
	if err := p.Apply(ctx, one); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if s := save(t, ns, "nat"); strings.Contains(s, pinned) || count(s, "-j DNAT") != 1 {
		t.Errorf("retry did not converge:\n%s", s)
	}
	if s := p.Stats(); s.Errors != 1 || s.Applies != 2 {
		t.Errorf("stats: got %+v, want 2 applies, 1 error", s)
	}
}

func TestEnabledAutoNetns(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	ns := newNS(t)
	p, err := New(Config{Mode: ModeAuto, Interface: "wg0", Exec: nsExec(ns)})
	if err != nil {
		t.Fatal(err)
	}
	if on, err := p.Enabled(ctx); !on || err != nil {
		t.Errorf("fresh namespace: got %v, %v; want enabled", on, err)
	}
	run(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-N", "KUBE-SERVICES")
	if on, err := p.Enabled(ctx); on || err != nil {
		t.Errorf("with KUBE-SERVICES: got %v, %v; want disabled", on, err)
	}
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
	nsRun(client, "ip", "link", "set", cveth, "up")
	nsRun(server, "ip", "link", "set", sveth, "up")
	// The agent routes the service range over the overlay; here the veth is the overlay.
	nsRun(client, "ip", "route", "add", "10.96.0.0/16", "dev", cveth)

	var ln net.Listener
	var pc net.PacketConn
	if err := inNS(server, func() (err error) {
		if ln, err = net.Listen("tcp4", "10.99.0.2:8080"); err != nil {
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
			fmt.Fprintf(c, "hello %s\n", c.RemoteAddr())
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
		start := time.Now()
		_, refused = d.Dial("tcp4", "10.96.0.11:80")
		if d := time.Since(start); d > 2*time.Second {
			return fmt.Errorf("dial to a Service without endpoints took %v; want a fast REJECT", d)
		}
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

	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, client)
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

	nat := save(t, ns, "nat")
	if got, want := count(nat, "-j DNAT"), 9999; got != want {
		t.Errorf("got %d DNAT rules, want %d", got, want)
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
