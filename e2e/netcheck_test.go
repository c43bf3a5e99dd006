package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/node/localapi"
)

// netcheckJSON runs `edgewire netcheck -o json` on a once its map lists
// at least want STUN endpoints (the coordinator's two ports, say).
func netcheckJSON(t *testing.T, a *cluster.Agent, want int) localapi.Netcheck {
	t.Helper()
	var nc localapi.Netcheck
	err := lab.Eventually(20*time.Second, time.Second, func() error {
		out, err := a.CLI("netcheck", "-o", "json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(out), &nc); err != nil {
			return fmt.Errorf("decode %q: %w", out, err)
		}
		if len(nc.STUN) < want {
			return fmt.Errorf("%d STUN endpoints probed, want %d (the map may not be there yet): %+v", len(nc.STUN), want, nc.STUN)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("netcheck on %s: %v", a.Name, err)
	}
	return nc
}

// TestNetcheck: with one coordinator (STUN on 3478 and, by default, its
// second port 3479), netcheck tells each NAT kind of the lab apart and
// says what it means: the same mapping from both ports behind an
// endpoint-independent NAT, two mappings behind a symmetric one, no NAT
// on a public host, and no answer where UDP is blocked.
func TestNetcheck(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	coord := cluster.StartCoordinator(t, l, l.AddPublicHost("cloud"))
	eimSite := l.AddSite("se", lab.NATEIM)
	symSite := l.AddSite("ss", lab.NATSymmetric)
	udpSite := l.AddSite("su", lab.NATUDPBlocked)
	tok := coord.Token("--uses", "4")
	e := cluster.StartAgent(t, l, eimSite.AddNode("e"), coord, "e", cluster.AgentOptions{Token: tok})
	s := cluster.StartAgent(t, l, symSite.AddNode("s"), coord, "s", cluster.AgentOptions{Token: tok})
	u := cluster.StartAgent(t, l, udpSite.AddNode("u"), coord, "u", cluster.AgentOptions{Token: tok})
	pubHost := l.AddPublicHost("p")
	p := cluster.StartAgent(t, l, pubHost, coord, "p", cluster.AgentOptions{Token: tok})
	for _, a := range []*cluster.Agent{e, s, u, p} {
		a.WaitPeers(3, 30*time.Second)
	}
	stunMain, stunAlt := coord.Host.IP().String()+":3478", coord.Host.IP().String()+":3479"

	// both returns the mapped addresses of the two ports.
	both := func(t *testing.T, nc localapi.Netcheck) (main, alt string) {
		t.Helper()
		for _, r := range nc.STUN {
			switch {
			case r.Server == stunMain && !r.Alt:
				main = r.Mapped
			case r.Server == stunAlt && r.Alt:
				alt = r.Mapped
			default:
				t.Errorf("probed %s (alt %v), want only %s and %s (alt)", r.Server, r.Alt, stunMain, stunAlt)
			}
		}
		return main, alt
	}

	t.Run("endpoint-independent NAT", func(t *testing.T) {
		nc := netcheckJSON(t, e, 2)
		main, alt := both(t, nc)
		if !nc.UDP || nc.Mapping != "endpoint-independent" || nc.NoNAT || nc.PublicAddr != eimSite.PublicIP().String() {
			t.Errorf("got udp %v mapping %q no_nat %v public %s; want true, endpoint-independent, false, %s",
				nc.UDP, nc.Mapping, nc.NoNAT, nc.PublicAddr, eimSite.PublicIP())
		}
		if main == "" || main != alt {
			t.Errorf("mapped %q from %s and %q from %s, want one mapping", main, stunMain, alt, stunAlt)
		}
		if !strings.Contains(nc.Meaning, "hole punching works") {
			t.Errorf("meaning %q, want it to say hole punching works", nc.Meaning)
		}
	})
	t.Run("symmetric NAT", func(t *testing.T) {
		nc := netcheckJSON(t, s, 2)
		main, alt := both(t, nc)
		if !nc.UDP || nc.Mapping != "endpoint-dependent" || nc.PublicAddr != symSite.PublicIP().String() {
			t.Errorf("got udp %v mapping %q public %s; want true, endpoint-dependent, %s", nc.UDP, nc.Mapping, nc.PublicAddr, symSite.PublicIP())
		}
		if main == "" || alt == "" || main == alt {
			t.Errorf("mapped %q from %s and %q from %s, want two different mappings", main, stunMain, alt, stunAlt)
		}
		// What the operator reads.
		out, err := s.CLI("netcheck")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"NAT mapping:     endpoint-dependent", "what it means:   symmetric NAT", "go through a relay", stunAlt + " (second port): mapped"} {
			if !strings.Contains(out, want) {
				t.Errorf("netcheck output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("public address", func(t *testing.T) {
		nc := netcheckJSON(t, p, 2)
		main, alt := both(t, nc)
		if !nc.UDP || nc.Mapping != "endpoint-independent" || !nc.NoNAT || nc.PublicAddr != pubHost.IP().String() || main != alt {
			t.Errorf("got udp %v mapping %q no_nat %v public %s, mapped %s and %s; want true, endpoint-independent, true, %s, one mapping",
				nc.UDP, nc.Mapping, nc.NoNAT, nc.PublicAddr, main, alt, pubHost.IP())
		}
	})
	t.Run("UDP blocked", func(t *testing.T) {
		nc := netcheckJSON(t, u, 2)
		if nc.UDP || nc.PublicAddr != "" || nc.Mapping != "unknown" || !strings.HasPrefix(nc.Meaning, "UDP blocked") {
			t.Errorf("got udp %v public %q mapping %q meaning %q; want false, none, unknown, UDP blocked", nc.UDP, nc.PublicAddr, nc.Mapping, nc.Meaning)
		}
		for _, r := range nc.STUN {
			if r.Error == "" {
				t.Errorf("STUN %s answered %s through a site that blocks UDP", r.Server, r.Mapped)
			}
		}
	})
}
