package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// TestDemo is `make demo`: a small lab, the status a user would look at,
// then teardown. It also runs in `make test` so the demo cannot rot.
func TestDemo(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }

	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)
	say("== coordinator on %s (cloud namespace)", coord.Addr())
	tok := coord.Token("--uses", "3", "--ttl", "10m")
	say("== join token: %s", tok)

	var agents []*cluster.Agent
	for _, name := range []string{"edge1", "edge2", "edge3"} {
		h := l.AddPublicHost(name)
		agents = append(agents, cluster.StartAgent(t, l, h, coord, name, cluster.AgentOptions{Token: tok}))
	}
	for _, a := range agents {
		a.WaitPeers(len(agents)-1, 30*time.Second)
	}
	// Traffic so every pair has a handshake to show.
	for _, from := range agents {
		for _, to := range agents {
			if from != to {
				mustPing(t, from, to.OverlayIP(), 2)
			}
		}
	}
	out, err := coord.CLI("nodes", "list")
	if err != nil {
		t.Fatal(err)
	}
	say("\n$ edgewire nodes list   # on the coordinator\n%s", out)

	a := agents[0]
	st, err := a.CLI("status")
	if err != nil {
		t.Fatal(err)
	}
	say("$ edgewire status   # on %s\n%s", a.Name, st)
	wg := a.Host.MustExec(t, "wg", "show", a.Iface)
	say("$ wg show %s   # on %s\n%s", a.Iface, a.Name, wg)
	if strings.Count(wg, "latest handshake") != len(agents)-1 {
		t.Fatalf("wg show: want %d peers with a handshake:\n%s", len(agents)-1, wg)
	}
	say("== tearing down the lab")
}
