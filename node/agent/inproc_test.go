package agent

// Two agents, one coordinator and one relay in one process, with no root
// and no namespaces: real wireguard-go devices over channel TUNs, real
// UDP sockets on loopback, the real coordinator (coordtest) and relay
// (relaytest), a Host that only records. The tests drive what most bugs
// so far lived in, the way a peer is reached: over the relay, direct,
// back to the relay when the direct pair is cut, and direct again.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/coordtest"
	"github.com/edgewire/edgewire/dataplane/bind"
	"github.com/edgewire/edgewire/internal/leaktest"
	"github.com/edgewire/edgewire/internal/logging/logtest"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/node/svcproxy"
	"github.com/edgewire/edgewire/types/topoview"
)

// fakeHost is a Host on loopback that records what the agent configures.
type fakeHost struct {
	mu     sync.Mutex // guards addrs, routes
	addrs  []netip.Prefix
	routes []netip.Prefix
	down   atomic.Bool // TCP dials (coordinator, relay) fail
}

func (h *fakeHost) Configure(_ string, addrs, routes []netip.Prefix) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addrs, h.routes = addrs, routes
	return nil
}

func (h *fakeHost) InstallRules() (func(), error) { return func() {}, nil }

func (h *fakeHost) Underlay(string) ([]netip.Prefix, []netip.Prefix, error) { return nil, nil, nil }

func (h *fakeHost) Addrs(string) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

func (h *fakeHost) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if h.down.Load() {
		return nil, errors.New("network down (test)")
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// cutBind is the agent's UDP socket with a switch that drops everything
// it sends: the direct path (and STUN) is cut, the relay (TCP) is not.
type cutBind struct {
	conn.Bind
	cut atomic.Bool
}

func (b *cutBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.cut.Load() {
		return nil
	}
	return b.Bind.Send(bufs, ep)
}

// testAgent is one agent of the rig.
type testAgent struct {
	name    string
	cfg     Config
	env     Env
	tun     *tuntest.ChannelTUN
	in      chan []byte   // what the device delivered to its TUN, drained so it never blocks
	drained chan struct{} // closed when the drain stopped
	bind    *cutBind
	host    *fakeHost
	api     localapi.Client
	cancel  context.CancelFunc
	done    chan error
}

// logTo is where the agents log: every line is checked against the log
// rules (logtest), and shown in the test's output when -v.
func logTo(t *testing.T, name string) *slog.Logger {
	return logtest.New(t).With("agent", name)
}

// newTestAgent prepares an agent of c with a join token; start runs it.
func newTestAgent(t *testing.T, c *coordtest.Coordinator, name, tok string) *testAgent {
	dir := t.TempDir()
	a := &testAgent{name: name, bind: &cutBind{Bind: conn.NewStdNetBind()}, host: &fakeHost{}}
	a.cfg = Config{
		StateDir: filepath.Join(dir, "state"), Interface: "ew-" + name, ListenPort: 0,
		Socket: filepath.Join(dir, "agent.sock"), Coordinator: c.Addr, Token: tok, Name: name,
		Services: svcproxy.ModeOff, Logger: logTo(t, name),
	}
	a.env = Env{Host: a.host, Bind: a.bind, SameHost: true}
	a.api = localapi.Client{Socket: a.cfg.Socket}
	return a
}

func (a *testAgent) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	a.tun = tuntest.NewChannelTUN() // a device closes its TUN when it stops
	a.in = make(chan []byte, 64)
	drained := make(chan struct{})
	go func(tun *tuntest.ChannelTUN, in chan []byte) {
		// Inbound is unbuffered: a packet nobody waits for would block the
		// device's receive path.
		defer close(drained)
		for {
			select {
			case p := <-tun.Inbound:
				select {
				case in <- p:
				default:
				}
			case <-ctx.Done():
				return
			}
		}
	}(a.tun, a.in)
	a.drained = drained
	env := a.env
	env.TUN = a.tun.TUN()
	go func() { a.done <- RunWith(ctx, a.cfg, env) }()
	t.Cleanup(func() { a.stop(t) })
}

// stop ends the agent and waits for it; a second call does nothing.
func (a *testAgent) stop(t *testing.T) {
	if a.cancel == nil {
		return
	}
	a.cancel()
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("agent %s: %v", a.name, err)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("agent %s did not stop within 20 s", a.name)
	}
	<-a.drained
	a.cancel = nil
}

// peer waits until the agent's status of peer satisfies ok.
func (a *testAgent) waitPeer(t *testing.T, peer, what string, within time.Duration, ok func(localapi.PeerStatus) bool) localapi.PeerStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := a.api.Status(ctx)
		cancel()
		if err != nil {
			last = err.Error()
		} else {
			for _, p := range st.Peers {
				if p.Name == peer {
					if ok(p) {
						return p
					}
					last = fmt.Sprintf("path %s endpoint %s", p.Path, p.Endpoint)
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %s's view of %s never became %s within %v (last: %s)", t.Name(), a.name, peer, what, within, last)
	return localapi.PeerStatus{}
}

func (a *testAgent) overlayIP(t *testing.T) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if st, err := a.api.Status(ctx); err == nil && len(st.Self.Addresses) > 0 {
			return netip.MustParseAddr(st.Self.Addresses[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s has no overlay address", a.name)
	return netip.Addr{}
}

// send writes an ICMP echo from a to b into a's TUN and waits for it to
// come out of b's: a packet through the tunnel, whatever the path.
func send(t *testing.T, a, b *testAgent, phase string) {
	t.Helper()
	src, dst := a.overlayIP(t), b.overlayIP(t)
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case a.tun.Outbound <- tuntest.Ping(dst, src):
		case <-deadline:
			t.Fatalf("%s: a packet from %s to %s did not come through", phase, a.name, b.name)
		}
		select {
		case p := <-b.in:
			if len(p) >= 20 && netip.AddrFrom4([4]byte(p[12:16])) == src {
				return
			}
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: a packet from %s to %s did not come through", phase, a.name, b.name)
		}
	}
}

func isRelay(p localapi.PeerStatus) bool  { return p.Path == "relay" }
func isDirect(p localapi.PeerStatus) bool { return p.Path == "direct" }

// directSocket: the path is direct and WireGuard sends to a UDP socket on
// loopback, not to the relay's synthetic endpoints (bind.RelayPrefix).
func directSocket(p localapi.PeerStatus) bool {
	ap, err := netip.ParseAddrPort(p.Endpoint)
	return isDirect(p) && err == nil && ap.Addr().IsLoopback() && !bind.RelayPrefix.Contains(ap.Addr())
}

// rig starts a coordinator and two agents a and b, with a's UDP cut if
// cut, and waits until each lists the other.
func rig(t *testing.T, cut bool) (*coordtest.Coordinator, *testAgent, *testAgent) {
	// Registered first, so it runs after every other cleanup: nothing the
	// agents, the coordinator or the relay started may outlive them.
	before := leaktest.Take()
	t.Cleanup(func() {
		if leaked := before.Leaked(10 * time.Second); leaked != "" {
			t.Errorf("goroutines left after the test:\n%s", leaked)
		}
	})
	c := coordtest.Start(t, coordtest.Options{})
	tok := c.Token(&api.CreateTokenRequest{Uses: 3, Routes: []string{"10.77.0.0/16"}})
	a, b := newTestAgent(t, c, "a", tok), newTestAgent(t, c, "b", tok)
	a.bind.cut.Store(cut)
	a.start(t)
	b.start(t)
	a.waitPeer(t, "b", "listed", 20*time.Second, func(localapi.PeerStatus) bool { return true })
	b.waitPeer(t, "a", "listed", 20*time.Second, func(localapi.PeerStatus) bool { return true })
	return c, a, b
}

// TestRelayDirectAndBack: over the relay while UDP is cut, direct once it
// is not, back on the relay the moment the direct pair is cut, and direct
// again when it heals; packets come through in every phase.
func TestRelayDirectAndBack(t *testing.T) {
	_, a, b := rig(t, true)

	a.waitPeer(t, "b", "relayed", 20*time.Second, isRelay)
	b.waitPeer(t, "a", "relayed", 20*time.Second, isRelay)
	send(t, a, b, "relayed")
	send(t, b, a, "relayed")

	a.bind.cut.Store(false)
	// Direct, and WireGuard's endpoint is the peer's socket, not the
	// relay's synthetic endpoint (reconcile applies the path a moment
	// after it changes).
	a.waitPeer(t, "b", "direct with b's socket as WireGuard's endpoint", 30*time.Second, directSocket)
	b.waitPeer(t, "a", "direct with a's socket as WireGuard's endpoint", 30*time.Second, directSocket)
	send(t, a, b, "direct")
	send(t, b, a, "direct")

	a.bind.cut.Store(true)
	a.waitPeer(t, "b", "relayed after the cut", 20*time.Second, isRelay)
	send(t, b, a, "relayed after the cut")

	a.bind.cut.Store(false)
	a.waitPeer(t, "b", "direct again", 45*time.Second, isDirect)
	send(t, a, b, "direct again")
}

// TestDeletedPeer: deleting a node takes it out of the other's WireGuard.
func TestDeletedPeer(t *testing.T) {
	c, a, b := rig(t, false)
	send(t, a, b, "a to b")
	c.DeleteNode("b")
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := a.api.Status(ctx)
		cancel()
		if err == nil && len(st.Peers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a still lists %v 10 s after b's deletion", st.Peers)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRestartWithSavedMap: an agent restarted while the coordinator is
// gone comes up from its saved map and saved relay ticket and reaches its
// peer over the relay.
func TestRestartWithSavedMap(t *testing.T) {
	c, a, b := rig(t, true)
	a.waitPeer(t, "b", "relayed", 20*time.Second, isRelay)
	send(t, a, b, "a to b")
	a.stop(t)
	c.Stop() // the relay stays
	a.start(t)
	a.waitPeer(t, "b", "relayed from the saved map", 20*time.Second, isRelay)
	send(t, a, b, "a to b")
	send(t, b, a, "b to a")
}

// TestRevokedTicket: once a node is deleted, its relay ticket no longer
// gets it onto the relay.
func TestRevokedTicket(t *testing.T) {
	c, a, b := rig(t, true)
	a.waitPeer(t, "b", "relayed", 20*time.Second, isRelay)
	c.DeleteNode("a")
	// b drops a; a cannot use the relay with its old ticket.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := a.api.Status(ctx)
		cancel()
		if err == nil && st.Self.Relay != nil && !st.Self.Relay.Connected && strings.Contains(st.Self.Relay.Error, "revoked") {
			break
		}
		if time.Now().After(deadline) {
			var relay any
			if err == nil {
				relay = st.Self.Relay
			}
			t.Fatalf("a's relay after its deletion: %+v, %v; want refused as revoked", relay, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = b
}

// TestRegistrationUpdate: an agent restarted with another name and routes
// re-registers (its peers see the change); one that cannot reach the
// coordinator at start runs as registered and applies the change in the
// background once it can.
func TestRegistrationUpdate(t *testing.T) {
	_, a, b := rig(t, false)
	rename := func(name string, routes ...string) {
		a.stop(t)
		a.cfg.Name, a.cfg.SetName, a.cfg.SetRoutes, a.cfg.Token = name, true, true, ""
		a.cfg.Routes = nil
		for _, r := range routes {
			a.cfg.Routes = append(a.cfg.Routes, netip.MustParsePrefix(r))
		}
		a.start(t)
	}
	seen := func(name, route string) {
		t.Helper()
		b.waitPeer(t, name, "listed with route "+route, 20*time.Second, func(p localapi.PeerStatus) bool {
			return slices.Equal(p.Routes, []string{route})
		})
		enr, err := identity.LoadEnrolment(a.cfg.StateDir)
		if err != nil || enr.Name != name || !slices.Equal(enr.Advertised, []string{route}) {
			t.Errorf("enrolment %+v (%v), want name %s advertising %s", enr, err, name, route)
		}
	}
	rename("a1", "10.77.1.0/24")
	seen("a1", "10.77.1.0/24")

	a.host.down.Store(true)
	rename("a2", "10.77.1.0/24")
	time.Sleep(time.Second) // the update at start has failed by now
	a.host.down.Store(false)
	seen("a2", "10.77.1.0/24")
}

// TestPathReports: the agents tell the coordinator their paths; its
// topology view follows a pair from direct to relayed.
func TestPathReports(t *testing.T) {
	c, a, b := rig(t, false)
	send(t, a, b, "a to b")
	waitView := func(what string, ok func(topoview.Pair) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		var last topoview.View
		for time.Now().Before(deadline) {
			last = c.Server.TopologyView()
			for _, p := range last.Pairs {
				if p.A == "a" && p.B == "b" && ok(p) {
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("the coordinator's view never showed a-b %s; pairs: %+v", what, last.Pairs)
	}
	waitView("direct from both sides", func(p topoview.Pair) bool {
		return p.Path == topoview.PathDirect && p.FromA != nil && p.FromB != nil && p.FromA.Local != "" && p.FromB.Remote != ""
	})
	a.bind.cut.Store(true)
	a.waitPeer(t, "b", "relayed", 20*time.Second, isRelay)
	send(t, a, b, "a to b over the relay")
	waitView("relayed", func(p topoview.Pair) bool { return p.Path == topoview.PathRelay && p.Relay != "" })
}
