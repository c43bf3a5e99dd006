package svcpath

import (
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/types/services"
)

var (
	bridgeIP = netip.MustParseAddr("172.17.0.2")
	lanIP    = netip.MustParseAddr("192.168.1.10")
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// The client is node c (Kubernetes node edge-c), which has a local pod at
// 172.17.0.2 as a trap; a and b are peers with the same LAN and bridge
// addresses.
var (
	self  = Node{Name: "c", KubeNode: "edge-c", Overlay: ip("100.64.0.3"), Routes: []netip.Prefix{pfx("10.244.3.0/24")}, Online: true}
	peers = []Node{
		{Name: "a", KubeNode: "edge-a", Overlay: ip("100.64.0.1"), Routes: []netip.Prefix{pfx("10.244.1.0/24")}, Online: true},
		{Name: "b", KubeNode: "edge-b", Overlay: ip("100.64.0.2"), Routes: []netip.Prefix{pfx("10.244.2.0/24")}, Online: true},
		{Name: "gw", Overlay: ip("100.64.0.4"), Routes: []netip.Prefix{pfx("10.8.0.0/16")}, Online: true},
		{Name: "down", KubeNode: "edge-down", Overlay: ip("100.64.0.5"), Online: false},
		{Name: "v6only", KubeNode: "edge-v6", Online: true},
	}
)

func ep(node string, hostNet bool, addrs ...string) services.Endpoint {
	e := services.Endpoint{NodeName: node, HostNetwork: hostNet, Ports: map[string]uint16{"http": 8080, "dns": 5353}}
	for _, a := range addrs {
		e.Addresses = append(e.Addresses, ip(a))
	}
	return e
}

func table(t *testing.T, eps ...services.Endpoint) *services.Table {
	t.Helper()
	tb, err := services.NewTable([]*services.Service{{
		Namespace: "demo", Name: "web", ClusterIPs: []netip.Addr{ip("10.96.0.10")},
		Ports:     []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}, {Name: "dns", Protocol: services.UDP, Port: 53}},
		Endpoints: eps,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name   string
		ep     services.Endpoint
		path   Path
		node   string
		target netip.Addr
		why    string // in Why
	}{
		{"on this node", ep("edge-c", false, "172.17.0.2"), Local, "c", bridgeIP, "this node"},
		{"pod CIDR of its node", ep("edge-a", false, "10.244.1.7"), L3, "a", ip("10.244.1.7"), "routes"},
		// The same bridge address as the client's local pod: never DNATed
		// to the address, which would land on the trap.
		{"bridge address of a peer", ep("edge-a", false, "172.17.0.2"), Forward, "a", ip("100.64.0.1"), "forwarded"},
		{"in another node's pod CIDR, but the node name wins", ep("edge-b", false, "10.244.1.7"), Forward, "b", ip("100.64.0.2"), "forwarded"},
		{"hostNetwork on a peer", ep("edge-b", true, "192.168.1.10"), Host, "b", ip("100.64.0.2"), "hostNetwork"},
		{"hostNetwork on this node", ep("edge-c", true, "192.168.1.10"), Local, "c", lanIP, "this node"},
		{"a cloud node a gateway routes", ep("cloud-1", false, "10.8.3.4"), L3, "gw", ip("10.8.3.4"), "gw routes"},
		{"a node outside the overlay nobody routes", ep("cloud-2", false, "10.9.3.4"), None, "", netip.Addr{}, "not in the overlay"},
		{"no node name", ep("", false, "203.0.113.5"), Address, "", ip("203.0.113.5"), "as given"},
		{"no node name, routed", ep("", false, "10.244.2.9"), L3, "b", ip("10.244.2.9"), "b routes"},
		{"offline node, not routable", ep("edge-down", false, "172.17.0.2"), None, "down", netip.Addr{}, "offline"},
		{"node without an IPv4 overlay address", ep("edge-v6", false, "172.17.0.2"), None, "v6only", netip.Addr{}, "no IPv4 overlay"},
		{"IPv6 only", ep("edge-a", false, "fd00::1"), None, "", netip.Addr{}, "IPv6"},
		{"first IPv4 address of several", ep("edge-a", false, "fd00::1", "10.244.1.9"), L3, "a", ip("10.244.1.9"), "routes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := Resolve(table(t, tt.ep), self, peers)
			if len(ds) != 1 {
				t.Fatalf("got %d decisions, want 1", len(ds))
			}
			d := ds[0]
			if d.Path != tt.path || d.Node != tt.node || d.Target != tt.target || !strings.Contains(d.Why, tt.why) {
				t.Errorf("got %s via %q to %v (%s); want %s via %q to %v (%q)", d.Path, d.Node, d.Target, d.Why, tt.path, tt.node, tt.target, tt.why)
			}
			if d.Service != "demo/web" || d.KubeNode != tt.ep.NodeName {
				t.Errorf("decision names %q on %q", d.Service, d.KubeNode)
			}
		})
	}
}

// The seed's case: a ClusterIP backed by pods at 172.17.0.2 on a and on
// b, asked from c, which has its own 172.17.0.2. The rules send each to
// its own node's forwarder, never to the address; DNS answers neither.
func TestRewriteSameAddressOnTwoNodes(t *testing.T) {
	tb := table(t,
		ep("edge-a", false, "172.17.0.2"),
		ep("edge-b", false, "172.17.0.2"),
		ep("edge-b", true, "192.168.1.10"),
		ep("edge-a", false, "10.244.1.7"),
		ep("edge-gone", false, "10.99.0.1"))
	ds := Resolve(tb, self, peers)
	fw := Forwardings(tb, ds)
	want := []Forwarding{
		{ip("100.64.0.1"), netip.MustParseAddrPort("172.17.0.2:5353"), services.UDP},
		{ip("100.64.0.1"), netip.MustParseAddrPort("172.17.0.2:8080"), services.TCP},
		{ip("100.64.0.2"), netip.MustParseAddrPort("172.17.0.2:5353"), services.UDP},
		{ip("100.64.0.2"), netip.MustParseAddrPort("172.17.0.2:8080"), services.TCP},
	}
	if !reflect.DeepEqual(fw, want) {
		t.Fatalf("forwardings:\n got %v\nwant %v", fw, want)
	}
	ports := map[Forwarding]uint16{}
	for i, f := range fw {
		ports[f] = uint16(40000 + i)
	}
	local := self.Overlay
	rules, dns, err := Rewrite(tb, ds, local, func(f Forwarding) (uint16, bool) { p, ok := ports[f]; return p, ok })
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range rules.Get("demo", "web").Endpoints {
		got = append(got, e.Addresses[0].String()+" http="+itoa(e.Ports["http"])+" dns="+itoa(e.Ports["dns"]))
	}
	wantRules := []string{
		"100.64.0.3 http=40001 dns=40000", // a's bridge pod, via this node's forwarder
		"100.64.0.3 http=40003 dns=40002", // b's bridge pod
		"100.64.0.2 http=8080 dns=5353",   // b's host, over the overlay
		"10.244.1.7 http=8080 dns=5353",   // a's routed pod
	}
	if !reflect.DeepEqual(got, wantRules) {
		t.Errorf("rule endpoints:\n got %q\nwant %q", got, wantRules)
	}
	for _, e := range rules.Get("demo", "web").Endpoints {
		if e.Addresses[0] == bridgeIP {
			t.Errorf("a rule sends to %v, the client's own local pod", bridgeIP)
		}
	}
	var dnsGot []netip.Addr
	for _, e := range dns.Get("demo", "web").Endpoints {
		dnsGot = append(dnsGot, e.Addresses[0])
	}
	if want := []netip.Addr{ip("100.64.0.2"), ip("10.244.1.7")}; !reflect.DeepEqual(dnsGot, want) {
		t.Errorf("DNS endpoints: got %v, want %v", dnsGot, want)
	}
	c := Count(ds)
	if c[Forward] != 2 || c[Host] != 1 || c[L3] != 1 || c[None] != 1 {
		t.Errorf("counts %v", c)
	}
	// The input is untouched.
	if e := tb.Get("demo", "web").Endpoints[0]; e.Addresses[0] != bridgeIP || e.Ports["http"] != 8080 {
		t.Errorf("Rewrite modified its input: %+v", e)
	}
}

// A forward whose port could not be had (the forwarder's range is full)
// leaves the endpoint out of the rules rather than sending it anywhere.
func TestRewriteWithoutForwardPort(t *testing.T) {
	tb := table(t, ep("edge-a", false, "172.17.0.2"), ep("edge-a", false, "10.244.1.7"))
	ds := Resolve(tb, self, peers)
	rules, _, err := Rewrite(tb, ds, self.Overlay, func(Forwarding) (uint16, bool) { return 0, false })
	if err != nil {
		t.Fatal(err)
	}
	eps := rules.Get("demo", "web").Endpoints
	if len(eps) != 1 || eps[0].Addresses[0] != ip("10.244.1.7") {
		t.Errorf("got %+v, want only the routed endpoint", eps)
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
