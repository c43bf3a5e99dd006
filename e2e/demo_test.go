package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// TestDemo is `make demo`: a coordinator with its embedded relay, four
// edge nodes behind different NATs, and a Service on one of them; it
// prints what a user would look at, and why (the NAT kinds in words, why
// each pair has its path, a ping that waits for the direct path, netcheck
// on both NAT kinds), then tears everything down. It also runs in `make
// test`, so the demo cannot rot.
func TestDemo(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }

	// The Service is declared in a services file (no Kubernetes needed):
	// web.demo -> a pod on edge-b.
	podCIDR := netip.MustParsePrefix("10.244.2.0/24")
	svcFile := filepath.Join(l.Dir(), "services.json")
	if err := os.WriteFile(svcFile, []byte(`{"services": [{"namespace": "demo", "name": "web",
		"cluster_ips": ["10.96.0.10"], "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
		"endpoints": [{"addresses": ["10.244.2.2"], "node_name": "edge-b", "ports": {"http": 8080}}]}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: []string{"--services-file", svcFile}})
	say("== coordinator on %s, with its relay (TCP 8444) and STUN server (UDP 3478, and 3479 for netcheck)", coord.Addr())
	// Routes are routed only where the token allows them (or an admin
	// approves them): this one allows the pod network.
	tok := coord.Token("--uses", "4", "--ttl", "10m", "--routes", "10.244.0.0/16")
	say("== join token (routes within 10.244.0.0/16 approved): %s", tok)

	type node struct {
		name string
		nat  lab.NATKind
		args []string
	}
	nodes := []node{
		{"edge-a", lab.NATEIM, nil},
		{"edge-b", lab.NATEIM, []string{"--advertise-routes", podCIDR.String()}},
		{"edge-c", lab.NATSymmetric, nil},
		{"edge-d", lab.NATSymmetric, nil},
	}
	var agents []*cluster.Agent
	var spots []natSpot
	var b *lab.Host
	for i, n := range nodes {
		site := l.AddSite(fmt.Sprintf("site%d", i), n.nat)
		h := site.AddNode(strings.ReplaceAll(n.name, "-", ""))
		if n.name == "edge-b" {
			b = h
		}
		say("== %s is behind %s; its site's public address is %s", n.name, natInWords(n.nat), site.PublicIP())
		agents = append(agents, cluster.StartAgent(t, l, h, coord, n.name, cluster.AgentOptions{Token: tok, Extra: n.args}))
		spots = append(spots, natSpot{kind: demoKind(n.nat), lan: site.LAN().String()})
	}
	pod := b.AddPod("web", podCIDR)
	ln, err := pod.ListenTCP(netip.AddrPortFrom(pod.IP(), 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pod web (%s) on edge-b\n", pod.IP())
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	for _, a := range agents {
		a.WaitPeers(len(agents)-1, 30*time.Second)
	}
	a := agents[0]

	// Every node starts on the relay and tries a direct path at once:
	// ping waits (at most 60 pings, half a second apart) for it.
	out, err := demoCLI(t, a, 60*time.Second, "ping", "edge-b", "--until-direct", "-c", "60", "-i", "500ms")
	say("\n$ edgewire ping edge-b --until-direct -c 60 -i 500ms   # on edge-a: pings until a reply takes a direct path\n%s", out)
	if err != nil {
		t.Fatalf("ping --until-direct: %v", err)
	}
	replies := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.Contains(replies[len(replies)-1], "path direct") {
		t.Fatalf("ping --until-direct: the last reply is not direct:\n%s", out)
	}
	var relayed, lost int
	for _, r := range replies {
		switch {
		case strings.Contains(r, "path relay"):
			relayed++
		case strings.HasPrefix(r, "no reply"):
			lost++
		}
	}
	switch {
	case relayed+lost == 0:
		say("== the direct path was up before the first ping: ICE starts as soon as two nodes see each other in the map")
	default:
		say("== %s over the relay and %s while ICE worked on the direct path, then the path turned direct", plural(relayed, "reply", "replies"), plural(lost, "ping", "pings")+" lost")
	}

	// Why each pair has its path, and every node agrees.
	say("== why each pair has its path")
	for i := range nodes {
		for j := i + 1; j < len(nodes); j++ {
			path, why := pathInWords(nodes[i].name, spots[i], nodes[j].name, spots[j])
			say("  %s <-> %s: %s (%s)", nodes[i].name, nodes[j].name, path, why)
		}
	}
	err = lab.Eventually(40*time.Second, 250*time.Millisecond, func() error {
		for i, x := range agents {
			st, err := x.Status()
			if err != nil {
				return err
			}
			if len(st.Peers) != len(agents)-1 {
				return fmt.Errorf("%s lists %d peers, want %d", x.Name, len(st.Peers), len(agents)-1)
			}
			for _, p := range st.Peers {
				j := slices.IndexFunc(nodes, func(n node) bool { return n.name == p.Name })
				if j < 0 {
					return fmt.Errorf("%s lists an unknown peer %q", x.Name, p.Name)
				}
				if want := expectedPath(spots[i], spots[j]); p.Path != want {
					return fmt.Errorf("%s's path to %s is %s, want %s", x.Name, p.Name, p.Path, want)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("paths: %v", err)
	}
	for _, to := range agents[1:] {
		mustPing(t, a, to.OverlayIP(), 2)
	}
	out, err = demoCLI(t, a, 20*time.Second, "ping", "edge-c", "-c", "2", "-i", "200ms")
	if err != nil {
		t.Fatalf("ping edge-c: %v\n%s", err, out)
	}
	say("$ edgewire ping edge-c -c 2 -i 200ms   # on edge-a: edge-c is behind a symmetric NAT\n%s", out)
	if !strings.Contains(out, "path relay via coordinator") {
		t.Fatalf("ping edge-c: want replies through the relay:\n%s", out)
	}

	// netcheck tells the two NAT kinds apart with this one coordinator.
	for _, nc := range []struct {
		agent *cluster.Agent
		want  string
	}{{agents[0], "NAT mapping:     endpoint-independent"}, {agents[2], "NAT mapping:     endpoint-dependent"}} {
		out, err := demoCLI(t, nc.agent, 20*time.Second, "netcheck")
		if err != nil {
			t.Fatalf("netcheck on %s: %v", nc.agent.Name, err)
		}
		say("$ edgewire netcheck   # on %s\n%s", nc.agent.Name, out)
		if !strings.Contains(out, nc.want) {
			t.Fatalf("netcheck on %s: want %q", nc.agent.Name, nc.want)
		}
	}
	out, err = coord.CLI("nodes", "list")
	if err != nil {
		t.Fatal(err)
	}
	say("$ edgewire nodes list   # on the coordinator\n%s", out)
	st, err := a.CLI("status")
	if err != nil {
		t.Fatal(err)
	}
	say("$ edgewire status   # on edge-a\n%s", st)
	wg := a.Host.MustExec(t, "wg", "show", a.Iface)
	say("$ wg show %s   # on edge-a\n%s", a.Iface, wg)
	if strings.Count(wg, "latest handshake") != len(agents)-1 {
		t.Fatalf("wg show: want %d peers with a handshake:\n%s", len(agents)-1, wg)
	}

	// curl by Service name: edge-a's resolver is the agent's DNS server.
	etc := filepath.Join("/etc/netns", a.Host.NS())
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 169.254.96.16\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var body string
	err = lab.Eventually(20*time.Second, 500*time.Millisecond, func() error {
		body, err = a.Host.Exec(ctxT(t, 10*time.Second), "curl", "-sS", "--max-time", "5", "http://web.demo.svc.cluster.local/")
		return err
	})
	if err != nil {
		t.Fatalf("curl by Service name: %v", err)
	}
	say("$ curl http://web.demo.svc.cluster.local/   # on edge-a, across two NATs to a pod on edge-b\n%s", body)
	if !strings.Contains(body, "hello from pod web") {
		t.Fatalf("curl: got %q, want the pod's greeting", body)
	}
	// The fleet as the coordinator sees it from the agents' path reports:
	// edge-a talked to every node, so its three pairs are active.
	var graph string
	err = lab.Eventually(30*time.Second, 500*time.Millisecond, func() error {
		out, err := coord.CLI("graph")
		if err != nil {
			return err
		}
		graph = out
		if n := strings.Count(out, "--"); n < len(agents)-1 {
			return fmt.Errorf("%d edges, want edge-a's %d:\n%s", n, len(agents)-1, out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("edgewire graph: %v", err)
	}
	say("$ edgewire graph   # on the coordinator: active pairs from the agents' path reports, as Graphviz DOT (dashed: relayed); the same on its /topology page\n%s", graph)
	say("== tearing down the lab")
}

// demoCLI runs the edgewire CLI against a's agent with a timeout of its
// own (a ping that waits for a direct path may outlast cluster's 20 s),
// and returns what it printed, its errors after.
func demoCLI(t *testing.T, a *cluster.Agent, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cluster.Bin(t, "edgewire"), append([]string{"--socket", a.Socket}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("edgewire %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// demoKind is how path finding sees a lab NAT kind.
func demoKind(k lab.NATKind) natKind {
	switch k {
	case lab.NATNone:
		return natPublic
	case lab.NATSymmetric:
		return natSym
	case lab.NATUDPBlocked:
		return natUDPBlocked
	}
	return natEIM
}

// natInWords says what a lab NAT kind is, for a reader who does not know
// the terms.
func natInWords(k lab.NATKind) string {
	switch k {
	case lab.NATNone:
		return "no NAT (a public address)"
	case lab.NATEIM:
		return "an endpoint-independent NAT (a home router: one public port per socket whatever the destination, so hole punching works)"
	case lab.NATSymmetric:
		return "a symmetric NAT (endpoint-dependent, as carrier-grade NATs and strict firewalls are: a new public port for every destination, so hole punching fails)"
	case lab.NATUDPBlocked:
		return "a NAT that lets no UDP out (only TCP leaves the site, so only the relay works)"
	}
	return "a NAT of kind " + k.String()
}

// pathInWords is the path two nodes end up on (expectedPath) and why, in
// the order expectedPath decides it.
func pathInWords(an string, a natSpot, bn string, b natSpot) (path, why string) {
	// the returns the node of kind k (a first) and the other one.
	the := func(k natKind) (string, string, bool) {
		switch k {
		case a.kind:
			return an, bn, true
		case b.kind:
			return bn, an, true
		}
		return "", "", false
	}
	path = expectedPath(a, b)
	switch {
	case a.lan != "" && a.lan == b.lan:
		why = "one LAN: they reach each other's host address"
	case a.kind == natUDPBlocked || b.kind == natUDPBlocked:
		x, _, _ := the(natUDPBlocked)
		why = x + "'s site lets no UDP out"
	case a.kind == natPublic || b.kind == natPublic:
		x, y, _ := the(natPublic)
		why = x + " has a public address that " + y + " can send to"
	case a.kind == natSym && b.kind == natSym:
		why = "both behind symmetric NATs: neither can learn the port the other's NAT will use"
	case a.kind == natSym || b.kind == natSym:
		x, y, _ := the(natSym)
		why = x + "'s symmetric NAT sends from a new port that " + y + " never learns, and " + y + "'s NAT lets in only the ports it has sent to"
	default:
		why = "both NATs keep one mapping per socket, so the public ports STUN showed work for the peer too"
	}
	return path, why
}

// TestPathInWords: the reason given always fits the path the pair must
// have, whichever way round the pair is named.
func TestPathInWords(t *testing.T) {
	spots := map[string]natSpot{
		"pub": {kind: natPublic}, "eim": {natEIM, "a"}, "eim2": {natEIM, "b"}, "sym": {natSym, "c"}, "sym2": {natSym, "d"},
		"udp": {natUDPBlocked, "e"}, "eimlan": {natEIM, "a"},
	}
	for _, tc := range []struct {
		a, b, path, why string
	}{
		{"eim", "eim2", "direct", "both NATs keep one mapping per socket"},
		{"eim", "sym", "relay", "sym's symmetric NAT sends from a new port that eim never learns"},
		{"sym", "eim", "relay", "sym's symmetric NAT sends from a new port that eim never learns"},
		{"sym", "sym2", "relay", "both behind symmetric NATs"},
		{"pub", "sym", "direct", "pub has a public address that sym can send to"},
		{"sym", "pub", "direct", "pub has a public address that sym can send to"},
		{"pub", "udp", "relay", "udp's site lets no UDP out"},
		{"udp", "pub", "relay", "udp's site lets no UDP out"},
		{"eim", "eimlan", "direct", "one LAN"},
	} {
		path, why := pathInWords(tc.a, spots[tc.a], tc.b, spots[tc.b])
		if path != tc.path || !strings.HasPrefix(why, tc.why) {
			t.Errorf("%s <-> %s: got %s (%s), want %s (%s...)", tc.a, tc.b, path, why, tc.path, tc.why)
		}
	}
}

// plural says n things with the noun's right number.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
