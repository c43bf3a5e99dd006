package e2e

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// TestMapCannotCutNodeOff is the attack of a route that covers the
// coordinator (and one that claims a LAN neighbour), placed where the
// coordinator's checks cannot stop it: in the agent's saved network map,
// which the agent applies at start before it hears from the coordinator.
// Before the trust model such a map cut the node off the coordinator and
// the relay for good. Now the agent refuses the routes, stays connected,
// reaches its neighbour over the LAN, and its own traffic (marked) keeps
// using the host's routes even when an overlay route does cover the
// coordinator.
func TestMapCannotCutNodeOff(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)
	sa, sb := l.AddSite("sa", lab.NATEIM), l.AddSite("sb", lab.NATEIM)
	ha, hb := sa.AddNode("a"), sb.AddNode("b")
	neighbour := sa.AddNode("nb") // on a's LAN, not an overlay member
	tok := coord.Token("--uses", "2")
	a := cluster.StartAgent(t, l, ha, coord, "a", cluster.AgentOptions{Token: tok})
	b := cluster.StartAgent(t, l, hb, coord, "b", cluster.AgentOptions{Token: tok})
	a.WaitPeers(1, 30*time.Second)
	b.WaitPeers(1, 30*time.Second)
	mustPing(t, a, b.OverlayIP(), 2)

	// The neighbour serves HTTP on the LAN; a route claiming it would
	// send a's requests to b.
	ln, err := neighbour.ListenTCP(netip.AddrPortFrom(neighbour.IP(), 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "neighbour") }),
		ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	// Poison a's saved map: b routes the coordinator, the neighbour and
	// half the internet.
	if err := a.Proc.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop a: %v", err)
	}
	path := filepath.Join(a.StateDir, "netmap.pb")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m api.NetworkMap
	if err := proto.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	poison := []string{cloud.IP().String() + "/32", neighbour.IP().String() + "/32", "128.0.0.0/1"}
	var found bool
	for _, p := range m.Peers {
		if p.Name == "b" {
			p.Routes = append(p.Routes, poison...)
			found = true
		}
	}
	if !found {
		t.Fatal("b not in a's saved map")
	}
	savedVersion := m.Version
	if raw, err = proto.Marshal(&m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	a.Start()

	t.Run("refused routes are not installed", func(t *testing.T) {
		err := lab.Eventually(20*time.Second, 250*time.Millisecond, func() error {
			st, err := a.Status()
			if err != nil {
				return err
			}
			if len(st.Peers) != 1 {
				return fmt.Errorf("%d peers", len(st.Peers))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		routes := ha.MustExec(t, "ip", "-4", "route", "show", "table", "all", "dev", a.Iface)
		for _, p := range poison {
			if strings.Contains(routes, strings.TrimSuffix(p, "/32")+" ") || strings.Contains(routes, p) {
				t.Errorf("a's routes include poisoned %s:\n%s", p, routes)
			}
		}
		peers, err := a.WGShow()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range peers {
			for _, r := range poison {
				if strings.Contains(p.AllowedIPs, r) {
					t.Errorf("a's WireGuard peer allows %s (%s)", r, p.AllowedIPs)
				}
			}
		}
	})

	t.Run("the agent reaches the coordinator and gets a fresh map", func(t *testing.T) {
		err := lab.Eventually(30*time.Second, 250*time.Millisecond, func() error {
			st, err := a.Status()
			if err != nil {
				return err
			}
			if !st.Self.Connected || st.Self.MapVersion <= savedVersion {
				return fmt.Errorf("connected %v, map version %d (saved %d)", st.Self.Connected, st.Self.MapVersion, savedVersion)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		mustPing(t, a, b.OverlayIP(), 2)
	})

	t.Run("the LAN neighbour is reached on the LAN", func(t *testing.T) {
		out, err := ha.Exec(ctxT(t, 15*time.Second), "curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s:8080/", neighbour.IP()))
		if err != nil || out != "neighbour" {
			t.Errorf("curl the neighbour: got %q, %v; want its answer", out, err)
		}
	})

	t.Run("edgewire's own traffic bypasses an overlay route", func(t *testing.T) {
		// An overlay route that does cover the coordinator (put there by
		// hand, as no map can): the host's other traffic to it goes into
		// the tunnel, the agent's marked sockets do not.
		coordIP := cloud.IP().String()
		ha.MustExec(t, "ip", "route", "add", coordIP+"/32", "dev", a.Iface, "table", fmt.Sprint(51820))
		defer ha.Exec(ctxT(t, 5*time.Second), "ip", "route", "del", coordIP+"/32", "dev", a.Iface, "table", fmt.Sprint(51820))
		if out := ha.MustExec(t, "ip", "route", "get", coordIP); !strings.Contains(out, "dev "+a.Iface) {
			t.Errorf("unmarked route to the coordinator: got %q, want it through %s", out, a.Iface)
		}
		if out := ha.MustExec(t, "ip", "route", "get", coordIP, "mark", "0x100000"); strings.Contains(out, "dev "+a.Iface) {
			t.Errorf("marked route to the coordinator: got %q, want the host's own route", out)
		}
		// A restarted coordinator makes the agent dial it again, now
		// with the overlay route in place.
		coord.Proc.Stop(10 * time.Second)
		coord.Start()
		if err := a.WaitConnected(45 * time.Second); err != nil {
			t.Fatalf("agent after the coordinator's restart: %v", err)
		}
	})
}
