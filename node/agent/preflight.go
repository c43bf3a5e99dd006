package agent

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Preflight: what the agent needs from its host is checked before anything
// is spent — a join token's use, the coordinator's record of the node —
// so that an agent that cannot run fails at once with what to do, not
// after it registered a node it then cannot serve. Each check covers a
// part the Env leaves to the real host; in-process tests bring their own.

// hostChecks are the host's answers, a seam for tests.
type hostChecks struct {
	capEff    func() (uint64, error)       // effective capabilities
	openTUN   func() error                 // open /dev/net/tun
	listenUDP func(netip.AddrPort) error   // bind a UDP port and let go
	sysctl    func(string) (string, error) // read /proc/sys/<name>
}

var realHost = hostChecks{
	capEff: readCapEff,
	openTUN: func() error {
		f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		return err
	},
	listenUDP: func(ap netip.AddrPort) error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err == nil {
			c.Close()
		}
		return err
	},
	sysctl: func(name string) (string, error) {
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
		return strings.TrimSpace(string(b)), err
	},
}

// capNetAdmin is CAP_NET_ADMIN's bit (linux/capability.h).
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// preflightPrivileges checks that the agent may make its interface, first
// of all (even the state dir's lock needs root on most hosts).
func preflightPrivileges(env Env, h hostChecks) error {
	if env.TUN == nil {
		caps, err := h.capEff()
		if err != nil {
			return fmt.Errorf("preflight: read capabilities: %w", err)
		}
		if caps&(1<<capNetAdmin) == 0 {
			return errors.New("preflight: edgewire-agent needs CAP_NET_ADMIN to create its WireGuard interface, routes and firewall rules: run it as root (the systemd unit and the DaemonSet do), or grant it the capability (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE)")
		}
		if err := h.openTUN(); err != nil {
			return fmt.Errorf("preflight: cannot open the TUN device /dev/net/tun (%v): load the tun module (modprobe tun), or give the container the device", err)
		}
	}
	return nil
}

// preflightPorts checks that the ports the agent takes are free; onHost
// says the Env leaves the host's interfaces to the real host.
func preflightPorts(cfg Config, env Env, onHost bool, h hostChecks) error {
	if env.Bind == nil && cfg.ListenPort != 0 {
		if err := h.listenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(cfg.ListenPort))); errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("preflight: UDP port %d is in use (another edgewire-agent, or a WireGuard interface?): stop it, or give this agent another --listen-port", cfg.ListenPort)
		} else if err != nil {
			return fmt.Errorf("preflight: UDP port %d: %w", cfg.ListenPort, err)
		}
	}
	if onHost && cfg.DNSAddr.IsValid() {
		// Not bound yet (the agent adds it to its own interface) is
		// fine; taken by another server is not.
		if err := h.listenUDP(netip.AddrPortFrom(cfg.DNSAddr, 53)); errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("preflight: something already serves DNS on %s:53 (EdgeMesh's agent uses 169.254.96.16): stop it, or give this agent another --dns-addr", cfg.DNSAddr)
		}
	}
	return nil
}

// preflightForwarding checks that the host forwards packets for the
// routes it advertises: with forwarding off, traffic to them is dropped
// without a word.
func preflightForwarding(routes []netip.Prefix, onHost bool, h hostChecks) error {
	if !onHost {
		return nil
	}
	var v4, v6 bool
	for _, r := range routes {
		v4, v6 = v4 || r.Addr().Is4(), v6 || r.Addr().Is6()
	}
	for _, c := range []struct {
		need   bool
		sysctl string
	}{{v4, "net.ipv4.ip_forward"}, {v6, "net.ipv6.conf.all.forwarding"}} {
		if !c.need {
			continue
		}
		v, err := h.sysctl(c.sysctl)
		if err != nil {
			return fmt.Errorf("preflight: read %s: %w", c.sysctl, err)
		}
		if v != "1" {
			return fmt.Errorf("preflight: this node advertises routes %v, but the host does not forward packets (%s = %s), so traffic to them would be dropped: run sysctl -w %s=1 and keep it in /etc/sysctl.d/", routes, c.sysctl, v, c.sysctl)
		}
	}
	return nil
}

// readCapEff reads the process's effective capability set.
func readCapEff() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// CheckPrivileges is the preflight check of what creating the interface
// needs, for `edgewire-agent join`: a node that joins and cannot run
// would spend its token for nothing.
func CheckPrivileges() error { return preflightPrivileges(Env{}, realHost) }
