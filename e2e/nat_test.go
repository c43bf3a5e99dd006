package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/node/localapi"
)

// natKind is how a node reaches the internet, as far as path finding cares.
type natKind int

const (
	natPublic     natKind = iota // its own public address
	natEIM                       // behind one or more endpoint-independent NATs (MASQUERADE: EIM mapping, port-restricted filtering)
	natSym                       // behind a symmetric NAT (a new mapping per destination)
	natUDPBlocked                // behind a NAT that lets no UDP out (only TCP leaves the site)
)

// natSpot is a node's NAT situation.
type natSpot struct {
	kind natKind
	lan  string // the LAN a NATed node sits on; "" for a public node
}

// expectedPath is the path two nodes must end up on, whichever way round:
// direct when they share a LAN (host candidates), when one is public (its
// host candidate; a symmetric peer shows up peer-reflexive), or when both
// are behind endpoint-independent NATs of different sites (server-reflexive
// candidates); relay when a symmetric NAT faces any other NAT, since the
// mapping it uses for the peer is one the peer never learns and the peer's
// port-restricted filter drops it; relay too when UDP cannot leave one of
// the sites. Sites never share an outer NAT here
// except as one LAN, so hairpinning does not come up.
func expectedPath(a, b natSpot) string {
	switch {
	case a.lan != "" && a.lan == b.lan:
		return "direct"
	case a.kind == natUDPBlocked || b.kind == natUDPBlocked:
		return "relay"
	case a.kind == natPublic || b.kind == natPublic:
		return "direct"
	case a.kind == natSym || b.kind == natSym:
		return "relay"
	default:
		return "direct"
	}
}

func TestExpectedPath(t *testing.T) {
	pub := natSpot{kind: natPublic}
	eimA, eimB := natSpot{natEIM, "a"}, natSpot{natEIM, "b"}
	symE, symF := natSpot{natSym, "e"}, natSpot{natSym, "f"}
	for _, tc := range []struct {
		name string
		a, b natSpot
		want string
	}{
		{"public and public", pub, pub, "direct"},
		{"public and eim", pub, eimA, "direct"},
		{"public and symmetric (peer-reflexive)", pub, symE, "direct"},
		{"eim and eim of other sites", eimA, eimB, "direct"},
		{"two nodes on one LAN", eimA, eimA, "direct"},
		{"two nodes on one symmetric LAN", symE, symE, "direct"},
		{"eim and symmetric", eimA, symE, "relay"},
		{"symmetric and symmetric", symE, symF, "relay"},
		{"public and udp-blocked", pub, natSpot{natUDPBlocked, "u"}, "relay"},
		{"two nodes on one udp-blocked LAN", natSpot{natUDPBlocked, "u"}, natSpot{natUDPBlocked, "u"}, "direct"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expectedPath(tc.a, tc.b); got != tc.want {
				t.Errorf("expectedPath(%v, %v): got %s, want %s", tc.a, tc.b, got, tc.want)
			}
			if got := expectedPath(tc.b, tc.a); got != tc.want {
				t.Errorf("expectedPath(%v, %v): got %s, want %s (must be symmetric)", tc.b, tc.a, got, tc.want)
			}
		})
	}
}

// natNode is one agent of the NAT lab.
type natNode struct {
	name  string
	spot  natSpot
	host  *lab.Host
	nats  []*lab.Site // routers from the node outwards; none for a public node
	agent *cluster.Agent

	// Filled in once the agent is up.
	overlay netip.Addr
	key     string
	port    int // WireGuard/ICE listen port
}

// nodePair is an unordered pair, a before b in the node list.
type nodePair struct{ a, b *natNode }

func (p nodePair) String() string { return p.a.name + "<->" + p.b.name }

// snapshot is every agent's status at one moment, by agent name.
type snapshot map[string]localapi.Status

func takeSnapshot(nodes []*natNode) (snapshot, error) {
	snap := snapshot{}
	for _, n := range nodes {
		if n.agent.Proc.Exited() {
			return nil, fmt.Errorf("agent %s exited: %v", n.name, n.agent.Proc.ExitErr())
		}
		st, err := n.agent.Status()
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", n.name, err)
		}
		snap[n.name] = st
	}
	return snap, nil
}

// peer returns x's status of peer y, or nil when x does not list y.
func (s snapshot) peer(x, y *natNode) *localapi.PeerStatus {
	st := s[x.name]
	for i := range st.Peers {
		if st.Peers[i].Name == y.name {
			return &st.Peers[i]
		}
	}
	return nil
}

// path returns x's path to y, "(missing)" when x does not list y.
func (s snapshot) path(x, y *natNode) string {
	if ps := s.peer(x, y); ps != nil {
		return ps.Path
	}
	return "(missing)"
}

func iceState(ps *localapi.PeerStatus) string {
	if ps == nil || ps.ICE == nil {
		return "(no ice)"
	}
	return ps.ICE.State
}

// pingEventually pings to from from until one round of count pings gets
// count replies, for up to 15s (the first packets may wait for a handshake).
func pingEventually(from *cluster.Agent, to netip.Addr, count int) error {
	return lab.Eventually(15*time.Second, 0, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		got, err := from.Host.Ping(ctx, to, count)
		if err != nil {
			return err
		}
		if got != count {
			return fmt.Errorf("got %d of %d replies", got, count)
		}
		return nil
	})
}

// wgPeerState is x's WireGuard view of y (endpoint, last handshake,
// bytes in and out), read with the stock wg tool, for a failed ping's
// message: it tells a path that drops everything from a session that one
// side cannot decrypt.
func wgPeerState(x, y *natNode) string {
	peers, err := x.agent.WGShow()
	if err != nil {
		return fmt.Sprintf("%s's view of %s: %v", x.name, y.name, err)
	}
	p, ok := peers[y.key]
	if !ok {
		return fmt.Sprintf("%s's view of %s: no such peer", x.name, y.name)
	}
	hs := "never"
	if !p.LastHandshake.IsZero() {
		hs = time.Since(p.LastHandshake).Round(time.Second).String() + " ago"
	}
	return fmt.Sprintf("%s's view of %s: endpoint %s, handshake %s, rx %d B, tx %d B", x.name, y.name, p.Endpoint, hs, p.Rx, p.Tx)
}

// pingAll runs every ping at once and returns one error per failed ping.
func pingAll(pings []nodePair, count int) []error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex // guards errs
		errs []error
	)
	for _, p := range pings {
		wg.Go(func() {
			before := []string{wgPeerState(p.a, p.b), wgPeerState(p.b, p.a)}
			if err := pingEventually(p.a.agent, p.b.overlay, count); err != nil {
				err = fmt.Errorf("ping %s -> %s (%s): %w\n\tbefore: %s\n\t        %s\n\tafter:  %s\n\t        %s",
					p.a.name, p.b.name, p.b.overlay, err, before[0], before[1], wgPeerState(p.a, p.b), wgPeerState(p.b, p.a))
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

// publicAddrs returns the addresses from which x can see y's WireGuard
// socket: y's own address when y is public or on x's LAN, else the
// mappings y's outermost NAT really holds for it, followed through every
// NAT layer in conntrack. An endpoint-independent layer must hold exactly
// one mapping per inner source.
func publicAddrs(ctx context.Context, x, y *natNode) ([]netip.AddrPort, error) {
	own := netip.AddrPortFrom(y.host.IP(), uint16(y.port))
	if len(y.nats) == 0 || (y.spot.lan != "" && y.spot.lan == x.spot.lan) {
		return []netip.AddrPort{own}, nil
	}
	cur := []netip.AddrPort{own}
	for _, s := range y.nats {
		var next []netip.AddrPort
		for _, in := range cur {
			ms, err := s.UDPMappings(ctx, in)
			if err != nil {
				return nil, err
			}
			if s.Kind() == lab.NATEIM && len(ms) > 1 {
				// MASQUERADE reuses a source's mapping unless that clashes
				// with another LAN host's flow to the same destination.
				return nil, fmt.Errorf("EIM router %s maps %s (%s) to %v, want exactly one mapping (a port clash with another host on its LAN?)", s.Router().Name(), in, y.name, ms)
			}
			next = append(next, ms...)
		}
		if len(next) == 0 {
			return nil, fmt.Errorf("router %s holds no UDP mapping for %s (%s)", s.Router().Name(), cur, y.name)
		}
		cur = next
	}
	return cur, nil
}

// checkEndpoint checks that the endpoint x's WireGuard holds for y (wg show
// and x's status agree on it) is one of y's real public mappings, and
// returns it.
func checkEndpoint(ctx context.Context, snap snapshot, x, y *natNode) (netip.AddrPort, error) {
	wg, err := x.agent.WGShow()
	if err != nil {
		return netip.AddrPort{}, err
	}
	wp, ok := wg[y.key]
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%s: wg show has no peer %s", x.name, y.name)
	}
	got, err := netip.ParseAddrPort(wp.Endpoint)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s: wg endpoint of %s: got %q, want ip:port", x.name, y.name, wp.Endpoint)
	}
	if ps := snap.peer(x, y); ps == nil || ps.Endpoint != wp.Endpoint {
		var st string
		if ps != nil {
			st = ps.Endpoint
		}
		return got, fmt.Errorf("%s: status endpoint of %s: got %q, want %q as in wg show", x.name, y.name, st, wp.Endpoint)
	}
	want, err := publicAddrs(ctx, x, y)
	if err != nil {
		return got, err
	}
	if !slices.Contains(want, got) {
		return got, fmt.Errorf("%s holds endpoint %s for %s, want one of %v", x.name, got, y.name, want)
	}
	return got, nil
}

// logMatrix logs each agent's path (and ICE state) to every other agent,
// marking the cells that differ from the expected path.
func logMatrix(t *testing.T, nodes []*natNode) { logPathMatrix(t, nodes, expectedPath) }

// logPathMatrix is logMatrix against the expectation want.
func logPathMatrix(t *testing.T, nodes []*natNode, want func(a, b natSpot) string) {
	snap, err := takeSnapshot(nodes)
	if err != nil {
		t.Logf("path matrix: %v", err)
		return
	}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprint(w, "from \\ to")
	for _, y := range nodes {
		fmt.Fprintf(w, "\t%s", y.name)
	}
	fmt.Fprintln(w)
	for _, x := range nodes {
		fmt.Fprint(w, x.name)
		for _, y := range nodes {
			if x == y {
				fmt.Fprint(w, "\t.")
				continue
			}
			ps := snap.peer(x, y)
			cell := snap.path(x, y)
			if ps != nil && ps.Relay != "" {
				cell += "@" + ps.Relay
			}
			cell += "/" + iceState(ps)
			if w := want(x.spot, y.spot); snap.path(x, y) != w {
				cell += "(!want " + w + ")"
			}
			fmt.Fprintf(w, "\t%s", cell)
		}
		fmt.Fprintln(w)
	}
	w.Flush()
	t.Logf("path/ICE state seen by each row for each column:\n%s", b.String())
}

// TestNATTraversal runs eight agents in a full mesh across every NAT kind
// the lab has and checks each pair ends up on the path physics allows, with
// WireGuard aimed at the address the NAT really allocated.
func TestNATTraversal(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	ctx := context.Background() // each lab command has its own timeout

	cloud := l.AddPublicHost("cloud")
	// Any UDP to the cloud other than STUN (its port, and the second
	// port netcheck asks, which agents do for their path reports) would
	// be data plane through it.
	cloudUDP, err := cloud.AddCounter("INPUT", "-p", "udp", "-m", "multiport", "!", "--dports", "3478,3479")
	if err != nil {
		t.Fatal(err)
	}
	cloudSTUN, err := cloud.AddCounter("INPUT", "-p", "udp", "--dport", "3478")
	if err != nil {
		t.Fatal(err)
	}
	coord := cluster.StartCoordinator(t, l, cloud)

	siteA, siteB, siteC := l.AddSite("a", lab.NATEIM), l.AddSite("b", lab.NATEIM), l.AddSite("c", lab.NATEIM)
	siteG := l.AddSite("g", lab.NATEIM) // CGNAT
	siteD := siteG.AddSite("d", lab.NATEIM)
	siteE, siteF := l.AddSite("e", lab.NATSymmetric), l.AddSite("f", lab.NATSymmetric)
	behind := func(name string, kind natKind, sites ...*lab.Site) *natNode {
		return &natNode{name: name, spot: natSpot{kind, sites[0].Router().Name()}, host: sites[0].AddNode(name), nats: sites}
	}
	nodes := []*natNode{
		{name: "pub", spot: natSpot{kind: natPublic}, host: l.AddPublicHost("pub")},
		behind("eim1", natEIM, siteA),
		behind("eim2", natEIM, siteB),
		behind("lan1", natEIM, siteC),
		behind("lan2", natEIM, siteC),
		behind("dbl", natEIM, siteD, siteG),
		behind("sym1", natSym, siteE),
		behind("sym2", natSym, siteF),
	}
	byName := map[string]*natNode{}
	for _, n := range nodes {
		byName[n.name] = n
	}
	pub, eim1, eim2 := byName["pub"], byName["eim1"], byName["eim2"]

	tok := coord.Token("--uses", fmt.Sprint(len(nodes)))
	for _, n := range nodes {
		n.agent = cluster.StartAgent(t, l, n.host, coord, n.name, cluster.AgentOptions{Token: tok})
	}
	for _, n := range nodes {
		st := n.agent.WaitPeers(len(nodes)-1, 30*time.Second)
		n.overlay = netip.MustParseAddr(st.Self.Addresses[0])
		n.key, n.port = st.Self.PublicKey, st.Self.ListenPort
	}
	defer logMatrix(t, nodes)

	var directs, nones []nodePair
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			if expectedPath(a.spot, b.spot) == "direct" {
				directs = append(directs, nodePair{a, b})
			} else {
				nones = append(nones, nodePair{a, b})
			}
		}
	}

	// up holds the expected-direct pairs that came up; later checks skip
	// the others, which are reported once here.
	up := map[nodePair]bool{}
	t.Run("expected-direct pairs are direct on both sides within 60s", func(t *testing.T) {
		err := lab.Eventually(60*time.Second, 500*time.Millisecond, func() error {
			snap, err := takeSnapshot(nodes)
			if err != nil {
				return err
			}
			clear(up)
			var down []string
			for _, p := range directs {
				ab, ba := snap.path(p.a, p.b), snap.path(p.b, p.a)
				if ab == "direct" && ba == "direct" {
					up[p] = true
					continue
				}
				down = append(down, fmt.Sprintf("%s: %s sees %s, %s sees %s", p, p.a.name, ab, p.b.name, ba))
			}
			if len(down) > 0 {
				return fmt.Errorf("%d of %d pairs not direct (want direct):\n  %s", len(down), len(directs), strings.Join(down, "\n  "))
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("pub pings all its peers at once", func(t *testing.T) {
		var pings []nodePair
		for _, n := range nodes {
			if n != pub && up[nodePair{pub, n}] {
				pings = append(pings, nodePair{pub, n})
			}
		}
		if len(pings) == 0 {
			t.Skip("no peer of pub is direct")
		}
		for _, err := range pingAll(pings, 5) {
			t.Error(err)
		}
	})

	t.Run("every direct pair pings over the overlay", func(t *testing.T) {
		var pings []nodePair
		for _, p := range directs {
			if up[p] {
				pings = append(pings, nodePair{p.b, p.a}) // the other way round from pub's fan-out
			}
		}
		for _, err := range pingAll(pings, 3) {
			t.Error(err)
		}
	})

	t.Run("WireGuard endpoints are the addresses the NATs allocated", func(t *testing.T) {
		snap, err := takeSnapshot(nodes)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range directs {
			if !up[p] {
				continue
			}
			for _, xy := range [][2]*natNode{{p.a, p.b}, {p.b, p.a}} {
				if _, err := checkEndpoint(ctx, snap, xy[0], xy[1]); err != nil {
					t.Errorf("%s: %v", p, err)
				}
			}
		}
	})

	t.Run("ICE status of direct pairs names the selected pair", func(t *testing.T) {
		snap, err := takeSnapshot(nodes)
		if err != nil {
			t.Fatal(err)
		}
		direct := []string{"host", "srflx", "prflx"}
		for _, p := range directs {
			if !up[p] {
				continue
			}
			for _, xy := range [][2]*natNode{{p.a, p.b}, {p.b, p.a}} {
				x, y := xy[0], xy[1]
				ps := snap.peer(x, y)
				switch {
				case ps == nil:
					t.Errorf("%s does not list %s", x.name, y.name)
				case ps.ICE == nil:
					t.Errorf("%s status of %s: no ice section, want one", x.name, y.name)
				case ps.ICE.State != "connected":
					t.Errorf("%s status of %s: ice state %s, want connected", x.name, y.name, ps.ICE.State)
				case ps.ICE.Local == nil || ps.ICE.Remote == nil:
					t.Errorf("%s status of %s: ice local %v remote %v, want both set", x.name, y.name, ps.ICE.Local, ps.ICE.Remote)
				case !slices.Contains(direct, ps.ICE.Local.Type) || !slices.Contains(direct, ps.ICE.Remote.Type):
					t.Errorf("%s status of %s: candidate types %s/%s, want each one of %v", x.name, y.name, ps.ICE.Local.Type, ps.ICE.Remote.Type, direct)
				case ps.ICE.Remote.Address != ps.Endpoint:
					t.Errorf("%s status of %s: ice remote %s, want the WireGuard endpoint %s", x.name, y.name, ps.ICE.Remote.Address, ps.Endpoint)
				}
			}
		}
	})

	t.Run("pairs no NAT lets through stay off direct and ICE gives up", func(t *testing.T) {
		notConnected := []string{"failed", "checking", "disconnected", "new"}
		err := lab.Eventually(40*time.Second, time.Second, func() error {
			snap, err := takeSnapshot(nodes)
			if err != nil {
				return err
			}
			var bad []string
			for _, p := range nones {
				for _, xy := range [][2]*natNode{{p.a, p.b}, {p.b, p.a}} {
					x, y := xy[0], xy[1]
					ps := snap.peer(x, y)
					switch {
					case ps == nil:
						bad = append(bad, fmt.Sprintf("%s does not list %s", x.name, y.name))
					case ps.Path != "relay":
						bad = append(bad, fmt.Sprintf("%s sees %s %s, want relay", x.name, y.name, ps.Path))
					case ps.ICE == nil:
						bad = append(bad, fmt.Sprintf("%s sees %s without ice status, want failed or restarted", x.name, y.name))
					case !slices.Contains(notConnected, ps.ICE.State):
						bad = append(bad, fmt.Sprintf("%s sees %s ice %s, want one of %v", x.name, y.name, ps.ICE.State, notConnected))
					case ps.ICE.State != "failed" && ps.ICE.Restarts == 0:
						bad = append(bad, fmt.Sprintf("%s sees %s ice %s with 0 restarts, want failed or restarts >= 1", x.name, y.name, ps.ICE.State))
					}
				}
			}
			if len(bad) > 0 {
				return fmt.Errorf("%d problems:\n  %s", len(bad), strings.Join(bad, "\n  "))
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	cloudQuiet := func(t *testing.T) {
		t.Helper()
		n, err := cloudUDP.Packets()
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("UDP packets to the cloud other than STUN: got %d, want 0 (data plane through the coordinator)", n)
		}
	}
	t.Run("no data plane through the cloud", func(t *testing.T) {
		cloudQuiet(t)
		// The agents do use the cloud, for STUN: the counters see traffic.
		if n, err := cloudSTUN.Packets(); err != nil || n == 0 {
			t.Errorf("STUN packets to the cloud: got %d (%v), want > 0", n, err)
		}
	})

	t.Run("NAT rebinding on eim1's site", func(t *testing.T) {
		peers := []*natNode{eim2, pub}
		for _, y := range peers {
			if !up[nodePair{y, eim1}] && !up[nodePair{eim1, y}] {
				t.Skipf("eim1<->%s was not direct before the remap (see above)", y.name)
			}
		}
		const lo, hi = 40000, 40999
		if err := siteA.RemapUDP(ctx, lo, hi); err != nil {
			t.Fatal(err)
		}
		inner := netip.AddrPortFrom(eim1.host.IP(), uint16(eim1.port))
		for _, x := range peers {
			err := lab.Eventually(20*time.Second, 500*time.Millisecond, func() error {
				snap, err := takeSnapshot([]*natNode{x, eim1})
				if err != nil {
					return err
				}
				if a, b := snap.path(x, eim1), snap.path(eim1, x); a != "direct" || b != "direct" {
					return fmt.Errorf("%s sees eim1 %s, eim1 sees %s %s, want both direct", x.name, a, x.name, b)
				}
				ep, err := checkEndpoint(ctx, snap, x, eim1)
				if err != nil {
					return err
				}
				if ep.Port() < lo || ep.Port() > hi {
					return fmt.Errorf("%s holds endpoint %s for eim1, want port in %d-%d", x.name, ep, lo, hi)
				}
				ms, err := siteA.UDPMappings(ctx, inner)
				if err != nil {
					return err
				}
				if len(ms) != 1 || ms[0] != ep {
					return fmt.Errorf("site a maps eim1 to %v, want exactly [%s]", ms, ep)
				}
				return nil
			})
			if err != nil {
				t.Errorf("after remapping site a to %d-%d: %v", lo, hi, err)
			}
		}
		for _, err := range pingAll([]nodePair{{eim2, eim1}, {pub, eim1}, {eim1, eim2}}, 3) {
			t.Error(err)
		}
		cloudQuiet(t)
	})
}
