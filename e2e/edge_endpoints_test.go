package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// ClusterIPs of TestEdgeEndpoints.
var (
	hostnetIP = netip.MustParseAddr("10.96.0.60")
	bridgeIP  = netip.MustParseAddr("10.96.0.61")
	homeLAN   = netip.MustParsePrefix("192.168.1.0/24") // both edge sites number their LAN alike
	dockerNet = netip.MustParsePrefix("172.17.0.0/16")  // every node's runtime bridge
)

// TestEdgeEndpoints: Service endpoints whose addresses say nothing about
// where they are, against a real kube-apiserver. Edge nodes a and b sit
// on two sites with the same LAN (both hosts are 192.168.1.2) and run
// "pods" on an unmanaged runtime bridge that hands out 172.17.0.2 on
// both; the clients c (direct to a and b) and d (relayed) have a trap
// pod at 172.17.0.2 of their own. A hostNetwork endpoint is reached
// through its node's overlay address; a bridge endpoint through its
// node's agent, over TCP and UDP; every reply comes from the right node,
// never from the trap; an endpoint on an unknown node, and later on an
// offline one, is left out while the others keep working.
func TestEdgeEndpoints(t *testing.T) {
	lab.Require(t)
	start := time.Now()
	phase := func(name string) { t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), name) }
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	kc, cs := startKube(t, l, cloud)
	phase("kube-apiserver ready")

	sa, sb := l.AddSiteLAN("sa", lab.NATEIM, homeLAN), l.AddSiteLAN("sb", lab.NATEIM, homeLAN)
	sc, sd := l.AddSite("sc", lab.NATEIM), l.AddSite("sd", lab.NATSymmetric)
	nodes := []*natNode{behindNAT("a", natEIM, sa), behindNAT("b", natEIM, sb), behindNAT("c", natEIM, sc), behindNAT("d", natSym, sd)}
	a, b, c, d := nodes[0], nodes[1], nodes[2], nodes[3]
	if a.host.IP() != b.host.IP() {
		t.Fatalf("a is %v and b %v; the test needs them alike", a.host.IP(), b.host.IP())
	}

	ctx := ctxT(t, 5*time.Minute)
	mustKube(t, "create namespace", func() error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: svcNS}}, metav1.CreateOptions{})
		return err
	})
	// Nodes as their kubelets register them: the LAN address is the
	// InternalIP, and no pod CIDR (no CNI the overlay knows).
	for _, n := range nodes {
		mustKube(t, "create node "+n.name, func() error {
			node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.host.IP().String()}, {Type: corev1.NodeHostName, Address: n.name}}
			_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
			return err
		})
	}
	identity := agentIdentities(t, ctx, cs, l.Dir(), "a", "b", "c", "d")
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: []string{"--kubeconfig", kc.Kubeconfig,
		"--agent-service-account", agentSA}})
	t.Cleanup(func() { coord.Proc.Stop(5 * time.Second) })
	extra := map[string][]string{}
	for _, n := range nodes {
		extra[n.name] = []string{"--kubernetes-token-file", identity[n.name]}
	}
	startNodes(t, l, coord, nodes, extra)
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 45*time.Second)
	phase("agents up: c direct to a and b, d relayed")

	// The hostNetwork servers and the bridge pods answer with their name.
	servePod(t, a.host)
	servePod(t, b.host)
	pods := map[string]string{} // pod name -> node
	for _, n := range nodes {
		name := "p" + n.name
		if n == c || n == d {
			name = "trap" + n.name
		}
		p := n.host.AddPod(name, dockerNet)
		if p.IP() != netip.MustParseAddr("172.17.0.2") {
			t.Fatalf("pod %s got %v, want 172.17.0.2", name, p.IP())
		}
		servePod(t, p)
		pods[name] = n.name
	}

	ports := []corev1.ServicePort{
		{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(podHTTP)},
		{Name: "echo", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(podEcho)},
	}
	epPorts := []discoveryv1.EndpointPort{
		{Name: new("http"), Port: new(int32(podHTTP)), Protocol: new(corev1.ProtocolTCP)},
		{Name: new("echo"), Port: new(int32(podEcho)), Protocol: new(corev1.ProtocolUDP)},
	}
	for _, svc := range []struct {
		name string
		ip   netip.Addr
		eps  []podEndpoint
	}{
		{"hostnet", hostnetIP, []podEndpoint{{a.host.IP(), "a"}, {b.host.IP(), "b"}}},
		{"bridge", bridgeIP, []podEndpoint{{netip.MustParseAddr("172.17.0.2"), "a"}, {netip.MustParseAddr("172.17.0.2"), "b"},
			{netip.MustParseAddr("172.17.0.2"), "nosuchnode"}}},
		{"hostnet-headless", netip.Addr{}, []podEndpoint{{a.host.IP(), "a"}, {b.host.IP(), "b"}}},
	} {
		mustKube(t, "create service "+svc.name, func() error {
			spec := corev1.ServiceSpec{Ports: ports, ClusterIP: corev1.ClusterIPNone}
			if svc.ip.IsValid() {
				spec.ClusterIP = svc.ip.String()
			}
			_, err := cs.CoreV1().Services(svcNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: svc.name}, Spec: spec}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			_, err = cs.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, endpointSlice(svc.name+"-1", svc.name, svc.eps, epPorts...), metav1.CreateOptions{})
			return err
		})
	}

	// Each client decides every endpoint by its node, and shows it.
	clients := []*natNode{c, d}
	for _, n := range clients {
		err := lab.Eventually(20*time.Second, 200*time.Millisecond, func() error {
			sv, err := n.agent.Services()
			if err != nil {
				return err
			}
			got := map[string]string{}
			for _, e := range sv.Endpoints {
				got[e.Service+" "+e.Address+" "+e.NodeName] = e.Path + " " + e.Target
			}
			want := map[string]string{
				svcNS + "/hostnet 192.168.1.2 a":          "host " + a.overlay.String(),
				svcNS + "/hostnet 192.168.1.2 b":          "host " + b.overlay.String(),
				svcNS + "/bridge 172.17.0.2 a":            "forward " + a.overlay.String(),
				svcNS + "/bridge 172.17.0.2 b":            "forward " + b.overlay.String(),
				svcNS + "/bridge 172.17.0.2 nosuchnode":   "none ",
				svcNS + "/hostnet-headless 192.168.1.2 a": "host " + a.overlay.String(),
				svcNS + "/hostnet-headless 192.168.1.2 b": "host " + b.overlay.String(),
			}
			for k, v := range want {
				if got[k] != v {
					return fmt.Errorf("edgewire services: %s is %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
	}
	phase("clients decided every endpoint")

	// hostNetwork: the same LAN address on two sites, told apart by node.
	for _, n := range clients {
		t.Run("hostNetwork endpoints from "+n.name, func(t *testing.T) {
			got := countPods(t, n.host, "http://"+hostnetIP.String()+"/", 16)
			if got["a"] == 0 || got["b"] == 0 || len(got) != 2 {
				t.Errorf("16 GETs answered by %v, want a and b only", got)
			}
			udp := countUDP(t, n.host, netip.AddrPortFrom(hostnetIP, 53), 12)
			if udp["a"] == 0 || udp["b"] == 0 || len(udp) != 2 {
				t.Errorf("12 UDP exchanges answered by %v, want a and b only", udp)
			}
		})
	}

	// Headless: the agent answers the nodes' overlay addresses, never
	// the LAN address that is the same on both sites.
	t.Run("headless hostNetwork Service resolves to overlay addresses", func(t *testing.T) {
		name := "hostnet-headless." + svcNS + "." + svcDomain
		for _, n := range clients {
			var ans []netip.Addr
			err := lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
				var rc int
				var err error
				ans, rc, err = dnsA(n.host, name)
				if err != nil || rc != dns.RcodeSuccess {
					return fmt.Errorf("%s: %s %v", name, dns.RcodeToString[rc], err)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%s: %v", n.name, err)
			}
			if len(ans) != 2 || !containsAddr(ans, a.overlay) || !containsAddr(ans, b.overlay) {
				t.Errorf("%s: %s answers %v, want %v and %v", n.name, name, ans, a.overlay, b.overlay)
			}
		}
	})

	// Bridge pods: forwarded through their nodes' agents; the trap on the
	// client's own bridge never answers.
	for _, n := range clients {
		t.Run("bridge endpoints from "+n.name, func(t *testing.T) {
			got := countPods(t, n.host, "http://"+bridgeIP.String()+"/", 16)
			if got["pa"] == 0 || got["pb"] == 0 || len(got) != 2 {
				t.Errorf("16 GETs answered by %v, want pa and pb only (trap%s is this node's own 172.17.0.2)", got, n.name)
			}
			udp := countUDP(t, n.host, netip.AddrPortFrom(bridgeIP, 53), 12)
			if udp["pa"] == 0 || udp["pb"] == 0 || len(udp) != 2 {
				t.Errorf("12 UDP exchanges answered by %v, want pa and pb only", udp)
			}
		})
	}
	for _, n := range []*natNode{a, b} {
		sv, err := n.agent.Services()
		if err != nil {
			t.Fatal(err)
		}
		if sv.Forward.In == 0 {
			t.Errorf("%s took no forwarded connection: %+v", n.name, sv.Forward)
		}
	}
	for _, n := range clients {
		text, err := scrape(n.host, "127.0.0.1:9092")
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := metricSum(text, "edgewire_agent_service_endpoints", `path="none"`); !ok || v != 1 {
			t.Errorf("%s: edgewire_agent_service_endpoints{path=\"none\"} = %v (%v), want 1", n.name, v, ok)
		}
		if v, ok := metricSum(text, "edgewire_agent_service_forwards_total", `direction="out",outcome="forwarded"`); !ok || v < 1 {
			t.Errorf("%s: no forwarded connections counted (%v, %v)", n.name, v, ok)
		}
	}
	phase("hostNetwork and bridge endpoints reached through their nodes")

	// b's agent stops: its bridge endpoint is left out (forwarding needs
	// it) and a's keeps serving.
	t.Run("an endpoint on an offline node is left out", func(t *testing.T) {
		if err := b.agent.Proc.Stop(10 * time.Second); err != nil {
			t.Logf("stop b: %v", err)
		}
		err := lab.Eventually(20*time.Second, 200*time.Millisecond, func() error {
			sv, err := c.agent.Services()
			if err != nil {
				return err
			}
			for _, e := range sv.Endpoints {
				if e.Service == svcNS+"/bridge" && e.NodeName == "b" {
					if e.Path != "none" || !strings.Contains(e.Why, "offline") {
						return fmt.Errorf("b's bridge endpoint is %s (%s), want none: offline", e.Path, e.Why)
					}
					return nil
				}
			}
			return fmt.Errorf("b's bridge endpoint not listed: %+v", sv.Endpoints)
		})
		if err != nil {
			t.Fatal(err)
		}
		got := countPods(t, c.host, "http://"+bridgeIP.String()+"/", 8)
		if got["pa"] != 8 {
			t.Errorf("8 GETs answered by %v, want pa for all", got)
		}
	})
}

// countUDP sends n datagrams, each from a fresh socket (a new flow, so a
// new DNAT decision), and counts the replies by the answering name.
func countUDP(t *testing.T, h *lab.Host, to netip.AddrPort, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		reply, err := udpExchange(h, to, fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatalf("datagram %d of %d from %s: %v", i+1, n, h.Name(), err)
		}
		name, _, _ := strings.Cut(reply, ":")
		got[name]++
	}
	return got
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}
