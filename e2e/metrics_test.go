package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// TestPeerMetrics: real agents export series of their own only for the
// peers they exchange traffic with (--metrics-per-peer=active, the
// default), or for every peer (all); the fleet gauges count every peer.
func TestPeerMetrics(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	coord := cluster.StartCoordinator(t, l, l.AddPublicHost("cloud"))
	tok := coord.Token("--uses", "3")
	a := cluster.StartAgent(t, l, l.AddPublicHost("a"), coord, "a", cluster.AgentOptions{Token: tok})
	b := cluster.StartAgent(t, l, l.AddPublicHost("b"), coord, "b", cluster.AgentOptions{Token: tok})
	c := cluster.StartAgent(t, l, l.AddPublicHost("c"), coord, "c", cluster.AgentOptions{Token: tok, Extra: []string{"--metrics-per-peer", "all"}})
	for _, ag := range []*cluster.Agent{a, b, c} {
		ag.WaitPeers(2, 30*time.Second)
	}
	// All public: every pair goes direct, and no ICE session is left
	// checking (which would make its peer active).
	for _, ag := range []*cluster.Agent{a, c} {
		err := lab.Eventually(30*time.Second, 250*time.Millisecond, func() error {
			st, err := ag.Status()
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if p.Path != "direct" {
					return fmt.Errorf("%s: peer %s on path %q, want direct", ag.Name, p.Name, p.Path)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// a sends b about 50 KiB; a and c exchange nothing but keepalives.
	if out, err := a.Host.Exec(ctxT(t, 30*time.Second), "ping", "-n", "-q", "-c", "20", "-s", "1200", "-i", "0.2", b.OverlayIP().String()); err != nil {
		t.Fatalf("ping b from a: %v\n%s", err, out)
	}

	peerSeries := func(text string) map[string]int {
		n := map[string]int{}
		for _, line := range strings.Split(text, "\n") {
			if !strings.HasPrefix(line, "edgewire_agent_peer_") {
				continue
			}
			_, rest, _ := strings.Cut(line, `peer="`)
			name, _, _ := strings.Cut(rest, `"`)
			n[name]++
		}
		return n
	}
	am, err := scrape(a.Host, "127.0.0.1:9092")
	if err != nil {
		t.Fatal(err)
	}
	got := peerSeries(am)
	if got["b"] != 3 || got["c"] != 0 || len(got) != 1 {
		t.Errorf("a's per-peer series by peer: got %v, want b:3 (handshake age, rx, tx) and none for idle c", got)
	}
	for _, m := range []struct {
		name, label string
		want        float64
	}{
		{"edgewire_agent_peers", `path="direct"`, 2},
		{"edgewire_agent_peers_active", "", 1},
		{"edgewire_agent_peers_handshake_stale", "", 0},
	} {
		if v, ok := metricSum(am, m.name, m.label); !ok || v != m.want {
			t.Errorf("a: %s{%s}: got %v (present %v), want %v", m.name, m.label, v, ok, m.want)
		}
	}
	if v, ok := metricSum(am, "edgewire_agent_wireguard_bytes_total", `direction="tx"`); !ok || v < 20*1200 {
		t.Errorf("a: edgewire_agent_wireguard_bytes_total{direction=\"tx\"}: got %v (present %v), want at least the 24,000 bytes pinged", v, ok)
	}

	cm, err := scrape(c.Host, "127.0.0.1:9092")
	if err != nil {
		t.Fatal(err)
	}
	got = peerSeries(cm)
	if got["a"] < 2 || got["b"] < 2 || len(got) != 2 {
		t.Errorf("c (--metrics-per-peer=all): per-peer series by peer: got %v, want rx and tx (and handshake age once there is one) for a and b", got)
	}
	if v, ok := metricSum(cm, "edgewire_agent_peers_active", ""); !ok || v != 0 {
		t.Errorf("c: edgewire_agent_peers_active: got %v (present %v), want 0", v, ok)
	}
}
