package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/types/jointoken"
)

// TestOperatorAgent: what an operator does to an agent on a host. The
// flags are the node's desired state on every start: a restart with
// another name and routes re-registers the node (no token, no new node)
// and its peers see the change; a setting not given keeps what is
// registered; a change the coordinator refuses stops the agent with the
// reason. Preflight: an agent without CAP_NET_ADMIN stops before it
// spends its token; a second agent on a state dir in use stops before
// it touches anything, and the first goes on.
func TestOperatorAgent(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	coord := cluster.StartCoordinator(t, l, l.AddPublicHost("cloud"))
	tok := coord.Token("--uses", "10", "--ttl", "10m", "--routes", "10.77.0.0/16")
	a := cluster.StartAgent(t, l, l.AddPublicHost("pa"), coord, "opa", cluster.AgentOptions{Token: tok})
	b := cluster.StartAgent(t, l, l.AddPublicHost("pb"), coord, "opb", cluster.AgentOptions{Token: tok})
	b.WaitPeers(1, 30*time.Second)
	if err := a.WaitConnected(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("a second agent on the state dir is refused, the first goes on", func(t *testing.T) {
		dup, err := a.Host.Start("agent-dup", nil, cluster.Bin(t, "edgewire-agent"), "run", "--state-dir", a.StateDir,
			"--interface", "ew"+l.ID()+"dup", "--socket", a.Socket+".dup", "--listen-port", "0", "--metrics-listen", "",
			"--coordinator", coord.Addr(), "--name", "opa")
		if err != nil {
			t.Fatal(err)
		}
		if err := waitExit(dup, 15*time.Second); err != nil {
			t.Fatalf("second agent: %v\n%s", err, dup.Log())
		}
		if want := "in use by pid " + strconv.Itoa(a.Proc.Pid()); dup.ExitErr() == nil || !strings.Contains(dup.Log(), want) {
			t.Fatalf("second agent exited with %v, want an error naming %q:\n%s", dup.ExitErr(), want, dup.Log())
		}
		if a.Proc.Exited() {
			t.Fatalf("the first agent stopped: %v", a.Proc.ExitErr())
		}
		mustPing(t, b, a.OverlayIP(), 3)
		if err := a.WaitConnected(5 * time.Second); err != nil {
			t.Errorf("first agent after the second was refused: %v", err)
		}
	})

	t.Run("restart with another name and routes", func(t *testing.T) {
		if err := a.Proc.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		a.StartWith("--coordinator", coord.Addr(), "--name", "opa2", "--advertise-routes", "10.77.1.0/24")
		var seen time.Duration
		if err := lab.Eventually(30*time.Second, 200*time.Millisecond, func() error {
			st, err := b.Status()
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if p.Name == "opa2" && slices.Equal(p.Routes, []string{"10.77.1.0/24"}) {
					seen = time.Since(t0)
					return nil
				}
			}
			return fmt.Errorf("b's peers: %+v", st.Peers)
		}); err != nil {
			t.Fatalf("b never saw opa2 with its route: %v\n%s", err, a.Proc.Log())
		}
		t.Logf("b saw the new name and route %v after a's restart", seen.Round(10*time.Millisecond))
		nodes := listNodes(t, coord)
		if len(nodes) != 2 || nodes["opa2"] == nil || nodes["opb"] == nil {
			t.Errorf("nodes %v, want opa2 and opb only (the node renamed, not a new one)", nodes)
		}
		if got := tokenUses(t, coord, tok); got != 2 {
			t.Errorf("token uses %d, want 2: a restart spends none", got)
		}
		if n := strings.Count(a.Proc.Log(), "registration updated"); n != 1 {
			t.Errorf("a logged %d registration updates, want 1", n)
		}
	})

	t.Run("what is not given is kept", func(t *testing.T) {
		if err := a.Proc.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		before := strings.Count(a.Proc.Log(), "registration updated")
		a.StartWith("--coordinator", coord.Addr())
		if err := a.WaitConnected(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(a.Proc.Log(), "registration updated"); n != before {
			t.Errorf("a restart without --name and --advertise-routes updated the registration")
		}
		if n := listNodes(t, coord)["opa2"]; n == nil || !slices.Equal(n.Routes, []string{"10.77.1.0/24"}) {
			t.Errorf("opa2 after a restart without the flags: %+v, want it kept with route 10.77.1.0/24", n)
		}
	})

	t.Run("a refused change stops the agent with the reason", func(t *testing.T) {
		if err := a.Proc.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		a.StartWith("--coordinator", coord.Addr(), "--name", "opb")
		if err := waitExit(a.Proc, 20*time.Second); err != nil {
			t.Fatalf("agent renamed to a taken name: %v", err)
		}
		log := a.Proc.Log()
		if a.Proc.ExitErr() == nil || !strings.Contains(log, `node name "opb" is taken by another node`) || !strings.Contains(log, `stays registered as "opa2"`) {
			t.Fatalf("exit %v; want the refusal and what stays in the log:\n%s", a.Proc.ExitErr(), tail(log, 2000))
		}
		if listNodes(t, coord)["opa2"] == nil {
			t.Errorf("opa2 is gone after a refused rename")
		}
	})

	t.Run("without CAP_NET_ADMIN the agent stops before it spends its token", func(t *testing.T) {
		one := coord.Token("--ttl", "10m")
		h := l.AddPublicHost("pc")
		// A folder the unprivileged user owns, with its own copy of the
		// binary (the build folder's parents may be closed to it).
		dir, err := os.MkdirTemp("", "edgewire-nobody-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		bin := filepath.Join(dir, "edgewire-agent")
		data, err := os.ReadFile(cluster.Bin(t, "edgewire-agent"))
		if err != nil {
			t.Fatal(err)
		}
		state := filepath.Join(dir, "state")
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(state, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{dir, state} {
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
		p, err := h.Start("agent-nobody", nil, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "run",
			"--state-dir", state, "--interface", "ew"+l.ID()+"nb", "--socket", filepath.Join(state, "sock"),
			"--coordinator", coord.Addr(), "--name", "opc", "--token", one)
		if err != nil {
			t.Fatal(err)
		}
		if err := waitExit(p, 15*time.Second); err != nil {
			t.Fatalf("unprivileged agent: %v", err)
		}
		if p.ExitErr() == nil || !strings.Contains(p.Log(), "needs CAP_NET_ADMIN") {
			t.Fatalf("unprivileged agent exited with %v; want the CAP_NET_ADMIN error:\n%s", p.ExitErr(), p.Log())
		}
		if got := tokenUses(t, coord, one); got != 0 {
			t.Fatalf("token uses %d after the refused start, want 0", got)
		}
		if listNodes(t, coord)["opc"] != nil {
			t.Fatalf("a node opc was registered")
		}
		// The same single-use token still joins.
		c := cluster.StartAgent(t, l, h, coord, "opc", cluster.AgentOptions{Token: one})
		if err := c.WaitConnected(30 * time.Second); err != nil {
			t.Fatalf("joining with the unspent token: %v\n%s", err, c.Proc.Log())
		}
	})
}

// waitExit waits up to d for p to exit.
func waitExit(p *lab.Process, d time.Duration) error {
	return lab.Eventually(d, 100*time.Millisecond, func() error {
		if !p.Exited() {
			return errors.New("still running")
		}
		return nil
	})
}

// listedNode is what the tests read of `edgewire nodes list -o json`.
type listedNode struct {
	Name   string   `json:"name"`
	Routes []string `json:"routes"`
}

func listNodes(t *testing.T, c *cluster.Coordinator) map[string]*listedNode {
	t.Helper()
	out, err := c.CLI("nodes", "list", "-o", "json")
	if err != nil {
		t.Fatalf("nodes list: %v", err)
	}
	var ns []*listedNode
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		t.Fatalf("nodes list: %v: %s", err, out)
	}
	m := map[string]*listedNode{}
	for _, n := range ns {
		m[n.Name] = n
	}
	return m
}

// tokenUses is the use count of the join token tok.
func tokenUses(t *testing.T, c *cluster.Coordinator, tok string) int {
	t.Helper()
	pt, err := jointoken.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.CLI("token", "list", "-o", "json")
	if err != nil {
		t.Fatalf("token list: %v", err)
	}
	var ts []struct {
		ID   string `json:"id"`
		Uses int    `json:"uses"`
	}
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		t.Fatalf("token list: %v: %s", err, out)
	}
	for _, x := range ts {
		if x.ID == pt.ID {
			return x.Uses
		}
	}
	t.Fatalf("token %s not listed: %s", pt.ID, out)
	return 0
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
