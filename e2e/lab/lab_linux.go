package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	nsPrefix   = "ewlab-"
	netnsDir   = "/var/run/netns"
	wgSockDir  = "/var/run/wireguard"
	cmdTimeout = 20 * time.Second
	logTail    = 60 // lines of each process log shown when a test fails
)

// Public segment served by the internet namespace's bridge.
var (
	publicNet = netip.MustParsePrefix("203.0.113.0/24")
	publicGW  = netip.MustParseAddr("203.0.113.1")
)

// usedIDs holds run ids taken by labs of this process, so concurrent labs
// never share namespace or WireGuard interface names.
var (
	usedIDsMu sync.Mutex
	usedIDs   = map[string]bool{}
)

// Require fails the test when a prerequisite (root, /dev/net/tun, ip,
// iptables, conntrack, ping, wg, sysctl) is missing and CI=true; otherwise
// it skips the test with the reason.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	for _, bin := range []string{"ip", "iptables", "conntrack", "ping", "wg", "sysctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "lab prerequisites missing: " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// NATKind is the NAT a site router applies to traffic leaving its WAN.
type NATKind int

const (
	NATNone       NATKind = iota // routed, no translation
	NATEIM                       // endpoint-independent mapping: iptables MASQUERADE
	NATSymmetric                 // MASQUERADE --random-fully: new port per destination
	NATUDPBlocked                // EIM NAT, and UDP forwarded out of the site is dropped; TCP passes
)

func (k NATKind) String() string {
	switch k {
	case NATNone:
		return "none"
	case NATEIM:
		return "eim"
	case NATSymmetric:
		return "symmetric"
	case NATUDPBlocked:
		return "udp-blocked"
	}
	return "NATKind(" + strconv.Itoa(int(k)) + ")"
}

// Lab is one topology. Its methods call t.Fatal on setup errors, so call
// them from the test goroutine; Host methods that return errors are safe
// from any goroutine.
type Lab struct {
	t     testing.TB
	id    string
	dir   string
	inet  *Host
	bnfOn bool // br_netfilter loaded: switch it off in lab bridges

	// mu guards the fields below.
	mu        sync.Mutex
	closed    bool
	hosts     map[string]*Host
	order     []*Host // creation order, for teardown in reverse
	procs     []*Process
	closers   []io.Closer // sockets opened inside lab namespaces
	nextPub   int         // last octet of the next public address
	nextSite  int         // second octet of the next site LAN
	nextVeth  map[*Host]int
	nextLANIP map[*Site]int
	pods      map[*Host]*podNet // a node's pod bridge, see AddPod
}

// New creates a lab: an "internet" namespace whose bridge serves
// 203.0.113.0/24 (the internet namespace holds 203.0.113.1). It registers
// t.Cleanup to kill all processes, then delete every namespace, and on
// failure to log the tail of every process log.
func New(t testing.TB) *Lab {
	t.Helper()
	sweep(t)
	l := &Lab{
		t:         t,
		id:        newID(),
		dir:       t.TempDir(),
		hosts:     map[string]*Host{},
		nextPub:   2,
		nextSite:  1,
		nextVeth:  map[*Host]int{},
		nextLANIP: map[*Site]int{},
		pods:      map[*Host]*podNet{},
	}
	_, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables")
	l.bnfOn = err == nil
	t.Cleanup(func() {
		if t.Failed() {
			l.logTails()
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab %s teardown: %v", l.id, err)
		}
	})
	l.inet = l.newHost("inet", netip.PrefixFrom(publicGW, publicNet.Bits()))
	l.addBridge(l.inet, "br0", l.inet.ip)
	return l
}

// ID returns the short unique run id (4 hex chars). Use it in WireGuard
// interface names ("ew"+l.ID()+"a"): /var/run/wireguard is shared by all
// namespaces.
func (l *Lab) ID() string { return l.id }

// Dir returns the per-lab temp dir holding process logs and state.
func (l *Lab) Dir() string { return l.dir }

// Internet returns the internet namespace (203.0.113.1) as a Host.
func (l *Lab) Internet() *Host { return l.inet }

// Close kills every process, closes sockets opened in lab namespaces and
// deletes every namespace. It is idempotent and registered with t.Cleanup.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, closers, order := l.procs, l.closers, l.order
	l.mu.Unlock()

	for _, p := range procs {
		p.Kill()
	}
	for _, c := range closers {
		c.Close() // the test may have closed it already
	}
	var errs []error
	for i := len(order) - 1; i >= 0; i-- {
		if err := deleteNS(order[i].ns); err != nil {
			errs = append(errs, err)
		}
	}
	usedIDsMu.Lock()
	delete(usedIDs, l.id)
	usedIDsMu.Unlock()
	return errors.Join(errs...)
}

func (l *Lab) logTails() {
	l.mu.Lock()
	procs := l.procs
	l.mu.Unlock()
	keep := os.Getenv("EDGEWIRE_LAB_LOGS") // a directory to keep failed tests' whole logs in
	if keep != "" {
		keep = filepath.Join(keep, strings.NewReplacer("/", "_").Replace(l.t.Name()))
		if err := os.MkdirAll(keep, 0o755); err != nil {
			l.t.Logf("EDGEWIRE_LAB_LOGS: %v", err)
			keep = ""
		}
	}
	for _, p := range procs {
		if keep != "" {
			if err := os.WriteFile(filepath.Join(keep, filepath.Base(p.LogPath())), []byte(p.Log()), 0o644); err != nil {
				l.t.Logf("EDGEWIRE_LAB_LOGS: %v", err)
			}
		}
		lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
		if len(lines) > logTail {
			lines = lines[len(lines)-logTail:]
		}
		l.t.Logf("--- tail of %s ---\n%s", p.LogPath(), strings.Join(lines, "\n"))
	}
}

// AddPublicHost adds a namespace with one interface (eth0) on the internet
// bridge, the next free 203.0.113.x/24 and a default route via 203.0.113.1.
func (l *Lab) AddPublicHost(name string) *Host {
	l.t.Helper()
	h := l.newHost(name, l.allocPublic())
	l.plug(l.inet, "br0", h, "eth0", publicGW)
	return h
}

// Site is a NAT router namespace with a LAN bridge behind it.
type Site struct {
	lab    *Lab
	router *Host
	kind   NATKind
	lan    netip.Prefix // 10.n.0.0/24; the router holds 10.n.0.1
	parent *Site        // the site whose LAN this one's WAN is on, nil on the internet
}

// DropUDP makes the site's router drop percent % of the UDP it forwards
// either way, at random, each packet on its own, and returns a function
// that removes the rule. For drops per datagram rather than per GSO
// batch, the nodes behind it and their peers must SendSingleDatagrams.
func (s *Site) DropUDP(percent int) (undo func()) {
	l := s.lab
	l.t.Helper()
	if percent < 1 || percent > 99 {
		l.t.Fatalf("site %s: drop %d%% of UDP, want 1-99", s.router.name, percent)
	}
	rule := []string{"FORWARD", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%.2f", float64(percent)/100), "-j", "DROP"}
	l.run(append([]string{"ip", "netns", "exec", s.router.ns, "iptables", "-w", "-I"}, rule...)...)
	return func() {
		if _, err := runCmd(context.Background(), append([]string{"ip", "netns", "exec", s.router.ns, "iptables", "-w", "-D"}, rule...)...); err != nil {
			l.t.Errorf("site %s: remove UDP drop: %v", s.router.name, err)
		}
	}
}

// SetUplinkMTU sets the MTU of the link between a nested site and its
// parent (the parent's LAN bridge, its ports and this router's WAN): two
// L3 hops, so a larger packet is fragmented or refused with ICMP, never
// dropped by a switch. Every site on the parent's LAN shares the link.
func (s *Site) SetUplinkMTU(mtu int) {
	l := s.lab
	l.t.Helper()
	if s.parent == nil {
		l.t.Fatalf("site %s: uplink MTU: not a nested site", s.router.name)
	}
	pr := s.parent.router
	out, err := runCmd(context.Background(), "ip", "-n", pr.ns, "-o", "link", "show")
	if err != nil {
		l.t.Fatal(err)
	}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if name != "lo" && name != "wan" {
			l.run("ip", "-n", pr.ns, "link", "set", "dev", name, "mtu", strconv.Itoa(mtu))
		}
	}
	l.run("ip", "-n", s.router.ns, "link", "set", "dev", "wan", "mtu", strconv.Itoa(mtu))
}

// AddSite adds a site whose router's WAN ("wan") sits on the internet
// bridge with the next free 203.0.113.x and whose LAN is 10.n.0.1/24.
func (l *Lab) AddSite(name string, kind NATKind) *Site {
	l.t.Helper()
	return l.addSite(name, kind, nil, SiteOptions{})
}

// AddSiteLAN adds a site as AddSite does, with the LAN lan (a masked
// IPv4 /24; .1 is the router) instead of the next 10.n.0.0/24. Two sites
// may have the same LAN, as home networks do (192.168.1.0/24).
func (l *Lab) AddSiteLAN(name string, kind NATKind, lan netip.Prefix) *Site {
	l.t.Helper()
	return l.addSite(name, kind, nil, SiteOptions{LAN: lan})
}

// SiteOptions vary a site from AddSite's.
type SiteOptions struct {
	// LAN instead of the next 10.n.0.0/24 (a masked IPv4 /24).
	LAN netip.Prefix
	// OpenWAN leaves out the router's drop of unsolicited WAN input, as
	// many routers do: a peer's early probe then leaves a conntrack entry
	// that makes MASQUERADE move the site's mapping to another port.
	OpenWAN bool
	// ISP puts a routed hop (the site's ISP, namespace "isp"+name)
	// between the internet bridge and the site's router, whose WAN then
	// holds 198.18.n.2/24 behind the ISP's 198.18.n.1, as on the real
	// internet, where two sites are never adjacent hops: a packet with
	// TTL 2 from a node leaves through its own NAT and dies at its ISP.
	ISP bool
}

// AddSiteWith adds a site as AddSite does, varied by opts.
func (l *Lab) AddSiteWith(name string, kind NATKind, opts SiteOptions) *Site {
	l.t.Helper()
	return l.addSite(name, kind, nil, opts)
}

// AddSite adds a site whose WAN sits on this site's LAN (double NAT, e.g.
// a home NAT behind CGNAT), with default route via this site's router.
func (s *Site) AddSite(name string, kind NATKind) *Site {
	s.lab.t.Helper()
	return s.lab.addSite(name, kind, s, SiteOptions{})
}

func (l *Lab) addSite(name string, kind NATKind, parent *Site, opts SiteOptions) *Site {
	l.t.Helper()
	if kind < NATNone || kind > NATUDPBlocked {
		l.t.Fatalf("add site %s: unknown NAT kind %v", name, kind)
	}
	lan := opts.LAN
	if lan.IsValid() && (!lan.Addr().Is4() || lan.Bits() != 24 || lan != lan.Masked()) {
		l.t.Fatalf("add site %s: LAN %s, want a masked IPv4 /24", name, lan)
	}
	if opts.ISP && parent != nil {
		l.t.Fatalf("add site %s: an ISP hop is for sites on the internet", name)
	}
	l.mu.Lock()
	n := l.nextSite
	l.nextSite++
	l.mu.Unlock()
	if n > 254 {
		l.t.Fatalf("add site %s: out of site LANs", name)
	}

	var r *Host
	switch {
	case opts.ISP:
		// The ISP routes 198.18.n.0/24 to the site; the internet
		// namespace, every public host's gateway, routes it to the ISP.
		isp := l.newHost("isp"+name, l.allocPublic())
		l.plug(l.inet, "br0", isp, "wan", publicGW)
		down := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(n), 1}), 24)
		l.addBridge(isp, "cust", down)
		l.run("ip", "netns", "exec", isp.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		l.run("ip", "-n", l.inet.ns, "route", "add", down.Masked().String(), "via", isp.ip.Addr().String())
		l.run("ip", "netns", "exec", l.inet.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		r = l.newHost(name, netip.PrefixFrom(down.Addr().Next(), 24))
		l.plug(isp, "cust", r, "wan", down.Addr())
	case parent == nil:
		r = l.newHost(name, l.allocPublic())
		l.plug(l.inet, "br0", r, "wan", publicGW)
	default:
		r = l.newHost(name, parent.allocLAN())
		l.plug(parent.router, "lan", r, "wan", parent.gateway())
	}
	if !lan.IsValid() {
		lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n), 0, 0}), 24)
	}
	s := &Site{lab: l, router: r, kind: kind, lan: lan, parent: parent}
	l.addBridge(r, "lan", netip.PrefixFrom(s.gateway(), 24))

	ipt := func(args ...string) {
		l.run(append([]string{"ip", "netns", "exec", r.ns, "iptables", "-w"}, args...)...)
	}
	l.run("ip", "netns", "exec", r.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// Drop unsolicited input on the WAN as home routers do; without it a
	// peer's early probe leaves a conntrack entry that makes MASQUERADE
	// pick another port and breaks hole punching (DESIGN.md, "The lab").
	if !opts.OpenWAN {
		ipt("-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP")
	}
	if kind != NATNone {
		ipt(append([]string{"-t", "nat", "-A", "POSTROUTING"}, s.masqRule()...)...)
	}
	if kind == NATUDPBlocked {
		ipt("-A", "FORWARD", "-i", "lan", "-o", "wan", "-p", "udp", "-j", "DROP")
	}
	return s
}

// AddNode adds a host with one interface (eth0) on the site's LAN bridge,
// the next free 10.n.0.x/24 and a default route via the site router.
func (s *Site) AddNode(name string) *Host {
	s.lab.t.Helper()
	h := s.lab.newHost(name, s.allocLAN())
	s.lab.plug(s.router, "lan", h, "eth0", s.gateway())
	return h
}

// Router returns the router namespace as a Host; its IP is the WAN address.
func (s *Site) Router() *Host { return s.router }

// PublicIP returns the router's WAN address (for a nested site, its
// address on the parent LAN).
func (s *Site) PublicIP() netip.Addr { return s.router.ip.Addr() }

// LAN returns the site's LAN prefix, 10.n.0.0/24.
func (s *Site) LAN() netip.Prefix { return s.lan }

// Kind returns the site's NAT kind.
func (s *Site) Kind() NATKind { return s.kind }

func (s *Site) gateway() netip.Addr { return s.lan.Addr().Next() }

func (s *Site) allocLAN() netip.Prefix {
	l := s.lab
	l.mu.Lock()
	x := l.nextLANIP[s] + 2 // .1 is the router
	l.nextLANIP[s]++
	l.mu.Unlock()
	if x > 254 {
		l.t.Fatalf("site %s: out of LAN addresses", s.router.name)
	}
	a := s.lan.Addr().As4()
	a[3] = byte(x)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}

func (l *Lab) allocPublic() netip.Prefix {
	l.mu.Lock()
	x := l.nextPub
	l.nextPub++
	l.mu.Unlock()
	if x > 254 {
		l.t.Fatal("out of public addresses")
	}
	a := publicNet.Addr().As4()
	a[3] = byte(x)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}

// newHost creates the namespace for a host and brings lo up.
func (l *Lab) newHost(name string, ip netip.Prefix) *Host {
	l.t.Helper()
	if !validName(name) {
		l.t.Fatalf("host name %q: want 1-20 chars of [a-z0-9]", name)
	}
	h := &Host{lab: l, name: name, ns: fmt.Sprintf("%s%d-%s-%s", nsPrefix, os.Getpid(), l.id, name), ip: ip}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.t.Fatalf("add host %s: lab is closed", name)
	}
	if l.hosts[name] != nil {
		l.mu.Unlock()
		l.t.Fatalf("add host %s: name already used in this lab", name)
	}
	l.hosts[name] = h
	l.order = append(l.order, h)
	l.mu.Unlock()
	l.run("ip", "netns", "add", h.ns)
	l.run("ip", "-n", h.ns, "link", "set", "lo", "up")
	return h
}

func (l *Lab) addBridge(h *Host, br string, addr netip.Prefix) {
	l.t.Helper()
	l.run("ip", "-n", h.ns, "link", "add", br, "type", "bridge")
	l.run("ip", "-n", h.ns, "addr", "add", addr.String(), "dev", br)
	l.run("ip", "-n", h.ns, "link", "set", br, "up")
	if l.bnfOn {
		// A switch does not firewall: keep bridged frames out of iptables.
		l.run("ip", "netns", "exec", h.ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
	}
}

// plug connects h to bridge br in namespace sw with a veth created inside
// sw, so no interface ever appears in the root namespace; h's end is named
// ifname and gets h's address and a default route via gw.
func (l *Lab) plug(sw *Host, br string, h *Host, ifname string, gw netip.Addr) {
	l.t.Helper()
	l.mu.Lock()
	port := "v" + strconv.Itoa(l.nextVeth[sw])
	l.nextVeth[sw]++
	l.mu.Unlock()
	l.run("ip", "-n", sw.ns, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", h.ns)
	l.run("ip", "-n", sw.ns, "link", "set", port, "master", br, "up")
	l.run("ip", "-n", h.ns, "addr", "add", h.ip.String(), "dev", ifname)
	l.run("ip", "-n", h.ns, "link", "set", ifname, "up")
	l.run("ip", "-n", h.ns, "route", "add", "default", "via", gw.String())
}

// run executes a setup command and fails the test if it fails.
func (l *Lab) run(argv ...string) {
	l.t.Helper()
	if _, err := runCmd(context.Background(), argv...); err != nil {
		l.t.Fatal(err)
	}
}

func (l *Lab) track(p *Process, c io.Closer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab is closed")
	}
	if p != nil {
		l.procs = append(l.procs, p)
	}
	if c != nil {
		l.closers = append(l.closers, c)
	}
	return nil
}

// runCmd runs argv with a default timeout unless ctx has a deadline and
// returns its combined output; the error carries the output.
func runCmd(ctx context.Context, argv ...string) (string, error) {
	return runCommand(ctx, true, argv...)
}

// runCmdStdout is runCmd returning stdout alone (stderr goes into the
// error): for commands whose output is parsed, since a combined pipe can
// put a stderr line in the middle of a stdout line.
func runCmdStdout(ctx context.Context, argv ...string) (string, error) {
	return runCommand(ctx, false, argv...)
}

func runCommand(ctx context.Context, combined bool, argv ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cmdTimeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = time.Second
	var out []byte
	var stderr strings.Builder
	var err error
	if combined {
		out, err = cmd.CombinedOutput()
	} else {
		cmd.Stderr = &stderr
		out, err = cmd.Output()
	}
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)+stderr.String()))
	}
	return string(out), nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 20 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// newID picks a run id no live lab on this machine uses: not in this
// process, not in any lab namespace name, not in any WireGuard socket name.
func newID() string {
	usedIDsMu.Lock()
	defer usedIDsMu.Unlock()
	names, _ := os.ReadDir(netnsDir)
	socks, _ := os.ReadDir(wgSockDir)
	for range 1000 {
		var b [2]byte
		rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		taken := usedIDs[id]
		for _, e := range names {
			taken = taken || strings.HasPrefix(e.Name(), nsPrefix) && strings.Contains(e.Name(), "-"+id+"-")
		}
		for _, e := range socks {
			taken = taken || strings.HasPrefix(e.Name(), "ew"+id)
		}
		if !taken {
			usedIDs[id] = true
			return id
		}
	}
	panic("lab: no free run id")
}

// sweep deletes namespaces of earlier runs whose test process is gone,
// killing what still runs in them, then removes WireGuard sockets of those
// runs that nothing listens on.
func sweep(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return // no namespaces at all
	}
	live := map[string]bool{} // run ids of live labs
	for _, e := range entries {
		pid, id, ok := parseNSName(e.Name())
		if !ok {
			continue
		}
		if pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			live[id] = true
			continue
		}
		out, _ := runCmd(context.Background(), "ip", "netns", "pids", e.Name())
		for _, f := range strings.Fields(out) {
			if p, err := strconv.Atoi(f); err == nil && p > 1 {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if err := deleteNS(e.Name()); err != nil {
			t.Logf("sweep leftover namespace: %v", err)
		}
	}
	socks, _ := os.ReadDir(wgSockDir)
	for _, e := range socks {
		n := e.Name()
		if !strings.HasPrefix(n, "ew") || !strings.HasSuffix(n, ".sock") || len(n) < 6 {
			continue
		}
		if _, err := hex.DecodeString(n[2:6]); err != nil || live[n[2:6]] {
			continue
		}
		p := filepath.Join(wgSockDir, n)
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			os.Remove(p)
		}
	}
}

// parseNSName splits "ewlab-<pid>-<id>-<host>".
func parseNSName(name string) (pid int, id string, ok bool) {
	rest, ok := strings.CutPrefix(name, nsPrefix)
	if !ok {
		return 0, "", false
	}
	parts := strings.SplitN(rest, "-", 3)
	if len(parts) != 3 {
		return 0, "", false
	}
	pid, err := strconv.Atoi(parts[0])
	if err != nil || pid <= 0 {
		return 0, "", false
	}
	return pid, parts[1], true
}

func deleteNS(ns string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := runCmd(context.Background(), "ip", "netns", "del", ns)
	return err
}

// Eventually polls cond every interval until it returns nil or timeout
// passes, and returns cond's last error.
func Eventually(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().Add(interval).After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}
