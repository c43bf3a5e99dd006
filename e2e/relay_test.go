package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/dataplane/bind"
	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/node/localapi"
)

// embeddedRelay is the coordinator's default relay region name.
const embeddedRelay = "coordinator"

// startNodes starts an agent for every node with one shared token and
// fills in each node's overlay address, key and port once all of them
// see every other node. extra adds agent flags per node name.
// behindNAT is a node named name behind site s's NAT of kind kind.
func behindNAT(name string, kind natKind, s *lab.Site) *natNode {
	return &natNode{name: name, spot: natSpot{kind, s.Router().Name()}, host: s.AddNode(name), nats: []*lab.Site{s}}
}

func startNodes(t *testing.T, l *lab.Lab, coord *cluster.Coordinator, nodes []*natNode, extra map[string][]string) {
	t.Helper()
	tok := coord.Token("--uses", fmt.Sprint(len(nodes)))
	for _, n := range nodes {
		n.agent = cluster.StartAgent(t, l, n.host, coord, n.name, cluster.AgentOptions{Token: tok, Extra: extra[n.name]})
	}
	for _, n := range nodes {
		st := n.agent.WaitPeers(len(nodes)-1, 30*time.Second)
		n.overlay = netip.MustParseAddr(st.Self.Addresses[0])
		n.key, n.port = st.Self.PublicKey, st.Self.ListenPort
	}
}

// checkPaths returns one line per side of a pair whose path is not
// want(pair); relayed sides must also name the viewer's home relay.
func checkPaths(snap snapshot, nodes []*natNode, want func(a, b natSpot) string) []string {
	var bad []string
	for _, x := range nodes {
		for _, y := range nodes {
			if x == y {
				continue
			}
			w := want(x.spot, y.spot)
			ps := snap.peer(x, y)
			switch {
			case ps == nil:
				bad = append(bad, fmt.Sprintf("%s does not list %s", x.name, y.name))
			case ps.Path != w:
				bad = append(bad, fmt.Sprintf("%s sees %s %s, want %s", x.name, y.name, ps.Path, w))
			case w == "relay" && (snap[x.name].Self.Relay == nil || ps.Relay != snap[x.name].Self.Relay.Home):
				home := "(no relay status)"
				if r := snap[x.name].Self.Relay; r != nil {
					home = r.Home
				}
				bad = append(bad, fmt.Sprintf("%s sees %s via relay %q, want its home relay %q", x.name, y.name, ps.Relay, home))
			}
		}
	}
	return bad
}

// waitPaths waits until every pair of nodes is on want's path on both
// sides, and fails the test with the mismatches otherwise.
func waitPaths(t *testing.T, nodes []*natNode, want func(a, b natSpot) string, timeout time.Duration) {
	t.Helper()
	err := lab.Eventually(timeout, 500*time.Millisecond, func() error {
		snap, err := takeSnapshot(nodes)
		if err != nil {
			return err
		}
		if bad := checkPaths(snap, nodes, want); len(bad) > 0 {
			return fmt.Errorf("%d sides off their path:\n  %s", len(bad), strings.Join(bad, "\n  "))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// matrixOnFailure logs the path matrix when the test has failed.
func matrixOnFailure(t *testing.T, nodes []*natNode, want func(a, b natSpot) string) {
	if t.Failed() {
		logPathMatrix(t, nodes, want)
	}
}

// allPairs returns every ordered pair of distinct nodes.
func allPairs(nodes []*natNode) []nodePair {
	var ps []nodePair
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				ps = append(ps, nodePair{a, b})
			}
		}
	}
	return ps
}

// cliPing runs `edgewire ping -o json` on from's agent and decodes the
// replies; err is the CLI's (non-zero exit when nothing came back).
func cliPing(from *cluster.Agent, to string, args ...string) ([]localapi.PingResult, error) {
	out, err := from.CLI(append([]string{"ping", to, "-o", "json"}, args...)...)
	var res []localapi.PingResult
	if jerr := json.Unmarshal([]byte(out), &res); jerr != nil && err == nil {
		err = fmt.Errorf("decode ping output: %w: %q", jerr, out)
	}
	return res, err
}

// relayStatus returns the node's own relay status, an empty one when the
// agent reports none.
func relayStatus(st localapi.Status) localapi.RelayStatus {
	if st.Self.Relay == nil {
		return localapi.RelayStatus{}
	}
	return *st.Self.Relay
}

// pinger is a `ping -D` running inside a lab namespace for a bounded
// time: its log holds one timestamped line per reply, from which a test
// reads when replies stopped and came back.
type pinger struct {
	proc *lab.Process
}

// startPinger pings to from h every 200ms for at most d.
func startPinger(t *testing.T, h *lab.Host, to netip.Addr, d time.Duration) *pinger {
	t.Helper()
	p, err := h.Start("ping-"+to.String(), nil, "ping", "-n", "-D", "-i", "0.2", "-W", "1",
		"-w", strconv.Itoa(int(d.Seconds())), to.String())
	if err != nil {
		t.Fatal(err)
	}
	return &pinger{proc: p}
}

var pingReply = regexp.MustCompile(`(?m)^\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+)`)

// replies returns the arrival times of every reply so far, in order.
func (p *pinger) replies() []time.Time {
	var ts []time.Time
	for _, m := range pingReply.FindAllStringSubmatch(p.proc.Log(), -1) {
		f, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		ts = append(ts, time.Unix(0, int64(f*1e9)))
	}
	return ts
}

// firstReplyAfter returns the first reply later than t0.
func (p *pinger) firstReplyAfter(t0 time.Time) (time.Time, bool) {
	for _, r := range p.replies() {
		if r.After(t0) {
			return r, true
		}
	}
	return time.Time{}, false
}

// longestGap returns the longest time without a reply between the last
// reply before t0 (or t0 itself) and the last reply; ok is false when no
// reply came after t0.
func longestGap(replies []time.Time, t0 time.Time) (gap time.Duration, ok bool) {
	prev := t0
	for _, r := range replies {
		if !r.After(t0) {
			prev = r
			continue
		}
		gap = max(gap, r.Sub(prev))
		prev, ok = r, true
	}
	return gap, ok
}

func TestLongestGap(t *testing.T) {
	at := func(s float64) time.Time { return time.Unix(1000, 0).Add(time.Duration(s * float64(time.Second))) }
	for _, tc := range []struct {
		name    string
		replies []float64
		t0      float64
		want    time.Duration
		wantOK  bool
	}{
		{"no replies", nil, 0, 0, false},
		{"none after t0", []float64{-1, -0.5}, 0, 0, false},
		{"steady", []float64{-0.2, 0, 0.2, 0.4}, 0.1, 200 * time.Millisecond, true},
		{"outage after t0", []float64{-0.2, 0, 0.2, 3.2, 3.4}, 0.1, 3 * time.Second, true},
		{"outage spans t0", []float64{-0.2, 2.8, 3.0}, 0.1, 3 * time.Second, true},
		{"nothing before t0", []float64{2, 2.2}, 0, 2 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rs []time.Time
			for _, r := range tc.replies {
				rs = append(rs, at(r))
			}
			got, ok := longestGap(rs, at(tc.t0))
			if got.Round(time.Millisecond) != tc.want || ok != tc.wantOK {
				t.Errorf("longestGap: got %v, %v, want %v, %v", got.Round(time.Millisecond), ok, tc.want, tc.wantOK)
			}
		})
	}
}

// writeMeshKey writes a fresh relay mesh key into the lab dir.
func writeMeshKey(t *testing.T, l *lab.Lab) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	p := filepath.Join(l.Dir(), "mesh.key")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRelayMatrix runs agents across every kind of NAT, UDP-blocked
// included, and checks every pair is reachable: direct where physics
// allows, through the coordinator's relay everywhere else, with WireGuard
// endpoints that say which.
func TestRelayMatrix(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)

	siteA := l.AddSite("a", lab.NATEIM)
	siteE, siteF := l.AddSite("e", lab.NATSymmetric), l.AddSite("f", lab.NATSymmetric)
	siteU := l.AddSite("u", lab.NATUDPBlocked)
	nodes := []*natNode{
		{name: "pub", spot: natSpot{kind: natPublic}, host: l.AddPublicHost("pub")},
		behindNAT("eim1", natEIM, siteA),
		behindNAT("sym1", natSym, siteE),
		behindNAT("sym2", natSym, siteF),
		behindNAT("udp1", natUDPBlocked, siteU),
	}
	pub, udp1 := nodes[0], nodes[4]
	startNodes(t, l, coord, nodes, nil)
	defer matrixOnFailure(t, nodes, expectedPath)

	// ICE needs a few seconds to reach direct; relayed pairs are on the
	// relay from the start.
	waitPaths(t, nodes, expectedPath, 45*time.Second)

	t.Run("every pair pings both ways at once", func(t *testing.T) {
		for _, err := range pingAll(allPairs(nodes), 3) {
			t.Error(err)
		}
	})

	t.Run("paths hold after traffic", func(t *testing.T) {
		snap, err := takeSnapshot(nodes)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range checkPaths(snap, nodes, expectedPath) {
			t.Error(b)
		}
	})

	t.Run("relayed peers' WireGuard endpoints are synthetic, direct ones are not", func(t *testing.T) {
		snap, err := takeSnapshot(nodes)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range nodes {
			wg, err := x.agent.WGShow()
			if err != nil {
				t.Fatal(err)
			}
			for _, y := range nodes {
				if x == y {
					continue
				}
				wp, ok := wg[y.key]
				if !ok {
					t.Errorf("%s: wg show has no peer %s", x.name, y.name)
					continue
				}
				ep, err := netip.ParseAddrPort(wp.Endpoint)
				if err != nil {
					t.Errorf("%s: wg endpoint of %s: got %q, want ip:port", x.name, y.name, wp.Endpoint)
					continue
				}
				if ps := snap.peer(x, y); ps != nil && ps.Endpoint != wp.Endpoint {
					t.Errorf("%s: status endpoint of %s: got %q, want %q as in wg show", x.name, y.name, ps.Endpoint, wp.Endpoint)
				}
				switch want := expectedPath(x.spot, y.spot); {
				case want == "relay" && !bind.RelayPrefix.Contains(ep.Addr()):
					t.Errorf("%s: wg endpoint of relayed %s: got %s, want one in %s", x.name, y.name, ep, bind.RelayPrefix)
				case want == "direct" && bind.RelayPrefix.Contains(ep.Addr()):
					t.Errorf("%s: wg endpoint of direct %s: got %s, want a real address outside %s", x.name, y.name, ep, bind.RelayPrefix)
				}
			}
		}
	})

	t.Run("edgewire ping between udp1 and pub goes via the relay both ways", func(t *testing.T) {
		for _, xy := range [][2]*natNode{{udp1, pub}, {pub, udp1}} {
			x, y := xy[0], xy[1]
			res, err := cliPing(x.agent, y.name, "-c", "3", "-i", "200ms")
			if err != nil {
				t.Errorf("edgewire ping %s from %s: %v", y.name, x.name, err)
				continue
			}
			if len(res) != 3 {
				t.Errorf("edgewire ping %s from %s: got %d results, want 3", y.name, x.name, len(res))
			}
			for i, r := range res {
				if r.Path != "relay" || r.Relay != embeddedRelay || r.RTTMs <= 0 || r.Address != y.overlay.String() {
					t.Errorf("edgewire ping %s from %s, reply %d: got path %q relay %q rtt %v address %s, want relay %q, rtt > 0, address %s",
						y.name, x.name, i, r.Path, r.Relay, r.RTTMs, r.Address, embeddedRelay, y.overlay)
				}
				if ep, err := netip.ParseAddrPort(r.Endpoint); err != nil || !bind.RelayPrefix.Contains(ep.Addr()) {
					t.Errorf("edgewire ping %s from %s, reply %d: endpoint %q, want one in %s", y.name, x.name, i, r.Endpoint, bind.RelayPrefix)
				}
			}
		}
	})
}

// startMeshedRelays starts a coordinator (embedded relay, region 1
// "coordinator") on public host "cloud" and a standalone relay (region 2
// "r2") on public host "relay2", meshed with a shared key; each also
// serves STUN. extra flags go to both.
func startMeshedRelays(t *testing.T, l *lab.Lab, extra ...string) (*cluster.Coordinator, *cluster.Relay) {
	t.Helper()
	cloud := l.AddPublicHost("cloud")
	r2host := l.AddPublicHost("relay2")
	meshKey := writeMeshKey(t, l)
	relay2 := cluster.NewRelay(t, l, r2host)
	relayMap := filepath.Join(l.Dir(), "relaymap.json")
	// The relay answers STUN on 3478 and, by default, 3479 too.
	rm := fmt.Sprintf(`{"regions":[{"id":2,"name":"r2","host":%q,"port":%d,"key":%q,"stun_port":3478,"stun_alt_port":3479}]}`,
		r2host.IP(), cluster.RelayPort, relay2.Key)
	if err := os.WriteFile(relayMap, []byte(rm), 0o644); err != nil {
		t.Fatal(err)
	}
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{
		Extra: append([]string{"--relay-map", relayMap, "--mesh-key-file", meshKey}, extra...),
	})
	relay2.StartWith(cluster.RelayOptions{
		TicketKey: coord.TicketKeyFile(), MeshKeyFile: meshKey, MeshPeers: []string{coord.RelayMeshPeer()}, Extra: extra,
	})
	return coord, relay2
}

// TestRelayMesh homes nodes on two meshed relays, the coordinator's and a
// standalone one, checks they reach each other across the mesh, then
// kills the standalone relay: its nodes must fail over to the
// coordinator's within seconds and come back when it returns.
func TestRelayMesh(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	coord, relay2 := startMeshedRelays(t, l)

	var nodes []*natNode
	for _, name := range []string{"a", "b", "c", "d"} {
		s := l.AddSite("s"+name, lab.NATSymmetric)
		nodes = append(nodes, &natNode{name: name, spot: natSpot{natSym, s.Router().Name()}, host: s.AddNode(name), nats: []*lab.Site{s}})
	}
	a, b, c, d := nodes[0], nodes[1], nodes[2], nodes[3]
	startNodes(t, l, coord, nodes, map[string][]string{
		"a": {"--relay-region", "1"},
		"b": {"--relay-region", "2"},
		"c": {"--relay-region", "2"},
		"d": {"--relay-region", "2"},
	})
	defer matrixOnFailure(t, nodes, expectedPath)

	waitHome := func(t *testing.T, want map[*natNode]string, timeout time.Duration) {
		t.Helper()
		var ns []*natNode
		for n := range want {
			ns = append(ns, n)
		}
		err := lab.Eventually(timeout, 250*time.Millisecond, func() error {
			snap, err := takeSnapshot(ns)
			if err != nil {
				return err
			}
			var bad []string
			for n, home := range want {
				if r := relayStatus(snap[n.name]); r.Home != home || !r.Connected {
					bad = append(bad, fmt.Sprintf("%s: home %q connected %v (error %q), want %q connected", n.name, r.Home, r.Connected, r.Error, home))
				}
			}
			slices.Sort(bad)
			if len(bad) > 0 {
				return fmt.Errorf("%s", strings.Join(bad, "; "))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("nodes home on the relay they were told to", func(t *testing.T) {
		waitHome(t, map[*natNode]string{a: embeddedRelay, b: "r2", c: "r2", d: "r2"}, 20*time.Second)
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("nodes on different relays reach each other across the mesh", func(t *testing.T) {
		waitPaths(t, nodes, expectedPath, 20*time.Second)
		for _, err := range pingAll([]nodePair{{a, b}, {b, a}, {c, d}, {d, c}}, 3) {
			t.Error(err)
		}
	})

	t.Run("nodes of a dead relay fail over to the coordinator's and return", func(t *testing.T) {
		p := startPinger(t, c.host, d.overlay, 80*time.Second)
		defer p.proc.Stop(2 * time.Second)
		if err := lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
			if len(p.replies()) < 3 {
				return fmt.Errorf("got %d replies from d, want 3 before the kill", len(p.replies()))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		relay2.Proc.Kill()
		var back time.Time
		err := lab.Eventually(15*time.Second, 100*time.Millisecond, func() error {
			var ok bool
			if back, ok = p.firstReplyAfter(killed); !ok {
				return fmt.Errorf("no ping reply from d since relay2 died")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("c -> d after killing relay2: %v", err)
		}
		t.Logf("c -> d: first reply %v after relay2 was killed", back.Sub(killed).Round(time.Millisecond))
		waitHome(t, map[*natNode]string{b: embeddedRelay, c: embeddedRelay, d: embeddedRelay}, 5*time.Second)
		waitPaths(t, nodes, expectedPath, 5*time.Second)
		for _, err := range pingAll([]nodePair{{a, b}, {b, a}, {d, c}}, 3) {
			t.Error(err)
		}

		restarted := time.Now()
		relay2.Start()
		waitHome(t, map[*natNode]string{c: "r2"}, 30*time.Second)
		t.Logf("c back home on r2 %v after relay2 restarted", time.Since(restarted).Round(time.Millisecond))
		waitHome(t, map[*natNode]string{b: "r2", d: "r2"}, 10*time.Second)
		if gap, ok := longestGap(p.replies(), restarted); !ok || gap > 5*time.Second {
			t.Errorf("c -> d while returning to r2: longest gap %v (replies after restart: %v), want replies with gaps <= 5s", gap, ok)
		} else {
			t.Logf("c -> d while returning to r2: longest gap %v", gap.Round(time.Millisecond))
		}
		for _, err := range pingAll([]nodePair{{a, b}, {c, d}}, 3) {
			t.Error(err)
		}
	})
}

// TestDirectFallback breaks the direct path of two EIM nodes mid-traffic:
// they must fall back to the relay without a long outage and return to
// direct once the path heals, with nothing restarted.
func TestDirectFallback(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)
	siteA, siteB := l.AddSite("a", lab.NATEIM), l.AddSite("b", lab.NATEIM)
	nodes := []*natNode{
		{name: "e1", spot: natSpot{natEIM, "a"}, host: siteA.AddNode("e1"), nats: []*lab.Site{siteA}},
		{name: "e2", spot: natSpot{natEIM, "b"}, host: siteB.AddNode("e2"), nats: []*lab.Site{siteB}},
	}
	e1, e2 := nodes[0], nodes[1]
	startNodes(t, l, coord, nodes, nil)
	want := "direct"
	defer matrixOnFailure(t, nodes, func(natSpot, natSpot) string { return want })
	waitPaths(t, nodes, func(natSpot, natSpot) string { return want }, 30*time.Second)

	// The lab's internet is a bridge that does not firewall, so the cut
	// goes on both site routers: no UDP between the two sites' public
	// addresses, while STUN and the relay (TCP) to the cloud still pass.
	type rule struct {
		r     *lab.Site
		chain string
		spec  []string
	}
	var rules []rule
	for _, sp := range [][2]*lab.Site{{siteA, siteB}, {siteB, siteA}} {
		self, other := sp[0], sp[1].PublicIP().String()
		rules = append(rules,
			rule{self, "FORWARD", []string{"-p", "udp", "-d", other, "-j", "DROP"}},
			rule{self, "FORWARD", []string{"-p", "udp", "-s", other, "-j", "DROP"}},
			rule{self, "OUTPUT", []string{"-p", "udp", "-d", other, "-j", "DROP"}},
			rule{self, "INPUT", []string{"-p", "udp", "-s", other, "-j", "DROP"}},
		)
	}
	iptables := func(op string) {
		t.Helper()
		for _, r := range rules {
			r.r.Router().MustExec(t, append([]string{"iptables", "-w", op, r.chain}, r.spec...)...)
		}
	}

	p := startPinger(t, e1.host, e2.overlay, 85*time.Second)
	defer p.proc.Stop(2 * time.Second)
	if err := lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
		if n := len(p.replies()); n < 3 {
			return fmt.Errorf("got %d replies, want 3 before the cut", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("e1 -> e2 over the direct path: %v", err)
	}

	cut := time.Now()
	iptables("-I")
	want = "relay"
	waitPaths(t, nodes, func(natSpot, natSpot) string { return want }, 15*time.Second)
	t.Logf("both sides on relay %v after the cut", time.Since(cut).Round(time.Millisecond))
	err := lab.Eventually(15*time.Second, 200*time.Millisecond, func() error {
		if _, ok := p.firstReplyAfter(time.Now().Add(-time.Second)); !ok {
			return fmt.Errorf("no ping reply in the last second")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("e1 -> e2 after the cut: %v", err)
	}
	gap, _ := longestGap(p.replies(), cut)
	t.Logf("e1 -> e2: longest gap without a reply after the cut: %v", gap.Round(time.Millisecond))
	if gap >= 15*time.Second {
		t.Errorf("e1 -> e2 outage when the direct path broke: got %v, want < 15s", gap)
	}

	healed := time.Now()
	iptables("-D")
	want = "direct"
	waitPaths(t, nodes, func(natSpot, natSpot) string { return want }, 40*time.Second)
	t.Logf("both sides direct again %v after the path healed", time.Since(healed).Round(time.Millisecond))
	if gap, ok := longestGap(p.replies(), healed); !ok || gap > 5*time.Second {
		t.Errorf("e1 -> e2 while upgrading to direct: longest gap %v (replies after healing: %v), want replies with gaps <= 5s", gap, ok)
	}
	for _, err := range pingAll([]nodePair{{e2, e1}}, 3) {
		t.Error(err)
	}
}

// TestRelayRevocation deletes a node that only the relay can reach: the
// relay must drop it and refuse it, and its peers must forget it.
func TestRelayRevocation(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)
	siteE, siteU := l.AddSite("e", lab.NATSymmetric), l.AddSite("u", lab.NATUDPBlocked)
	nodes := []*natNode{
		{name: "pub", spot: natSpot{kind: natPublic}, host: l.AddPublicHost("pub")},
		{name: "sym1", spot: natSpot{natSym, "e"}, host: siteE.AddNode("sym1"), nats: []*lab.Site{siteE}},
		{name: "udp1", spot: natSpot{natUDPBlocked, "u"}, host: siteU.AddNode("udp1"), nats: []*lab.Site{siteU}},
	}
	pub, sym1, udp1 := nodes[0], nodes[1], nodes[2]
	startNodes(t, l, coord, nodes, nil)
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 30*time.Second)
	for _, err := range pingAll([]nodePair{{pub, udp1}, {sym1, udp1}}, 3) {
		t.Fatal(err)
	}
	if r := relayStatus(mustStatus(t, udp1)); !r.Connected || r.Home != embeddedRelay {
		t.Fatalf("udp1 relay before delete: home %q connected %v, want %q connected", r.Home, r.Connected, embeddedRelay)
	}

	deleted := time.Now()
	if out, err := coord.CLI("nodes", "delete", "udp1"); err != nil {
		t.Fatalf("nodes delete udp1: %v\n%s", err, out)
	}

	var wg sync.WaitGroup
	wg.Go(func() {
		err := lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
			st, err := udp1.agent.Status()
			if err != nil {
				return err
			}
			if r := relayStatus(st); r.Connected {
				return fmt.Errorf("udp1 relay: home %q connected, want disconnected", r.Home)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
			return
		}
		t.Logf("udp1 lost its relay %v after the delete", time.Since(deleted).Round(time.Millisecond))
		// Refused, not just dropped: the agent keeps trying and must stay out.
		var r localapi.RelayStatus
		for range 12 {
			time.Sleep(250 * time.Millisecond)
			st, err := udp1.agent.Status()
			if err != nil {
				t.Errorf("status of deleted udp1: %v", err)
				return
			}
			if r = relayStatus(st); r.Connected {
				t.Errorf("udp1 relay: reconnected to %q %v after its delete, want refused", r.Home, time.Since(deleted).Round(time.Millisecond))
				return
			}
		}
		t.Logf("udp1 relay error after delete: %q", r.Error)
	})
	for _, x := range []*natNode{pub, sym1} {
		wg.Go(func() {
			err := lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
				st, err := x.agent.Status()
				if err != nil {
					return err
				}
				for _, ps := range st.Peers {
					if ps.Name == "udp1" {
						return fmt.Errorf("status still lists udp1 (path %s)", ps.Path)
					}
				}
				peers, err := x.agent.WGShow()
				if err != nil {
					return err
				}
				if _, ok := peers[udp1.key]; ok {
					return fmt.Errorf("wg show still lists udp1")
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s after deleting udp1: %v", x.name, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if got, err := pub.host.Ping(context.Background(), udp1.overlay, 2); err != nil || got != 0 {
		t.Errorf("ping from pub to deleted udp1: got %d replies (%v), want 0", got, err)
	}
	// The others still reach each other.
	for _, err := range pingAll([]nodePair{{pub, sym1}}, 3) {
		t.Error(err)
	}
}

func mustStatus(t *testing.T, n *natNode) localapi.Status {
	t.Helper()
	st, err := n.agent.Status()
	if err != nil {
		t.Fatalf("status of %s: %v", n.name, err)
	}
	return st
}
