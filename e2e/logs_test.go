package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/internal/logging"
)

// TestJSONLogs runs a coordinator, a relay meshed with the coordinator's
// and two agents, one homed on each relay, with --log-format json (and
// debug level, so pion's and WireGuard's lines are in) until the agents
// reach each other directly and pass traffic, stops them, and
// reads every line they wrote: each must pass logging.CheckLine (one
// JSON object, time/level/msg, no key twice, keys, addresses and
// durations as strings), and every line an agent logs about its peer,
// wireguard-go's included, must name it by name and short key, among
// them a "path changed" to direct.
func TestJSONLogs(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	jsonLogs := []string{"--log-format", "json"}
	coord, relay2 := startMeshedRelays(t, l, jsonLogs...)
	h1, h2 := l.AddPublicHost("h1"), l.AddPublicHost("h2")
	tok := coord.Token("--uses", "2")
	// Homed on different relays: until the pair is direct, it is relayed across the mesh.
	agents := []*cluster.Agent{
		cluster.StartAgent(t, l, h1, coord, "n1", cluster.AgentOptions{Token: tok, Extra: append(jsonLogs, "--relay-region", "1")}),
		cluster.StartAgent(t, l, h2, coord, "n2", cluster.AgentOptions{Token: tok, Extra: append(jsonLogs, "--relay-region", "2")}),
	}
	// shortKeys: node name -> its key's short form, as logs must show it.
	shortKeys := map[string]string{}
	for _, a := range agents {
		st := a.WaitPeers(1, 30*time.Second)
		shortKeys[a.Name] = st.Self.PublicKey[:8]
	}
	err := lab.Eventually(45*time.Second, 200*time.Millisecond, func() error {
		for _, a := range agents {
			st, err := a.Status()
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if p.Path != "direct" {
					return fmt.Errorf("%s reaches %s by %q", a.Name, p.Name, p.Path)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no direct path: %v", err)
	}
	mustPing(t, agents[0], agents[1].OverlayIP(), 2)

	// Stopped, the logs are whole, shutdown lines included.
	for _, a := range agents {
		if err := a.Proc.Stop(15 * time.Second); err != nil {
			t.Errorf("agent %s: %v", a.Name, err)
		}
	}
	if err := coord.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("coordinator: %v", err)
	}
	if err := relay2.Proc.Stop(15 * time.Second); err != nil {
		t.Errorf("relay: %v", err)
	}

	checkJSONLog(t, "coordinator", coord.Proc.Log())
	checkJSONLog(t, "relay", relay2.Proc.Log())
	for i, a := range agents {
		other := agents[1-i].Name
		lines := checkJSONLog(t, "agent "+a.Name, a.Proc.Log())
		var direct, named bool
		for _, m := range lines {
			if strings.HasPrefix(fmt.Sprint(m["msg"]), "peer(") && m["peer"] == nil {
				t.Errorf("agent %s: wireguard-go's line about a peer has no peer field: %v", a.Name, m)
			}
			if m["peer"] == nil {
				continue
			}
			// n1's only peer is n2 and n2's is n1.
			peer, _ := m["peer"].(map[string]any)
			if peer["name"] != other || peer["key"] != shortKeys[other] {
				t.Errorf("agent %s: %q: peer %v, want {name: %s, key: %s}", a.Name, m["msg"], m["peer"], other, shortKeys[other])
			}
			named = true
			if m["msg"] == "path changed" && strings.HasPrefix(fmt.Sprint(m["to"]), "direct ") {
				direct = true
			}
		}
		if !named {
			t.Errorf("agent %s logged no line about its peer", a.Name)
		}
		if !direct {
			t.Errorf("agent %s logged no \"path changed\" to direct", a.Name)
		}
	}
}

// checkJSONLog checks every line of one process's JSON log and returns
// the lines decoded.
func checkJSONLog(t *testing.T, who, log string) []map[string]any {
	t.Helper()
	var out []map[string]any
	bad := 0
	for n, line := range strings.Split(strings.TrimSuffix(log, "\n"), "\n") {
		err := logging.CheckLine([]byte(line))
		var m map[string]any
		if err == nil {
			err = json.Unmarshal([]byte(line), &m)
		}
		if err == nil {
			switch m["level"] {
			case "DEBUG", "INFO", "WARN", "ERROR":
			default:
				err = fmt.Errorf("level %v", m["level"])
			}
		}
		if err != nil {
			if bad++; bad <= 20 {
				t.Errorf("%s log line %d: %v\n\t%s", who, n+1, strings.ReplaceAll(err.Error(), "\n", "; "), line)
			}
			continue
		}
		out = append(out, m)
	}
	t.Logf("%s: %d lines, %d bad", who, len(out)+bad, bad)
	if bad > 20 {
		t.Errorf("%s: %d more bad lines", who, bad-20)
	}
	if len(out) < 5 {
		t.Errorf("%s logged %d good lines, want a whole run's worth", who, len(out))
	}
	return out
}
