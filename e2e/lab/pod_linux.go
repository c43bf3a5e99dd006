package lab

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// podBridge is the bridge in a node's namespace that its pods hang off.
const podBridge = "pods"

// podNet is a node's pod network: the CIDR and how many pods it has.
type podNet struct {
	cidr netip.Prefix
	n    int // pods so far
}

// AddPod adds a "pod" behind node h: a namespace whose eth0 sits on a
// bridge ("pods") in h's namespace, as a CNI bridge plugin would set it up.
// The first AddPod on h creates the bridge with the first address of cidr
// (an IPv4 prefix of at most /30, e.g. 10.244.2.0/24 -> 10.244.2.1) and
// turns on IP forwarding in h; every pod gets the next free address of
// cidr and a default route via the bridge. Later calls on h must pass the
// same cidr.
func (h *Host) AddPod(name string, cidr netip.Prefix) *Host {
	l := h.lab
	l.t.Helper()
	if !cidr.Addr().Is4() || cidr != cidr.Masked() || cidr.Bits() > 30 {
		l.t.Fatalf("add pod %s on %s: pod CIDR %s, want a masked IPv4 prefix of at most /30", name, h.name, cidr)
	}
	l.mu.Lock()
	pn := l.pods[h]
	first := pn == nil
	if first {
		pn = &podNet{cidr: cidr}
		l.pods[h] = pn
	}
	n := pn.n
	pn.n++
	l.mu.Unlock()
	if pn.cidr != cidr {
		l.t.Fatalf("add pod %s on %s: pod CIDR %s, but %s has pods in %s", name, h.name, cidr, h.name, pn.cidr)
	}
	base := cidr.Addr().As4()
	start := binary.BigEndian.Uint32(base[:])
	size := uint32(1) << (32 - cidr.Bits())
	if uint32(n)+2 >= size-1 { // .0 network, .1 bridge, last broadcast
		l.t.Fatalf("add pod %s on %s: pod CIDR %s is full", name, h.name, cidr)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], start+2+uint32(n))
	ip := netip.AddrFrom4(b)
	gw := cidr.Addr().Next()
	if first {
		l.addBridge(h, podBridge, netip.PrefixFrom(gw, cidr.Bits()))
		l.run("ip", "netns", "exec", h.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	pod := l.newHost(name, netip.PrefixFrom(ip, cidr.Bits()))
	l.plug(h, podBridge, pod, "eth0", gw)
	return pod
}

// CNIPluginDir is where Debian's containernetworking-plugins installs the
// reference plugins.
const CNIPluginDir = "/usr/lib/cni"

// CNITool returns the path of cnitool (hack/cni/build.sh puts it in
// .cache/tools); a missing one fails the test under CI=true and skips it
// elsewhere, as a missing lab tool does.
func CNITool(t testing.TB) string {
	t.Helper()
	path := os.Getenv("EDGEWIRE_CNITOOL")
	if path == "" {
		dir, err := os.Getwd()
		for err == nil {
			if _, serr := os.Stat(filepath.Join(dir, "hack", "cni", "build.sh")); serr == nil {
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				err = errors.New("repository root not found")
			}
			dir = parent
		}
		if err == nil {
			path = filepath.Join(dir, ".cache", "tools", "cnitool")
		}
	}
	for _, p := range []string{path, filepath.Join(CNIPluginDir, "bridge"), filepath.Join(CNIPluginDir, "host-local")} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("CNI tools unavailable (make cni; apt install containernetworking-plugins): %v", err)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return path
}

// AddCNIPod adds a "pod" behind node h the way a container runtime does:
// it creates the pod's namespace and runs `cnitool add <network>` inside
// h's namespace with the configuration in confDir and the plugins in
// CNIPluginDir, so the plugins make its interface, address and routes.
// The pod's address is the one the plugins' result gives. At cleanup the
// plugins are run again with DEL (before the lab removes the namespaces).
func (h *Host) AddCNIPod(name, cnitool, network, confDir string) *Host {
	l := h.lab
	l.t.Helper()
	pod := l.newHost(name, netip.Prefix{})
	env := []string{"CNI_PATH=" + CNIPluginDir, "NETCONFPATH=" + confDir}
	nsPath := filepath.Join("/var/run/netns", pod.ns)
	out, err := h.Exec(context.Background(), append([]string{"env"}, append(env, cnitool, "add", network, nsPath)...)...)
	if err != nil {
		l.t.Fatalf("add pod %s on %s: cnitool add: %v", name, h.name, err)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
		l.t.Fatalf("add pod %s on %s: CNI result %q: %v", name, h.name, out, err)
	}
	ip, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		l.t.Fatalf("add pod %s on %s: CNI result address %q: %v", name, h.name, res.IPs[0].Address, err)
	}
	pod.ip = ip
	l.t.Cleanup(func() {
		if out, err := h.Exec(context.Background(), append([]string{"env"}, append(env, cnitool, "del", network, nsPath)...)...); err != nil {
			l.t.Logf("del pod %s on %s: cnitool del: %v: %s", name, h.name, err, out)
		}
	})
	return pod
}
