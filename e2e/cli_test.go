package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/node/localapi"
)

// TestCLI checks what operators read: `edgewire netcheck` tells an
// endpoint-independent NAT from a symmetric one and notices blocked UDP
// (two STUN servers, each on two ports: the coordinator's and a standalone
// relay's, whose second port comes from the relay map's stun_alt_port),
// and the status table's path column names the relay of relayed peers.
func TestCLI(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	coord, relay2 := startMeshedRelays(t, l)
	eimSite := l.AddSite("se", lab.NATEIM)
	symSite := l.AddSite("ss", lab.NATSymmetric)
	udpSite := l.AddSite("su", lab.NATUDPBlocked)
	tok := coord.Token("--uses", "3")
	e := cluster.StartAgent(t, l, eimSite.AddNode("e"), coord, "e", cluster.AgentOptions{Token: tok, Extra: []string{"--relay-region", "1"}})
	s := cluster.StartAgent(t, l, symSite.AddNode("s"), coord, "s", cluster.AgentOptions{Token: tok})
	u := cluster.StartAgent(t, l, udpSite.AddNode("u"), coord, "u", cluster.AgentOptions{Token: tok})
	for _, a := range []*cluster.Agent{e, s, u} {
		a.WaitPeers(2, 30*time.Second)
	}

	t.Run("netcheck", func(t *testing.T) {
		nc := netcheckJSON(t, e, 2)
		if !nc.UDP || nc.PublicAddr != eimSite.PublicIP().String() || nc.Mapping != "endpoint-independent" {
			t.Errorf("EIM node: got udp %v public %s mapping %q, want true %s endpoint-independent", nc.UDP, nc.PublicAddr, nc.Mapping, eimSite.PublicIP())
		}
		var alts []string
		for _, st := range nc.STUN {
			if st.Alt && st.Mapped != "" {
				alts = append(alts, st.Server)
			}
		}
		if want := []string{coord.Host.IP().String() + ":3479", relay2.Host.IP().String() + ":3479"}; !slices.Equal(alts, want) {
			t.Errorf("EIM node: second STUN ports answered %v, want %v (the relay's from the relay map)", alts, want)
		}
		nc = netcheckJSON(t, s, 2)
		if !nc.UDP || nc.PublicAddr != symSite.PublicIP().String() || !strings.HasPrefix(nc.Mapping, "endpoint-dependent") {
			t.Errorf("symmetric node: got udp %v public %s mapping %q, want true %s endpoint-dependent", nc.UDP, nc.PublicAddr, nc.Mapping, symSite.PublicIP())
		}
		nc = netcheckJSON(t, u, 2)
		if nc.UDP || nc.PublicAddr != "" {
			t.Errorf("UDP-blocked node: got udp %v public %q, want no UDP", nc.UDP, nc.PublicAddr)
		}
		for _, st := range nc.STUN {
			if st.Error == "" {
				t.Errorf("UDP-blocked node: STUN %s answered %s", st.Server, st.Mapped)
			}
		}
		if nc.PreferredRelay == "" || len(nc.RelayLatencyMs) == 0 {
			t.Errorf("UDP-blocked node: preferred relay %q, %d relay latencies; want both (relays are TCP)", nc.PreferredRelay, len(nc.RelayLatencyMs))
		}
	})
	t.Run("status table names the path", func(t *testing.T) {
		// e (EIM) to s (symmetric) and to u (UDP blocked) can only be relayed, via e's preferred region.
		err := lab.Eventually(30*time.Second, 500*time.Millisecond, func() error {
			out, err := e.CLI("status")
			if err != nil {
				return err
			}
			for _, peer := range []string{"s", "u"} {
				found := false
				for _, line := range strings.Split(out, "\n") {
					f := strings.Fields(line)
					if len(f) > 3 && f[0] == peer {
						found = true
						if f[3] != "relay:coordinator" {
							return fmt.Errorf("peer %s path column %q, want relay:coordinator\n%s", peer, f[3], out)
						}
					}
				}
				if !found {
					return fmt.Errorf("no line for peer %s:\n%s", peer, out)
				}
			}
			if !strings.Contains(out, "home relay: coordinator (connected)") {
				return fmt.Errorf("no home relay line:\n%s", out)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("status KEY column is the start of wg show's key", func(t *testing.T) {
		wg, err := e.WGShow()
		if err != nil {
			t.Fatal(err)
		}
		out, err := e.CLI("status")
		if err != nil {
			t.Fatal(err)
		}
		st, err := e.Status()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Peers {
			if _, ok := wg[p.PublicKey]; !ok {
				t.Errorf("peer %s: key %s not in wg show", p.Name, p.PublicKey)
			}
			found := false
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 1 && f[0] == p.Name {
					found = true
					if len(f[1]) < 8 || !strings.HasPrefix(p.PublicKey, f[1]) {
						t.Errorf("peer %s: KEY column %q is not the start of wg show's %s", p.Name, f[1], p.PublicKey)
					}
				}
			}
			if !found {
				t.Errorf("no status line for peer %s:\n%s", p.Name, out)
			}
		}
	})
	t.Run("ping by overlay address", func(t *testing.T) {
		ip := s.OverlayIP().String()
		var res []localapi.PingResult
		err := lab.Eventually(20*time.Second, time.Second, func() error {
			var err error
			res, err = cliPing(e, ip, "-c", "1")
			return err
		})
		if err != nil || len(res) != 1 || res[0].Peer != "s" || res[0].Address != ip {
			t.Errorf("ping %s: got %+v (%v), want a reply from s at %s", ip, res, err, ip)
		}
	})
	t.Run("nodes list shows each agent's version", func(t *testing.T) {
		var bi buildinfo.Info
		out, err := exec.Command(cluster.Bin(t, "edgewire"), "version", "-o", "json").Output()
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &bi); err != nil {
			t.Fatalf("edgewire version -o json: %v: %s", err, out)
		}
		list, err := coord.CLI("nodes", "list", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var nodes []struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		}
		if err := json.Unmarshal([]byte(list), &nodes); err != nil {
			t.Fatalf("nodes list -o json: %v: %s", err, list)
		}
		if len(nodes) != 3 {
			t.Errorf("nodes list: %d nodes, want 3: %s", len(nodes), list)
		}
		for _, n := range nodes {
			if n.Version != bi.Version {
				t.Errorf("node %s: version %q, want the build's %q", n.Name, n.Version, bi.Version)
			}
		}
		table, err := coord.CLI("nodes", "list")
		if err != nil || !strings.Contains(table, "VERSION") || !strings.Contains(table, bi.Version) {
			t.Errorf("nodes list table (%v) has no VERSION column with %s:\n%s", err, bi.Version, table)
		}
	})
	t.Run("a mistyped command fails with exit status 2", func(t *testing.T) {
		_, err := coord.CLI("nodes", "lst")
		if err == nil || !strings.Contains(err.Error(), "exit status 2") || !strings.Contains(err.Error(), `did you mean list?`) {
			t.Errorf("edgewire nodes lst: got %v, want exit status 2 suggesting list", err)
		}
	})
}

// TestRestartWithoutCoordinator: an agent restarted while the coordinator
// (and its embedded relay) is down comes back on its saved network map
// and saved relay ticket, and reaches a peer through the standalone relay.
func TestRestartWithoutCoordinator(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	coord, _ := startMeshedRelays(t, l)
	tok := coord.Token("--uses", "2")
	opts := cluster.AgentOptions{Token: tok, Extra: []string{"--relay-region", "2"}}
	a := cluster.StartAgent(t, l, l.AddSite("sa", lab.NATSymmetric).AddNode("a"), coord, "a", opts)
	b := cluster.StartAgent(t, l, l.AddSite("sb", lab.NATSymmetric).AddNode("b"), coord, "b", opts)
	a.WaitPeers(1, 30*time.Second)
	b.WaitPeers(1, 30*time.Second)
	aIP := a.OverlayIP()
	mustPing(t, b, aIP, 2)

	coord.Proc.Kill()
	if err := b.Proc.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop b: %v", err)
	}
	b.Start()
	err := lab.Eventually(20*time.Second, 500*time.Millisecond, func() error {
		st, err := b.Status()
		if err != nil {
			return err
		}
		if st.Self.Connected {
			return fmt.Errorf("connected to a coordinator that is down?")
		}
		if len(st.Peers) != 1 || st.Peers[0].Path != "relay" || st.Peers[0].Relay != "r2" {
			return fmt.Errorf("peers %+v, want a on relay r2", st.Peers)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("restarted b: %v", err)
	}
	mustPing(t, b, aIP, 3)
}
