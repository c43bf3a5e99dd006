package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// Pod CIDRs of TestPodNetwork, on the Kubernetes Node objects.
var podNetCIDRs = map[string]netip.Prefix{
	"e1": netip.MustParsePrefix("10.245.1.0/24"),
	"e2": netip.MustParsePrefix("10.245.2.0/24"),
	"e3": netip.MustParsePrefix("10.245.3.0/24"),
	"k":  netip.MustParsePrefix("10.245.9.0/24"),
}

// TestPodNetwork: the agent's own pod networking on nodes without a CNI,
// against a real kube-apiserver, with pods made by the reference CNI
// plugins through cnitool from the configuration the agent wrote. Three
// edge nodes behind NATs (two direct, one relayed) and a cloud node: every
// pod reaches every other pod over TCP and UDP with its own address (routed,
// not masqueraded); a pod reaches a host on the lab's internet
// masqueraded; a headless Service answers pod IPs that another NATed node
// reaches; an agent restart leaves its pods' network alone; a deleted
// node's pod CIDR leaves every route table.
func TestPodNetwork(t *testing.T) {
	lab.Require(t)
	cnitool := lab.CNITool(t)
	start := time.Now()
	phase := func(name string) { t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), name) }
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	kc, cs := startKube(t, l, cloud)
	phase("kube-apiserver ready")

	ctx := ctxT(t, 5*time.Minute)
	mustKube(t, "create namespace", func() error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: svcNS}}, metav1.CreateOptions{})
		return err
	})
	for name, cidr := range podNetCIDRs {
		mustKube(t, "create node "+name, func() error {
			_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.NodeSpec{PodCIDR: cidr.String(), PodCIDRs: []string{cidr.String()}}}, metav1.CreateOptions{})
			return err
		})
	}
	identity := agentIdentities(t, ctx, cs, l.Dir(), "e1", "e2", "e3", "k")
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: []string{"--kubeconfig", kc.Kubeconfig,
		"--agent-service-account", agentSA}})
	t.Cleanup(func() { coord.Proc.Stop(5 * time.Second) })
	s1, s2, s3 := l.AddSite("s1", lab.NATEIM), l.AddSite("s2", lab.NATEIM), l.AddSite("s3", lab.NATSymmetric)
	nodes := []*natNode{behindNAT("e1", natEIM, s1), behindNAT("e2", natEIM, s2), behindNAT("e3", natSym, s3),
		{name: "k", spot: natSpot{kind: natPublic}, host: l.AddPublicHost("k")}}
	e1, e2, e3, k := nodes[0], nodes[1], nodes[2], nodes[3]
	confDir := func(n *natNode) string { return filepath.Join(l.Dir(), n.name+"-net.d") }
	extra := map[string][]string{}
	for _, n := range nodes {
		// auto: no other CNI configuration on these nodes, so the agent
		// manages pod networking.
		extra[n.name] = []string{"--kubernetes-token-file", identity[n.name], "--pod-network", "auto",
			"--cni-conf-dir", confDir(n), "--cni-ipam-dir", filepath.Join(l.Dir(), n.name+"-ipam")}
	}
	startNodes(t, l, coord, nodes, extra)
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 45*time.Second)
	waitPodRoutes(t, nodes, podNetCIDRs, 20*time.Second)
	phase("agents up, pod CIDRs routed")

	// The agents write their configuration; the runtime (cnitool) makes
	// a pod on each node from it.
	for _, n := range nodes {
		path := filepath.Join(confDir(n), "90-edgewire.conflist")
		err := lab.Eventually(15*time.Second, 100*time.Millisecond, func() error {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if !bytes.Contains(b, []byte(`"subnet": "`+podNetCIDRs[n.name].String()+`"`)) {
				return fmt.Errorf("%s does not give %s:\n%s", path, podNetCIDRs[n.name], b)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
	}
	pods := map[*natNode]*lab.Host{}
	var addLatency []time.Duration
	for _, n := range nodes {
		t0 := time.Now()
		p := n.host.AddCNIPod("p"+n.name, cnitool, "edgewire", confDir(n))
		addLatency = append(addLatency, time.Since(t0))
		if !podNetCIDRs[n.name].Contains(p.IP()) {
			t.Fatalf("pod on %s got %v, outside its pod CIDR %s", n.name, p.IP(), podNetCIDRs[n.name])
		}
		serveWho(t, p)
		pods[n] = p
	}
	t.Logf("CNI ADD (cnitool, bridge, host-local, portmap): %v", addLatency)
	phase("a pod on every node, made by the plugins")

	// The lab's internet has a host that reports who called.
	inet := l.AddPublicHost("web")
	serveWho(t, inet)

	checkPairs := func(t *testing.T) {
		for _, x := range nodes {
			for _, y := range nodes {
				if x == y {
					continue
				}
				from, to := pods[x], pods[y]
				got, err := whoHTTP(from, netip.AddrPortFrom(to.IP(), podHTTP))
				if want := to.Name() + " " + from.IP().String(); err != nil || got != want {
					t.Errorf("TCP pod %s -> pod %s (%s): got %q, %v; want %q (the pod's own address: routed, not masqueraded)",
						x.name, y.name, expectedPath(x.spot, y.spot), got, err, want)
				}
				reply, err := udpExchange(from, netip.AddrPortFrom(to.IP(), podEcho), "hi")
				if want := to.Name() + " " + from.IP().String() + " hi"; err != nil || reply != want {
					t.Errorf("UDP pod %s -> pod %s: got %q, %v; want %q", x.name, y.name, reply, err, want)
				}
			}
		}
	}
	t.Run("pod to pod across every pair, TCP and UDP, unmasqueraded", checkPairs)

	t.Run("a pod reaches the internet masqueraded", func(t *testing.T) {
		for _, n := range nodes {
			got, err := whoHTTP(pods[n], netip.AddrPortFrom(inet.IP(), podHTTP))
			if err != nil {
				t.Errorf("pod on %s -> web: %v", n.name, err)
				continue
			}
			_, src, _ := strings.Cut(got, " ")
			want := n.host.IP().String() // the cloud node's own address
			if len(n.nats) > 0 {
				want = n.nats[0].PublicIP().String()
			}
			if src != want {
				t.Errorf("pod on %s -> web: seen from %s, want %s (masqueraded)", n.name, src, want)
			}
		}
	})

	t.Run("headless Service resolves to pod IPs another NATed node reaches", func(t *testing.T) {
		var eps []podEndpoint
		for _, n := range nodes {
			eps = append(eps, podEndpoint{pods[n].IP(), n.name})
		}
		mustKube(t, "create headless service", func() error {
			_, err := cs.CoreV1().Services(svcNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "pods"},
				Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "http", Port: podHTTP, Protocol: corev1.ProtocolTCP}}}},
				metav1.CreateOptions{})
			if err != nil {
				return err
			}
			_, err = cs.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, endpointSlice("pods-1", "pods", eps,
				discoveryv1.EndpointPort{Name: new("http"), Port: new(int32(podHTTP)), Protocol: new(corev1.ProtocolTCP)}), metav1.CreateOptions{})
			return err
		})
		name := "pods." + svcNS + "." + svcDomain
		var ans []netip.Addr
		err := lab.Eventually(15*time.Second, 200*time.Millisecond, func() error {
			var rc int
			var err error
			ans, rc, err = dnsA(e3.host, name)
			if err != nil || rc != dns.RcodeSuccess || len(ans) != len(nodes) {
				return fmt.Errorf("%s from e3: %s %v %v", name, dns.RcodeToString[rc], ans, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []*natNode{e1, e2, k} {
			if !containsAddr(ans, pods[n].IP()) {
				t.Errorf("%s answers %v, without %s's pod %v", name, ans, n.name, pods[n].IP())
			}
			if got, err := whoHTTP(e3.host, netip.AddrPortFrom(pods[n].IP(), podHTTP)); err != nil || !strings.HasPrefix(got, pods[n].Name()+" ") {
				t.Errorf("e3 (relayed) -> %s's pod: got %q, %v", n.name, got, err)
			}
		}
	})
	phase("pairs, internet, headless")

	t.Run("restarting an agent leaves its pods' network alone", func(t *testing.T) {
		conf := filepath.Join(confDir(e1), "90-edgewire.conflist")
		before, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		podLinks := pods[e1].MustExec(t, "ip", "-o", "addr", "show", "dev", "eth0")
		if err := e1.agent.Proc.Stop(30 * time.Second); err != nil {
			t.Errorf("stop e1: %v", err)
		}
		// While the agent is down, the pod keeps its address and route,
		// and the node its bridge and masquerade rules.
		if got := pods[e1].MustExec(t, "ip", "-o", "addr", "show", "dev", "eth0"); got != podLinks {
			t.Errorf("pod's interface changed with the agent down:\n%s\nwas\n%s", got, podLinks)
		}
		if out := pods[e1].MustExec(t, "ip", "route"); !strings.Contains(out, "default via") {
			t.Errorf("pod lost its default route:\n%s", out)
		}
		if out := e1.host.MustExec(t, "nft", "list", "table", "ip", "edgewire-pods"); !strings.Contains(out, "masquerade") {
			t.Errorf("masquerade rules gone with the agent down:\n%s", out)
		}
		if got, err := whoHTTP(pods[e1], netip.AddrPortFrom(inet.IP(), podHTTP)); err != nil {
			t.Errorf("pod on e1 -> web with the agent down: %q, %v", got, err)
		}
		e1.agent.Start()
		if err := e1.agent.WaitConnected(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		waitPaths(t, nodes, expectedPath, 45*time.Second)
		after, err := os.ReadFile(conf)
		if err != nil || !bytes.Equal(before, after) {
			t.Errorf("configuration changed across a restart (%v):\n%s\nwas\n%s", err, after, before)
		}
		checkPairs(t)
	})
	phase("restart")

	t.Run("a deleted node's pod CIDR leaves every route table", func(t *testing.T) {
		if out, err := coord.CLI("nodes", "delete", "e2"); err != nil {
			t.Fatalf("nodes delete e2: %v: %s", err, out)
		}
		t0 := time.Now()
		for _, n := range []*natNode{e1, e3, k} {
			err := lab.Eventually(10*time.Second, 100*time.Millisecond, func() error {
				out, err := n.host.Exec(context.Background(), "ip", "route", "show", "table", "all")
				if err != nil {
					return err
				}
				if strings.Contains(out, podNetCIDRs["e2"].String()) {
					return fmt.Errorf("route to e2's pods remains:\n%s", grepLines(out, podNetCIDRs["e2"].String()))
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s: %v", n.name, err)
			}
		}
		t.Logf("e2's pod CIDR gone from every node %v after the delete", time.Since(t0).Round(time.Millisecond))
	})
}

// serveWho serves, in h, HTTP on podHTTP answering "<name> <caller's
// address>" and a UDP echo on podEcho answering "<name> <caller's
// address> <payload>": the reply says who answered and whom it saw.
func serveWho(t *testing.T, h *lab.Host) {
	t.Helper()
	serveBoth(t, h, func(c netip.Addr) string { return h.Name() + " " + c.String() },
		func(c netip.Addr, p []byte) []byte { return []byte(h.Name() + " " + c.String() + " " + string(p)) })
}

// whoHTTP GETs serveWho's answer at to from h.
func whoHTTP(h *lab.Host, to netip.AddrPort) (string, error) {
	return httpGet(h, "http://"+to.String()+"/")
}
