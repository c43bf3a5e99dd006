package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Host is one network namespace of a lab: a node, a public host, a site
// router or the internet namespace.
type Host struct {
	lab  *Lab
	name string
	ns   string
	ip   netip.Prefix
}

// Name returns the host name given to the lab.
func (h *Host) Name() string { return h.name }

// NS returns the namespace name.
func (h *Host) NS() string { return h.ns }

// IP returns the host's main address (a router's WAN address).
func (h *Host) IP() netip.Addr { return h.ip.Addr() }

// Exec runs a short command inside the namespace and returns its combined
// output. Without a deadline on ctx it times out after 20s. The error
// includes the output.
func (h *Host) Exec(ctx context.Context, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("exec: empty command")
	}
	return runCmd(ctx, append([]string{"ip", "netns", "exec", h.ns}, argv...)...)
}

// Output runs a short command inside the namespace and returns its
// standard output alone, for parsing; stderr is in the error.
func (h *Host) Output(ctx context.Context, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("exec: empty command")
	}
	return runCmdStdout(ctx, append([]string{"ip", "netns", "exec", h.ns}, argv...)...)
}

// MustExec is Exec that fails the test on error.
func (h *Host) MustExec(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := h.Exec(context.Background(), argv...)
	if err != nil {
		t.Fatalf("%s: %v", h.name, err)
	}
	return out
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// Ping sends count pings (-c count -W 1 -i 0.2) to addr from inside the
// namespace and returns the number of replies. The error reports only that
// ping could not run; no route to addr counts as zero replies.
func (h *Host) Ping(ctx context.Context, addr netip.Addr, count int) (int, error) {
	if count < 1 {
		return 0, fmt.Errorf("ping %s: count %d, want >= 1", addr, count)
	}
	out, err := h.Exec(ctx, "ping", "-n", "-c", strconv.Itoa(count), "-W", "1", "-i", "0.2", addr.String())
	if m := pingSummary.FindStringSubmatch(out); m != nil {
		return strconv.Atoi(m[2])
	}
	if strings.Contains(out, "unreachable") {
		return 0, nil
	}
	if err == nil {
		err = errors.New("no summary in ping output")
	}
	return 0, fmt.Errorf("ping %s from %s: %w", addr, h.name, err)
}

var counterSeq atomic.Uint64

// Counter is an accounting rule (no target) in a host's filter table.
type Counter struct {
	host    *Host
	chain   string
	comment string
}

// AddCounter inserts, at the top of chain (FORWARD, INPUT or OUTPUT), a
// rule with match (e.g. "-p", "udp", "--dport", "4000") and no target, so
// its packet counter shows whether matching traffic crossed the namespace.
func (h *Host) AddCounter(chain string, match ...string) (*Counter, error) {
	c := &Counter{host: h, chain: chain, comment: "ewc" + strconv.FormatUint(counterSeq.Add(1), 10)}
	argv := append([]string{"iptables", "-w", "-I", chain}, match...)
	argv = append(argv, "-m", "comment", "--comment", c.comment)
	if _, err := h.Exec(context.Background(), argv...); err != nil {
		return nil, fmt.Errorf("add counter in %s: %w", h.name, err)
	}
	return c, nil
}

// Packets returns the number of packets the rule matched so far.
func (c *Counter) Packets() (uint64, error) {
	out, err := c.host.Exec(context.Background(), "iptables", "-w", "-L", c.chain, "-v", "-x", "-n")
	if err != nil {
		return 0, fmt.Errorf("read counter in %s: %w", c.host.name, err)
	}
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(line, "/* "+c.comment+" */") {
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("counter %s not found in %s %s", c.comment, c.host.name, c.chain)
}

// ListenUDP opens a UDP socket inside the namespace (addr like
// "0.0.0.0:4000" or ":0"). The lab closes it on teardown.
func (h *Host) ListenUDP(addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	var c *net.UDPConn
	err = h.inNS(func() (err error) {
		c, err = net.ListenUDP("udp4", ua)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen udp %s in %s: %w", addr, h.name, err)
	}
	return c, h.lab.track(nil, c)
}

// ListenTCP opens a TCP listener inside the namespace. The lab closes it
// on teardown.
func (h *Host) ListenTCP(addr string) (*net.TCPListener, error) {
	ta, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	var ln *net.TCPListener
	err = h.inNS(func() (err error) {
		ln, err = net.ListenTCP("tcp4", ta)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s in %s: %w", addr, h.name, err)
	}
	return ln, h.lab.track(nil, ln)
}

// DialTCP connects from inside the namespace to addr ("ip:port"). The lab
// closes the connection on teardown.
func (h *Host) DialTCP(ctx context.Context, addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := h.inNS(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s from %s: %w", addr, h.name, err)
	}
	return c.(*net.TCPConn), h.lab.track(nil, c)
}

// inNS runs fn on a fresh OS thread switched into the namespace. The thread
// stays locked and exits with its goroutine, so no other goroutine ever runs
// in the lab namespace. Sockets keep the namespace they were created in.
func (h *Host) inNS(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, see above
		f, err := os.Open(filepath.Join(netnsDir, h.ns))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", h.ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Start runs a long-lived process inside the namespace in its own process
// group, with env appended to the test's environment, and appends its
// stdout and stderr to <lab dir>/<host>-<name>.log. The lab kills it on
// teardown.
func (h *Host) Start(name string, env []string, argv ...string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("start: empty command")
	}
	path := filepath.Join(h.lab.dir, h.name+"-"+name+".log")
	logf, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, h.name, err)
	}
	defer logf.Close() // the child holds its own copy
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// No Pdeathsig: it fires when the *thread* that forked the child exits,
	// and ListenUDP/ListenTCP/DialTCP end their namespace-locked threads,
	// which killed agents mid-test. Cleanup and the sweep of dead runs'
	// namespaces kill processes instead.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Process{name: name, cmd: cmd, logPath: path, done: make(chan struct{})}
	// Register before starting so teardown cannot miss it.
	if err := h.lab.track(p, nil); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, h.name, err)
	}
	if err := cmd.Start(); err != nil {
		p.waitErr = err
		close(p.done)
		return nil, fmt.Errorf("start %s in %s: %w", name, h.name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// SendSingleDatagrams makes every interface of h hand the network one
// datagram per packet: the kernel splits UDP GSO batches (and TCP
// segments) before they leave h, as a real NIC puts them on the wire.
// Without it a lab router sees a whole batch as one packet, so a
// per-packet rule (iptables statistic for loss) drops whole batches:
// "5% loss" drops far more than 5% of the bytes. Call it on the nodes of
// a loss scenario.
func (h *Host) SendSingleDatagrams() error {
	out, err := runCmd(context.Background(), "ip", "-n", h.ns, "-o", "link", "show")
	if err != nil {
		return err
	}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if name == "lo" {
			continue
		}
		if _, err := runCmd(context.Background(), "ip", "-n", h.ns, "link", "set", "dev", name, "gso_max_segs", "1"); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
	}
	return nil
}
