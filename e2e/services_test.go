package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/kube"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/node/localapi"
)

// The Services lab: names and addresses the test and its helpers share.
const (
	svcNS      = "demo"
	svcDomain  = "svc.cluster.local"
	meshDomain = "edgewire.internal"
	podHTTP    = 8080 // the pods' HTTP port (the Service's targetPort)
	podEcho    = 5353 // the pods' UDP echo port
	socksPort  = 2222 // an "sshd" on a node's overlay address
)

var (
	agentDNS   = netip.MustParseAddrPort("169.254.96.16:53") // the agent's DNS, its default address
	agentSOCKS = netip.MustParseAddrPort("169.254.96.16:1080")
	// ClusterIPs, inside kube.ServiceCIDR.
	webIP   = netip.MustParseAddr("10.96.0.50")
	ghostIP = netip.MustParseAddr("10.96.0.51")
	sctpIP  = netip.MustParseAddr("10.96.0.52")
	// ghostPortal is how `nft list` shows ghost's port in a set or map.
	ghostPortal = fmt.Sprintf("%s . tcp . 80", ghostIP)
	// Pod CIDRs by node, set on the Kubernetes Node objects.
	podCIDRs = map[string]netip.Prefix{
		"a": netip.MustParsePrefix("10.244.1.0/24"),
		"b": netip.MustParsePrefix("10.244.2.0/24"),
		"c": netip.MustParsePrefix("10.244.3.0/24"),
	}
)

// TestServices is the Services layer end to end, against a real
// kube-apiserver: the coordinator watches it, agents behind NATs answer
// Service names from their DNS and DNAT ClusterIPs to pods on other nodes,
// directly and through the relay, spread and stick to endpoints, drop a
// deleted Service within seconds, refuse bad input without crashing,
// proxy SOCKS5 to nodes by name, and leave nothing behind on SIGTERM.
func TestServices(t *testing.T) {
	lab.Require(t)
	start := time.Now()
	phase := func(name string) {
		t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), name)
	}
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	kc, cs := startKube(t, l, cloud)
	phase("kube-apiserver ready")

	ctx := ctxT(t, 5*time.Minute)
	mustKube(t, "create namespace", func() error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: svcNS}}, metav1.CreateOptions{})
		return err
	})
	// The coordinator routes each node's Node.spec.podCIDRs over the overlay.
	for name, cidr := range podCIDRs {
		mustKube(t, "create node "+name, func() error {
			_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec:       corev1.NodeSpec{PodCIDR: cidr.String(), PodCIDRs: []string{cidr.String()}},
			}, metav1.CreateOptions{})
			return err
		})
	}

	// Each agent proves which Node it runs on with a service account token
	// bound to a pod on that Node, as the chart's DaemonSet does; pod CIDRs
	// go to the agent proven to be there, not to a name.
	identity := agentIdentities(t, ctx, cs, l.Dir(), "a", "b", "c")
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: []string{"--kubeconfig", kc.Kubeconfig,
		"--agent-service-account", agentSA}})
	// Close the coordinator's watches before the API server stops (cleanups
	// run last-registered first), or its graceful shutdown waits on them.
	t.Cleanup(func() { coord.Proc.Stop(5 * time.Second) })
	sa, sb, sc := l.AddSite("sa", lab.NATEIM), l.AddSite("sb", lab.NATEIM), l.AddSite("sc", lab.NATSymmetric)
	nodes := []*natNode{behindNAT("a", natEIM, sa), behindNAT("b", natEIM, sb), behindNAT("c", natSym, sc)}
	a, b, c := nodes[0], nodes[1], nodes[2]

	// No upstream resolvers: a name the agents do not own must not leave the lab.
	resolv := filepath.Join(l.Dir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("# the lab has no upstream resolvers\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	extra := map[string][]string{}
	for _, n := range nodes {
		// --services auto: no kube-proxy here, so on. SOCKS5 is opt-in.
		extra[n.name] = []string{"--resolv-conf", resolv, "--socks5-listen", "default", "--kubernetes-token-file", identity[n.name]}
	}
	startNodes(t, l, coord, nodes, extra)
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 45*time.Second)
	waitPodRoutes(t, nodes, podCIDRs, 20*time.Second)
	phase("agents up, a<->b direct, c relayed, pod CIDRs routed")

	t.Run("a token holder cannot take a Kubernetes node's name or pod CIDR", func(t *testing.T) {
		tok := coord.Token()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--name", "b"}, "belongs to a Kubernetes node"},
			// b's own identity token, from another key (state dir).
			{[]string{"--name", "b2", "--kubernetes-token-file", identity["b"]}, "already registered"},
		} {
			out, err := cloud.Exec(ctxT(t, 30*time.Second), append([]string{cluster.Bin(t, "edgewire-agent"), "join",
				"--state-dir", t.TempDir(), "--coordinator", coord.Addr(), "--token", tok}, tc.args...)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("join %v: got %v: %s; want a refusal saying %q", tc.args, err, out, tc.want)
			}
		}
	})

	pb := b.host.AddPod("pb", podCIDRs["b"])
	pc := c.host.AddPod("pc", podCIDRs["c"])
	for _, p := range []*lab.Host{pb, pc} {
		servePod(t, p)
	}

	mustKube(t, "create service web", func() error {
		_, err := cs.CoreV1().Services(svcNS).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{
				ClusterIP: webIP.String(),
				Ports: []corev1.ServicePort{
					{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(podHTTP)},
					{Name: "echo", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(podEcho)},
				},
			},
		}, metav1.CreateOptions{})
		return err
	})
	webSlice := endpointSlice("web-1", "web", []podEndpoint{{pb.IP(), "b"}},
		discoveryv1.EndpointPort{Name: new("http"), Port: new(int32(podHTTP)), Protocol: new(corev1.ProtocolTCP)},
		discoveryv1.EndpointPort{Name: new("echo"), Port: new(int32(podEcho)), Protocol: new(corev1.ProtocolUDP)})
	mustKube(t, "create endpointslice web-1", func() error {
		_, err := cs.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, webSlice, metav1.CreateOptions{})
		return err
	})
	webName := "web." + svcNS + "." + svcDomain
	webHTTP := "http://" + webIP.String() + "/"
	webEcho := netip.AddrPortFrom(webIP, 53)

	t.Run("service name resolves on every node", func(t *testing.T) {
		t0 := time.Now()
		for _, n := range nodes {
			if err := waitDNS(n.host, webName, dns.RcodeSuccess, webIP, 15*time.Second); err != nil {
				t.Errorf("%s: %v", n.name, err)
			}
		}
		t.Logf("web resolved on every node %v after its creation", time.Since(t0).Round(time.Millisecond))
		for _, peer := range nodes {
			name := peer.name + "." + meshDomain
			if err := waitDNS(a.host, name, dns.RcodeSuccess, peer.overlay, 5*time.Second); err != nil {
				t.Errorf("a: %v", err)
			}
		}
		ans, rc, err := dnsA(a.host, "nosuch."+svcNS+"."+svcDomain)
		if err != nil || rc != dns.RcodeNameError {
			t.Errorf("a: nosuch.%s.%s: got %s %v, %v; want NXDOMAIN", svcNS, svcDomain, dns.RcodeToString[rc], ans, err)
		}
	})
	phase("DNS answers web")

	// One pod, on b: a reaches it directly, c through the relay.
	for _, n := range []*natNode{a, c} {
		want := expectedPath(n.spot, b.spot)
		t.Run(fmt.Sprintf("http and udp from %s to a pod on b (%s)", n.name, want), func(t *testing.T) {
			snap, err := takeSnapshot(nodes)
			if err != nil {
				t.Fatal(err)
			}
			if got := snap.path(n, b); got != want {
				t.Errorf("%s's path to b: got %s, want %s", n.name, got, want)
			}
			var body string
			err = lab.Eventually(15*time.Second, 200*time.Millisecond, func() error {
				body, err = httpGet(n.host, webHTTP)
				return err
			})
			if err != nil {
				t.Fatalf("GET %s from %s: %v", webHTTP, n.name, err)
			}
			if body != "pb" {
				t.Errorf("GET %s from %s: got %q, want pod pb's name", webHTTP, n.name, body)
			}
			var reply string
			err = lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
				reply, err = udpExchange(n.host, webEcho, "hello from "+n.name)
				return err
			})
			if err != nil {
				t.Fatalf("udp %s from %s: %v", webEcho, n.name, err)
			}
			if want := "pb:hello from " + n.name; reply != want {
				t.Errorf("udp %s from %s: got %q, want %q", webEcho, n.name, reply, want)
			}
		})
	}
	phase("ClusterIP TCP and UDP, direct and relayed")

	t.Run("curl by service name with the agent as resolver", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("curl not installed")
		}
		useAgentResolver(t, a.host)
		out, err := a.host.Exec(ctxT(t, 15*time.Second), "curl", "-sS", "--noproxy", "*", "--max-time", "10", "http://"+webName+"/")
		if err != nil {
			t.Fatalf("curl http://%s/ in a: %v", webName, err)
		}
		if out != "pb" {
			t.Errorf("curl http://%s/ in a: got %q, want %q", webName, out, "pb")
		}
	})

	t.Run("two pods on two nodes share the requests", func(t *testing.T) {
		webSlice.Endpoints = podEndpoints([]podEndpoint{{pb.IP(), "b"}, {pc.IP(), "c"}})
		mustKube(t, "update endpointslice web-1", func() error {
			var err error
			webSlice, err = cs.DiscoveryV1().EndpointSlices(svcNS).Update(ctx, webSlice, metav1.UpdateOptions{})
			return err
		})
		waitRules(t, a, 10*time.Second, func(rules string) error {
			if want := dnatNeedles(netip.AddrPortFrom(pc.IP(), podHTTP))[0]; !strings.Contains(rules, want) {
				return fmt.Errorf("service rules lack %q (pc as an endpoint of the spread)", want)
			}
			return nil
		})
		got := countPods(t, a.host, webHTTP, 40)
		t.Logf("40 requests from a: %v", got)
		for _, p := range []string{"pb", "pc"} {
			if got[p] < 5 {
				t.Errorf("pod %s served %d of 40 requests, want at least 5 (random spread over 2 endpoints)", p, got[p])
			}
		}
	})

	t.Run("client IP affinity sticks a client to one pod", func(t *testing.T) {
		mustKube(t, "patch service web", func() error {
			_, err := cs.CoreV1().Services(svcNS).Patch(ctx, "web", types.MergePatchType,
				[]byte(`{"spec":{"sessionAffinity":"ClientIP"}}`), metav1.PatchOptions{})
			return err
		})
		for _, n := range []*natNode{a, c} {
			waitRules(t, n, 10*time.Second, func(rules string) error {
				if !strings.Contains(rules, "update @aff-") {
					return errors.New("service rules have no affinity (update @aff-...) rule")
				}
				return nil
			})
			got := countPods(t, n.host, webHTTP, 20)
			t.Logf("20 requests from %s with affinity: %v", n.name, got)
			if len(got) != 1 {
				t.Errorf("20 requests from %s with ClientIP affinity: served by %v, want one pod", n.name, got)
			}
		}
	})
	phase("spread and affinity")

	t.Run("socks5 reaches a node by name", func(t *testing.T) {
		ln, err := b.host.ListenTCP(netip.AddrPortFrom(b.overlay, socksPort).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		const banner = "SSH-2.0-test\r\n"
		go func() {
			for range 4 { // bounded: the test connects at most twice
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				conn.Write([]byte(banner))
				io.Copy(conn, conn) // echo until the client closes
				conn.Close()
			}
		}()
		for _, host := range []string{"b", "b." + meshDomain} {
			conn, code, err := socksConnect(a.host, host, socksPort)
			if err != nil {
				t.Errorf("socks5 CONNECT %s:%d from a: %v", host, socksPort, err)
				continue
			}
			if code != 0 {
				conn.Close()
				t.Errorf("socks5 CONNECT %s:%d from a: reply code %d, want 0 (succeeded)", host, socksPort, code)
				continue
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, len(banner))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != banner {
				t.Errorf("via socks5 to %s: banner got %q (%v), want %q", host, got, err, banner)
			}
			msg := "SSH-2.0-client " + host + "\r\n"
			conn.Write([]byte(msg))
			echo := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != msg {
				t.Errorf("via socks5 to %s: echo got %q (%v), want %q", host, echo, err, msg)
			}
			conn.Close()
		}
		for _, host := range []string{"example.com", "nosuchnode", webIP.String()} {
			conn, code, err := socksConnect(a.host, host, 80)
			if err != nil {
				t.Errorf("socks5 CONNECT %s:80 from a: %v, want a refusal reply", host, err)
				continue
			}
			conn.Close()
			if code == 0 {
				t.Errorf("socks5 CONNECT %s:80 from a: reply code 0 (succeeded), want a refusal: not an overlay destination", host)
			}
		}
	})
	phase("socks5")

	t.Run("bad input is refused without a crash", func(t *testing.T) {
		// SCTP is a valid Kubernetes protocol that edgewire does not carry:
		// the whole Service must be refused, its TCP port too.
		mustKube(t, "create service sctp", func() error {
			_, err := cs.CoreV1().Services(svcNS).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "sctp"},
				Spec: corev1.ServiceSpec{
					ClusterIP: sctpIP.String(),
					Ports: []corev1.ServicePort{
						{Name: "web", Port: 80, Protocol: corev1.ProtocolTCP},
						{Name: "sig", Port: 9999, Protocol: corev1.ProtocolSCTP},
					},
				},
			}, metav1.CreateOptions{})
			return err
		})
		mustKube(t, "create endpointslice sctp-1", func() error {
			_, err := cs.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, endpointSlice("sctp-1", "sctp", []podEndpoint{{pb.IP(), "b"}},
				discoveryv1.EndpointPort{Name: new("web"), Port: new(int32(podHTTP)), Protocol: new(corev1.ProtocolTCP)},
				discoveryv1.EndpointPort{Name: new("sig"), Port: new(int32(9999)), Protocol: new(corev1.ProtocolSCTP)}), metav1.CreateOptions{})
			return err
		})
		err := lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
			for line := range strings.Lines(coord.Proc.Log()) {
				if strings.Contains(line, "refusing invalid Service") && strings.Contains(line, svcNS+"/sctp") {
					return nil
				}
			}
			return errors.New("no \"refusing invalid Service\" line for demo/sctp in the coordinator log")
		})
		if err != nil {
			t.Error(err)
		}

		// An endpoint on a node the mesh does not know, at an address no
		// node routes: left out (counted, shown by `edgewire services`),
		// so the ClusterIP is refused at once instead of DNATed to an
		// address that reaches nobody (or a local pod that has it). The
		// Service is still a Service: its name resolves.
		mustKube(t, "create service ghost", func() error {
			_, err := cs.CoreV1().Services(svcNS).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "ghost"},
				Spec: corev1.ServiceSpec{
					ClusterIP: ghostIP.String(),
					Ports:     []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
				},
			}, metav1.CreateOptions{})
			return err
		})
		mustKube(t, "create endpointslice ghost-1", func() error {
			_, err := cs.DiscoveryV1().EndpointSlices(svcNS).Create(ctx, endpointSlice("ghost-1", "ghost",
				[]podEndpoint{{netip.MustParseAddr("10.244.9.2"), "nosuchnode"}},
				discoveryv1.EndpointPort{Name: new("http"), Port: new(int32(80)), Protocol: new(corev1.ProtocolTCP)}), metav1.CreateOptions{})
			return err
		})
		ghostName := "ghost." + svcNS + "." + svcDomain
		for _, n := range nodes {
			if err := waitDNS(n.host, ghostName, dns.RcodeSuccess, ghostIP, 10*time.Second); err != nil {
				t.Errorf("%s: %v", n.name, err)
			}
			// DNS takes a new map before the rules do: wait for ghost's rules.
			var rules string
			err := lab.Eventually(10*time.Second, 100*time.Millisecond, func() error {
				var err error
				if rules, err = svcRules(n.host); err != nil {
					return err
				}
				if !strings.Contains(rules, ghostPortal) || strings.Contains(rules, portalNeedle(ghostIP, "tcp", 80)) {
					return fmt.Errorf("Service ghost's portal %s is not (only) in the no-endpoints set:\n%s", ghostIP, grepLines(rules, ghostIP.String()))
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s: %v", n.name, err)
				continue
			}
			// The endpoint list is the path decisions', made after the
			// rules: a moment later under load.
			if err := lab.Eventually(5*time.Second, 100*time.Millisecond, func() error {
				sv, err := n.agent.Services()
				if err != nil {
					return fmt.Errorf("edgewire services: %w", err)
				}
				if e := findEndpoint(sv, svcNS+"/ghost", "10.244.9.2"); e == nil || e.Path != "none" || !strings.Contains(e.Why, "nosuchnode") {
					return fmt.Errorf("edgewire services shows ghost's endpoint as %+v, want path none naming its node", e)
				}
				return nil
			}); err != nil {
				t.Errorf("%s: %v", n.name, err)
			}
			// ghost came after sctp: sctp's refusal has reached this node.
			if ans, rc, err := dnsA(n.host, "sctp."+svcNS+"."+svcDomain); err != nil || rc != dns.RcodeNameError {
				t.Errorf("%s: refused Service sctp: DNS got %s %v (%v), want NXDOMAIN", n.name, dns.RcodeToString[rc], ans, err)
			}
			if lines := grepLines(rules, sctpIP.String(), svcNS+"/sctp"); lines != "" {
				t.Errorf("%s: refused Service sctp has rules (half-applied):\n%s", n.name, lines)
			}
		}

		// Garbage to the agent's DNS: no crash, FORMERR for a query whose
		// header parses (RFC 1035 4.1.1), silence or an error for the
		// rest, a log line, and real queries still answered.
		dnsLines := func() int { return strings.Count(a.agent.Proc.Log(), "src=dns") }
		before := dnsLines()
		rnd := make([]byte, 512)
		rand.Read(rnd)
		rnd[2] |= 0x80 // a response: servers must not answer those
		for _, g := range []struct {
			name    string
			msg     []byte
			formerr bool // header parses as a query: FORMERR is the answer
		}{
			{"one byte", []byte{0x13}, false},
			{"text", []byte("not a dns message at all, just text"), false},
			{"five questions, none present", []byte{0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0}, true},
			{"label past the end", []byte{0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, 'x'}, true},
			{"compression loop", []byte{0xab, 0xce, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}, true},
			{"random response", rnd, false},
		} {
			reply, err := udpRaw(a.host, agentDNS, g.msg, 500*time.Millisecond)
			if err != nil {
				t.Fatalf("garbage %s: %v", g.name, err)
			}
			var m dns.Msg
			switch {
			case reply == nil && !g.formerr:
				// dropped: nothing to amplify
			case reply == nil:
				t.Errorf("garbage %s: no reply, want FORMERR", g.name)
			case m.Unpack(reply) != nil:
				t.Errorf("garbage %s: reply %x does not parse", g.name, reply)
			case g.formerr && (m.Rcode != dns.RcodeFormatError || m.Id != uint16(g.msg[0])<<8|uint16(g.msg[1])):
				t.Errorf("garbage %s: got id %#04x %s, want id %#02x%02x FORMERR", g.name, m.Id, dns.RcodeToString[m.Rcode], g.msg[0], g.msg[1])
			case !g.formerr && m.Rcode == dns.RcodeSuccess:
				t.Errorf("garbage %s: got NOERROR %v, want an error reply or none", g.name, m.Answer)
			}
		}
		if err := tcpGarbage(a.host, agentDNS); err != nil {
			t.Error(err)
		}
		if err := lab.Eventually(2*time.Second, 100*time.Millisecond, func() error {
			if dnsLines() == before {
				return errors.New("agent a logged nothing (no line with src=dns) about the malformed DNS queries")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		if err := waitDNS(a.host, webName, dns.RcodeSuccess, webIP, 5*time.Second); err != nil {
			t.Errorf("a after garbage: %v", err)
		}
		for _, n := range nodes {
			if n.agent.Proc.Exited() {
				t.Errorf("agent %s exited: %v", n.name, n.agent.Proc.ExitErr())
			}
		}
		if coord.Proc.Exited() {
			t.Errorf("coordinator exited: %v", coord.Proc.ExitErr())
		}
		if body, err := httpGet(a.host, webHTTP); err != nil || (body != "pb" && body != "pc") {
			t.Errorf("GET %s from a after bad input: got %q, %v; want a pod's name", webHTTP, body, err)
		}
	})
	phase("bad input")

	t.Run("metrics show handshakes, relay bytes and DNS queries", func(t *testing.T) {
		// Series per peer are only for active peers (more than keepalives
		// in the last 5 minutes): make a's peers with web's pods active.
		countPods(t, a.host, webHTTP, 40)
		am, err := scrape(a.host, "127.0.0.1:9092")
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := metricSum(am, "edgewire_agent_dns_queries_total", `rcode="NOERROR"`); !ok || v <= 0 {
			t.Errorf("a: edgewire_agent_dns_queries_total{rcode=\"NOERROR\"}: got %v (present %v), want > 0", v, ok)
		}
		if v, ok := metricSum(am, "edgewire_agent_dns_queries_total", `rcode="NXDOMAIN"`); !ok || v <= 0 {
			t.Errorf("a: edgewire_agent_dns_queries_total{rcode=\"NXDOMAIN\"}: got %v (present %v), want > 0", v, ok)
		}
		if _, ok := metricSum(am, "edgewire_agent_peer_handshake_age_seconds", ""); !ok {
			t.Error("a: no edgewire_agent_peer_handshake_age_seconds samples, want one per active peer with a handshake")
		}
		if v, ok := metricSum(am, "edgewire_agent_peers_active", ""); !ok || v < 1 {
			t.Errorf("a: edgewire_agent_peers_active: got %v (present %v), want >= 1 after 40 GETs to pods on other nodes", v, ok)
		}
		if v, ok := metricSum(am, "edgewire_agent_wireguard_bytes_total", `direction="tx"`); !ok || v <= 0 {
			t.Errorf("a: edgewire_agent_wireguard_bytes_total{direction=\"tx\"}: got %v (present %v), want > 0", v, ok)
		}
		cm, err := scrape(cloud, "127.0.0.1:9090")
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := metricSum(cm, "edgewire_relay_bytes_received_total", ""); !ok || v <= 0 {
			t.Errorf("coordinator: edgewire_relay_bytes_received_total: got %v (present %v), want > 0 after relayed traffic from c", v, ok)
		}
		if v, ok := metricSum(cm, "edgewire_coordinator_streams", ""); !ok || v < float64(len(nodes)) {
			t.Errorf("coordinator: edgewire_coordinator_streams: got %v (present %v), want >= %d", v, ok, len(nodes))
		}
		if v, ok := metricSum(cm, "edgewire_coordinator_services", ""); !ok || v < 2 {
			t.Errorf("coordinator: edgewire_coordinator_services: got %v (present %v), want >= 2 (web, ghost)", v, ok)
		}
	})

	t.Run("deleting the Service removes its name and rules within 10s", func(t *testing.T) {
		t0 := time.Now()
		mustKube(t, "delete service web", func() error {
			return cs.CoreV1().Services(svcNS).Delete(ctx, "web", metav1.DeleteOptions{})
		})
		var podDNAT []string
		for _, ap := range []netip.AddrPort{netip.AddrPortFrom(pb.IP(), podHTTP), netip.AddrPortFrom(pc.IP(), podHTTP), netip.AddrPortFrom(pb.IP(), podEcho)} {
			podDNAT = append(podDNAT, dnatNeedles(ap)...)
		}
		for _, n := range nodes {
			err := lab.Eventually(10*time.Second-time.Since(t0), 100*time.Millisecond, func() error {
				ans, rc, err := dnsA(n.host, webName)
				if err != nil {
					return err
				}
				if rc != dns.RcodeNameError {
					return fmt.Errorf("DNS %s: got %s %v, want NXDOMAIN", webName, dns.RcodeToString[rc], ans)
				}
				rules, err := svcRules(n.host)
				if err != nil {
					return err
				}
				needles := append([]string{webIP.String() + " ", svcNS + "/web/"}, podDNAT...)
				if lines := grepLines(rules, needles...); lines != "" {
					return fmt.Errorf("rules of web remain:\n%s", lines)
				}
				// The check is not vacuous: ghost's portal (in the
				// no-endpoints set) is still there.
				if !strings.Contains(rules, ghostPortal) {
					return fmt.Errorf("ghost's portal went too:\n%s", rules)
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s: %v", n.name, err)
			}
		}
		t.Logf("web gone from every node %v after the delete", time.Since(t0).Round(time.Millisecond))
		if reply, err := udpRaw(a.host, webEcho, []byte("anyone?"), 500*time.Millisecond); err != nil || reply != nil {
			t.Errorf("udp %s from a after the delete: got %q, %v; want no reply", webEcho, reply, err)
		}
	})
	phase("delete")

	t.Run("SIGTERM removes the agent's rules and DNS address", func(t *testing.T) {
		rules, err := svcRules(a.host)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rules, ghostPortal) {
			t.Fatalf("a has no Service rules before SIGTERM; the check below would be vacuous:\n%s", rules)
		}
		if err := a.agent.Proc.Stop(40 * time.Second); err != nil {
			t.Errorf("agent a after SIGTERM: exit %v, want a clean exit", err)
		}
		if out, err := a.host.Exec(ctxT(t, 10*time.Second), "nft", "list", "tables"); err != nil || strings.Contains(out, svcTable) {
			t.Errorf("a after SIGTERM: nft list tables: got %q (%v), want no %s", out, err, svcTable)
		}
		for _, table := range []string{"nat", "filter", "mangle"} {
			out := a.host.MustExec(t, "iptables-save", "-t", table)
			if lines := grepLines(out, "EDGEWIRE"); lines != "" {
				t.Errorf("a %s table after SIGTERM: got\n%s\nwant no EDGEWIRE chains or jumps", table, lines)
			}
		}
		if out := a.host.MustExec(t, "ip", "-4", "-o", "addr"); strings.Contains(out, agentDNS.Addr().String()+"/") {
			t.Errorf("a after SIGTERM: %s still on an interface:\n%s", agentDNS.Addr(), out)
		}
	})
	phase("done")
}

// agentSA is the service account agents prove their node with.
const agentSA = "edgewire/edgewire-agent"

// agentIdentities creates the agents' service account and, per node, a
// pod bound to that node and a token for audience "edgewire" bound to the
// pod (what the kubelet mounts for the DaemonSet's projected volume). It
// returns the token files by node.
func agentIdentities(t *testing.T, ctx context.Context, cs kubernetes.Interface, dir string, nodes ...string) map[string]string {
	t.Helper()
	ns, name, _ := strings.Cut(agentSA, "/")
	mustKube(t, "create namespace "+ns, func() error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	mustKube(t, "create service account", func() error {
		_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		return err
	})
	out := map[string]string{}
	for _, node := range nodes {
		var pod *corev1.Pod
		mustKube(t, "create agent pod on "+node, func() error {
			var err error
			pod, err = cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "agent-" + node},
				Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: name, AutomountServiceAccountToken: new(false),
					Containers: []corev1.Container{{Name: "agent", Image: "edgewire/agent"}}},
			}, metav1.CreateOptions{})
			return err
		})
		var tok *authv1.TokenRequest
		mustKube(t, "request token for "+node, func() error {
			var err error
			tok, err = cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
				Audiences: []string{"edgewire"}, ExpirationSeconds: new(int64(3600)),
				BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}, metav1.CreateOptions{})
			return err
		})
		path := filepath.Join(dir, node+"-identity.token")
		if err := os.WriteFile(path, []byte(tok.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		out[node] = path
	}
	return out
}

// startKube runs etcd and kube-apiserver inside h's namespace (loopback
// there) and returns the cluster and a client that dials through h.
func startKube(t *testing.T, l *lab.Lab, h *lab.Host) (*kube.Cluster, kubernetes.Interface) {
	t.Helper()
	k := cluster.StartKube(t, l, h, cluster.KubeOptions{})
	cs, err := kubernetes.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	return k.Cluster, cs
}

// mustKube runs one API call and fails the test with what it was on error.
func mustKube(t *testing.T, what string, call func() error) {
	t.Helper()
	if err := call(); err != nil {
		t.Fatalf("kubernetes: %s: %v", what, err)
	}
}

type podEndpoint struct {
	ip   netip.Addr
	node string
}

func podEndpoints(eps []podEndpoint) []discoveryv1.Endpoint {
	var out []discoveryv1.Endpoint
	for _, e := range eps {
		out = append(out, discoveryv1.Endpoint{
			Addresses:  []string{e.ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: new(true)},
			NodeName:   new(e.node),
		})
	}
	return out
}

// endpointSlice is an IPv4 EndpointSlice of Service svc in svcNS.
func endpointSlice(name, svc string, eps []podEndpoint, ports ...discoveryv1.EndpointPort) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: svcNS,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   podEndpoints(eps),
		Ports:       ports,
	}
}

// waitPodRoutes waits until every agent lists each peer's pod CIDR (in
// cidrs, by node name) as that peer's route.
func waitPodRoutes(t *testing.T, nodes []*natNode, cidrs map[string]netip.Prefix, timeout time.Duration) {
	t.Helper()
	err := lab.Eventually(timeout, 200*time.Millisecond, func() error {
		snap, err := takeSnapshot(nodes)
		if err != nil {
			return err
		}
		for _, x := range nodes {
			for _, y := range nodes {
				if x == y {
					continue
				}
				ps := snap.peer(x, y)
				if ps == nil {
					return fmt.Errorf("%s does not list %s", x.name, y.name)
				}
				if want := cidrs[y.name].String(); !strings.Contains(strings.Join(ps.Routes, " "), want) {
					return fmt.Errorf("%s's routes of %s: got %v, want %s (its Node's podCIDRs)", x.name, y.name, ps.Routes, want)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// servePod runs the pod's workloads: HTTP on podHTTP answering the pod's
// name, and a UDP echo on podEcho answering "<name>:<payload>". Both stop
// when the lab closes their sockets.
func servePod(t *testing.T, pod *lab.Host) {
	t.Helper()
	serveBoth(t, pod, func(netip.Addr) string { return pod.Name() },
		func(_ netip.Addr, p []byte) []byte { return append([]byte(pod.Name()+":"), p...) })
}

// serveBoth serves, in h, HTTP on podHTTP with the body body(caller) and a
// UDP echo on podEcho answering reply(caller, payload), until the lab
// closes their sockets.
func serveBoth(t *testing.T, h *lab.Host, body func(caller netip.Addr) string, reply func(caller netip.Addr, p []byte) []byte) {
	t.Helper()
	ln, err := h.ListenTCP(fmt.Sprintf("0.0.0.0:%d", podHTTP))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ap, _ := netip.ParseAddrPort(r.RemoteAddr)
			io.WriteString(w, body(ap.Addr().Unmap()))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	uc, err := h.ListenUDP(fmt.Sprintf("0.0.0.0:%d", podEcho))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed at teardown
			}
			uc.WriteToUDPAddrPort(reply(from.Addr().Unmap(), buf[:n]), from)
		}
	}()
}

// httpGet GETs url from inside h's namespace on a fresh connection (so
// each request is a new DNAT decision) and returns the body of a 200.
func httpGet(h *lab.Host, url string) (string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return h.DialTCP(ctx, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20)) // a metrics page runs to tens of kB
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %q", url, resp.Status, body)
	}
	return string(body), nil
}

// countPods sends n GETs from h and counts the answers by pod name.
func countPods(t *testing.T, h *lab.Host, url string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		body, err := httpGet(h, url)
		if err != nil {
			t.Fatalf("request %d of %d from %s: %v", i+1, n, h.Name(), err)
		}
		got[body]++
	}
	return got
}

// udpRaw sends payload from a fresh socket in h's namespace and returns
// the first reply within wait, nil when none came.
func udpRaw(h *lab.Host, to netip.AddrPort, payload []byte, wait time.Duration) ([]byte, error) {
	c, err := h.ListenUDP("0.0.0.0:0")
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort(payload, to); err != nil {
		return nil, fmt.Errorf("send to %s from %s: %w", to, h.Name(), err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 4096)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read from %s in %s: %w", to, h.Name(), err)
	}
	if from != to {
		return nil, fmt.Errorf("reply to %s in %s came from %s, want %s", to, h.Name(), from, to)
	}
	return buf[:n], nil
}

// udpExchange sends msg to to from h and returns the reply, which must
// come back from to itself (the DNAT undone).
func udpExchange(h *lab.Host, to netip.AddrPort, msg string) (string, error) {
	reply, err := udpRaw(h, to, []byte(msg), 2*time.Second)
	if err != nil {
		return "", err
	}
	if reply == nil {
		return "", fmt.Errorf("no reply from %s in %s within 2s", to, h.Name())
	}
	return string(reply), nil
}

// dnsA asks the agent's DNS in h's namespace for name's A records.
func dnsA(h *lab.Host, name string) ([]netip.Addr, int, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		return nil, 0, err
	}
	reply, err := udpRaw(h, agentDNS, wire, 2*time.Second)
	if err != nil {
		return nil, 0, err
	}
	if reply == nil {
		return nil, 0, fmt.Errorf("no DNS reply for %s from %s in %s within 2s", name, agentDNS, h.Name())
	}
	var m dns.Msg
	if err := m.Unpack(reply); err != nil {
		return nil, 0, fmt.Errorf("DNS reply for %s: %w", name, err)
	}
	if m.Id != q.Id {
		return nil, 0, fmt.Errorf("DNS reply for %s: id %d, want %d", name, m.Id, q.Id)
	}
	var ips []netip.Addr
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A.To4())
			ips = append(ips, ip)
		}
	}
	return ips, m.Rcode, nil
}

// waitDNS waits until name gets rcode and, for success, exactly want.
func waitDNS(h *lab.Host, name string, rcode int, want netip.Addr, timeout time.Duration) error {
	return lab.Eventually(timeout, 200*time.Millisecond, func() error {
		ips, rc, err := dnsA(h, name)
		if err != nil {
			return err
		}
		if rc != rcode || (rcode == dns.RcodeSuccess && (len(ips) != 1 || ips[0] != want)) {
			return fmt.Errorf("DNS %s: got %s %v, want %s %v", name, dns.RcodeToString[rc], ips, dns.RcodeToString[rcode], want)
		}
		return nil
	})
}

// tcpGarbage sends a DNS-over-TCP frame of garbage and one whose length
// prefix promises more than comes, and checks the server closes or answers
// with an error rather than an answer.
func tcpGarbage(h *lab.Host, to netip.AddrPort) error {
	for _, frame := range [][]byte{
		append([]byte{0, 20}, []byte("twenty bytes garbage")...),
		{0xff, 0xff, 1, 2, 3},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := h.DialTCP(ctx, to.String())
		cancel()
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		c.Write(frame)
		c.CloseWrite()
		reply, _ := io.ReadAll(c)
		c.Close()
		if len(reply) > 2 {
			var m dns.Msg
			if err := m.Unpack(reply[2:]); err == nil && m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0 {
				return fmt.Errorf("tcp garbage %q: got an answer %v, want an error or a close", frame, m.Answer)
			}
		}
	}
	return nil
}

// socksConnect asks the agent's SOCKS5 proxy in h's namespace to CONNECT
// to host:port (as a domain name) and returns the connection and the
// reply code.
func socksConnect(h *lab.Host, host string, port uint16) (*net.TCPConn, byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.DialTCP(ctx, agentSOCKS.String())
	if err != nil {
		return nil, 0, err
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	fail := func(err error) (*net.TCPConn, byte, error) {
		c.Close()
		return nil, 0, err
	}
	if _, err := c.Write([]byte{5, 1, 0}); err != nil { // version 5, one method: no auth
		return fail(err)
	}
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil {
		return fail(fmt.Errorf("method selection: %w", err))
	}
	if sel != [2]byte{5, 0} {
		return fail(fmt.Errorf("method selection: got %x, want 0500", sel))
	}
	req := append([]byte{5, 1, 0, 3, byte(len(host))}, host...) // CONNECT, domain name
	req = append(req, byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		return fail(err)
	}
	var rep [10]byte // VER REP RSV ATYP=IPv4 ADDR(4) PORT(2)
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return fail(fmt.Errorf("connect reply: %w", err))
	}
	if rep[0] != 5 || rep[3] != 1 {
		return fail(fmt.Errorf("connect reply: got %x, want version 5 and an IPv4 bound address", rep))
	}
	c.SetDeadline(time.Time{})
	return c, rep[1], nil
}

// svcTable is the nftables table the agent programs Services into.
const svcTable = "ip edgewire"

// svcRules returns `nft list table ip edgewire` in h ("" before the
// agent has created it).
func svcRules(h *lab.Host) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Exec(ctx, "nft", "list", "table", "ip", "edgewire")
	if err != nil && strings.Contains(out+err.Error(), "No such file") {
		return "", nil
	}
	return out, err
}

// portalNeedle is how `nft list` shows a Service port in the services
// map: "<ip> . <proto> . <port> : goto svc-...".
func portalNeedle(ip netip.Addr, proto string, port uint16) string {
	return fmt.Sprintf("%s . %s . %d : goto svc-", ip, proto, port)
}

// dnatNeedles are how `nft list` shows DNAT to ap: as an element of a
// Service's endpoint map ("ip . port"), or, for a Service port with one
// endpoint, as "dnat to ip:port".
func dnatNeedles(ap netip.AddrPort) []string {
	return []string{fmt.Sprintf("%s . %d", ap.Addr(), ap.Port()), "dnat to " + ap.String()}
}

// waitRules waits until check accepts n's Service rules.
func waitRules(t *testing.T, n *natNode, timeout time.Duration, check func(rules string) error) {
	t.Helper()
	err := lab.Eventually(timeout, 100*time.Millisecond, func() error {
		rules, err := svcRules(n.host)
		if err != nil {
			return err
		}
		return check(rules)
	})
	if err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
}

// grepLines returns the lines of s containing any of needles.
func grepLines(s string, needles ...string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		for _, n := range needles {
			if strings.Contains(line, n) {
				b.WriteString(line)
				break
			}
		}
	}
	return b.String()
}

// useAgentResolver makes processes started with `ip netns exec` in h use
// the agent's DNS: ip-netns bind-mounts /etc/netns/<ns>/resolv.conf over
// /etc/resolv.conf for them (a per-namespace file; the root namespace's
// own resolv.conf is untouched). Removed when the test ends.
func useAgentResolver(t *testing.T, h *lab.Host) {
	t.Helper()
	const base = "/etc/netns"
	_, err := os.Stat(base)
	created := errors.Is(err, os.ErrNotExist)
	dir := filepath.Join(base, h.NS())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		if created {
			os.Remove(base) // only if still empty
		}
	})
	conf := "nameserver " + agentDNS.Addr().String() + "\noptions ndots:1 timeout:2 attempts:2\n"
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// scrape GETs http://addr/metrics inside h's namespace.
func scrape(h *lab.Host, addr string) (string, error) {
	return httpGet(h, "http://"+addr+"/metrics")
}

// metricSum adds the samples of the metric name (Prometheus text format)
// whose label set contains label (e.g. `rcode="NOERROR"`; "" for all).
// ok is false when no sample matched.
func metricSum(text, name, label string) (sum float64, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		rest, found := strings.CutPrefix(line, name)
		if !found {
			continue // other metrics, and # HELP / # TYPE lines
		}
		var labels string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.Index(rest, "}")
			if end < 0 {
				continue
			}
			labels, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer metric name with this prefix
		}
		if label != "" && !strings.Contains(labels, label) {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		ok = true
	}
	return sum, ok
}

func TestMetricSum(t *testing.T) {
	const text = `# HELP edgewire_agent_dns_queries_total DNS queries answered, by response code.
# TYPE edgewire_agent_dns_queries_total counter
edgewire_agent_dns_queries_total{rcode="NOERROR"} 12
edgewire_agent_dns_queries_total{rcode="NXDOMAIN"} 3
edgewire_agent_dns_queries_total_extra 100
edgewire_coordinator_streams 3
edgewire_relay_bytes_received_total 1.5e+06
`
	for _, tc := range []struct {
		name, label string
		want        float64
		wantOK      bool
	}{
		{"edgewire_agent_dns_queries_total", `rcode="NOERROR"`, 12, true},
		{"edgewire_agent_dns_queries_total", "", 15, true},
		{"edgewire_agent_dns_queries_total", `rcode="SERVFAIL"`, 0, false},
		{"edgewire_coordinator_streams", "", 3, true},
		{"edgewire_relay_bytes_received_total", "", 1.5e6, true},
		{"edgewire_coordinator", "", 0, false}, // a prefix is not a name
		{"edgewire_missing", "", 0, false},
	} {
		got, ok := metricSum(text, tc.name, tc.label)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("metricSum(%s, %q): got %v %v, want %v %v", tc.name, tc.label, got, ok, tc.want, tc.wantOK)
		}
	}
}

// findEndpoint returns the entry of `edgewire services` for service's
// endpoint at addr (the first, if two nodes share the address), or nil.
func findEndpoint(sv localapi.Services, service, addr string) *localapi.ServiceEndpoint {
	for i, e := range sv.Endpoints {
		if e.Service == service && e.Address == addr {
			return &sv.Endpoints[i]
		}
	}
	return nil
}
