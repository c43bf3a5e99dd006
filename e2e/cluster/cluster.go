// Package cluster runs edgewire's real binaries in a lab (see e2e/lab): a
// coordinator on one host, agents on others, and the CLI against them. It
// is what the end-to-end tests and `make demo` share.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/node/localapi"
)

const coordPort = 8443

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Bin returns the path of an edgewire binary: from $EDGEWIRE_BIN when set
// (make builds them), else built once per test process.
func Bin(t testing.TB, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("EDGEWIRE_BIN"); d != "" {
			binDir = d
			return
		}
		binDir, buildErr = os.MkdirTemp("", "edgewire-bin-")
		if buildErr != nil {
			return
		}
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = fmt.Errorf("find module root: %w", err)
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/edgewire-coordinator", "./cmd/edgewire-agent", "./cmd/edgewire", "./cmd/edgewire-relay")
		cmd.Dir = strings.TrimSpace(string(root))
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build binaries: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	p := filepath.Join(binDir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("binary %s: %v (with $EDGEWIRE_BIN set, the Makefile must build it)", name, err)
	}
	return p
}

// Coordinator is a running edgewire-coordinator.
type Coordinator struct {
	Host    *lab.Host
	DataDir string
	Proc    *lab.Process
	t       testing.TB
	extra   []string
	replica bool
}

// CoordinatorOptions tune StartCoordinatorWith.
type CoordinatorOptions struct {
	Extra []string // more flags for edgewire-coordinator (e.g. --relay-map)
	// Setup runs before the first start with the (created) data dir, e.g.
	// to place a relay.key whose public key the test needs up front.
	Setup func(dataDir string) error
	// Replica: a replica on the Kubernetes store, which opens its admin
	// socket only once it leads; Start waits only for it to be running.
	Replica bool
}

// StartCoordinator starts a coordinator on h with a data dir in the lab.
func StartCoordinator(t testing.TB, l *lab.Lab, h *lab.Host) *Coordinator {
	t.Helper()
	return StartCoordinatorWith(t, l, h, CoordinatorOptions{})
}

// StartCoordinatorWith is StartCoordinator with options.
func StartCoordinatorWith(t testing.TB, l *lab.Lab, h *lab.Host, opts CoordinatorOptions) *Coordinator {
	t.Helper()
	c := &Coordinator{Host: h, DataDir: CoordinatorDataDir(l, h), t: t, extra: opts.Extra, replica: opts.Replica}
	if opts.Setup != nil {
		if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := opts.Setup(c.DataDir); err != nil {
			t.Fatalf("coordinator setup: %v", err)
		}
	}
	c.Start()
	return c
}

// CoordinatorDataDir is where StartCoordinator keeps the data of a
// coordinator on h.
func CoordinatorDataDir(l *lab.Lab, h *lab.Host) string {
	return filepath.Join(l.Dir(), "coord-"+h.Name())
}

// Start (re)starts the coordinator process with the same data dir.
func (c *Coordinator) Start() {
	t := c.t
	t.Helper()
	argv := []string{Bin(t, "edgewire-coordinator"),
		"--data-dir", c.DataDir, "--listen", fmt.Sprintf(":%d", coordPort), "--log-level", "debug"}
	p, err := c.Host.Start("coordinator", nil, append(argv, c.extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	c.Proc = p
	err = lab.Eventually(15*time.Second, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("coordinator exited: %v\n%s", p.ExitErr(), p.Log())
		}
		if c.replica {
			if !strings.Contains(p.Log(), "coordinator replica started") {
				return errors.New("replica not started")
			}
			return nil
		}
		_, err := os.Stat(c.AdminSocket())
		return err
	})
	if err != nil {
		t.Fatalf("coordinator did not come up: %v", err)
	}
}

// Serving reports whether the coordinator serves (a replica: leads).
func (c *Coordinator) Serving() bool {
	if c.Proc == nil || c.Proc.Exited() {
		return false
	}
	_, err := os.Stat(c.AdminSocket())
	return err == nil
}

// Addr is the coordinator's host:port for agents.
func (c *Coordinator) Addr() string {
	return netip.AddrPortFrom(c.Host.IP(), coordPort).String()
}

// AdminSocket is the coordinator's local admin socket.
func (c *Coordinator) AdminSocket() string { return filepath.Join(c.DataDir, "admin.sock") }

// CLI runs the edgewire CLI against the coordinator's admin socket.
func (c *Coordinator) CLI(args ...string) (string, error) {
	return runCLI(append([]string{"--admin-socket", c.AdminSocket()}, args...)...)
}

// Token creates a join token with extra `token create` flags.
func (c *Coordinator) Token(flags ...string) string {
	c.t.Helper()
	out, err := c.CLI(append([]string{"token", "create"}, flags...)...)
	if err != nil {
		c.t.Fatalf("token create: %v", err)
	}
	return strings.TrimSpace(out)
}

func runCLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "edgewire"), args...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), fmt.Errorf("edgewire %s: %v: %s", strings.Join(args, " "), err, ee.Stderr)
	}
	return string(out), err
}

// Agent is a running edgewire-agent.
type Agent struct {
	Host     *lab.Host
	Name     string
	Iface    string
	StateDir string
	Socket   string
	Proc     *lab.Process
	t        testing.TB
	args     []string
}

// AgentOptions tune StartAgent.
type AgentOptions struct {
	Token string   // join token; empty to rely on an earlier join
	Extra []string // more flags for `edgewire-agent run`
	// Coordinator overrides the coordinator's address (several replicas).
	Coordinator string
}

// StartAgent starts an agent named name on h. Interface names embed the
// lab id, since /var/run/wireguard is shared by every namespace.
func StartAgent(t testing.TB, l *lab.Lab, h *lab.Host, c *Coordinator, name string, opts AgentOptions) *Agent {
	t.Helper()
	a := &Agent{
		Host: h, Name: name, t: t,
		Iface:    "ew" + l.ID() + shortName(name),
		StateDir: filepath.Join(l.Dir(), "agent-"+name),
		Socket:   filepath.Join(l.Dir(), "agent-"+name+".sock"),
	}
	addr := opts.Coordinator
	if addr == "" {
		addr = c.Addr()
	}
	args := []string{"--coordinator", addr, "--name", name}
	if opts.Token != "" {
		args = append(args, "--token", opts.Token)
	}
	a.StartWith(append(args, opts.Extra...)...)
	return a
}

// StartWith (re)starts the agent with the same state, interface and
// socket, and args for the rest of `edgewire-agent run`'s flags (name,
// coordinator, token, ...) in place of those it had.
func (a *Agent) StartWith(args ...string) {
	a.t.Helper()
	a.args = append([]string{"run", "--state-dir", a.StateDir, "--interface", a.Iface, "--socket", a.Socket, "--log-level", "debug"}, args...)
	// A host that routes a subnet forwards packets, as a real one must
	// (the agent refuses to advertise routes otherwise).
	if slices.ContainsFunc(args, func(s string) bool { return strings.HasPrefix(s, "--advertise-routes") }) {
		a.Host.MustExec(a.t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	a.Start()
}

func shortName(s string) string {
	if len(s) > 9 {
		return s[len(s)-9:]
	}
	return s
}

// Start (re)starts the agent process with the same state.
func (a *Agent) Start() {
	a.t.Helper()
	p, err := a.Host.Start("agent-"+a.Name, nil, append([]string{Bin(a.t, "edgewire-agent")}, a.args...)...)
	if err != nil {
		a.t.Fatal(err)
	}
	a.Proc = p
}

// CLI runs the edgewire CLI against the agent's local API.
func (a *Agent) CLI(args ...string) (string, error) {
	return runCLI(append([]string{"--socket", a.Socket}, args...)...)
}

// Status asks the agent for its status through `edgewire status -o json`.
func (a *Agent) Status() (localapi.Status, error) {
	var st localapi.Status
	out, err := a.CLI("status", "-o", "json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("decode status: %w: %s", err, out)
	}
	return st, nil
}

// Services asks the agent how it reaches each Service endpoint, through
// `edgewire services -o json`.
func (a *Agent) Services() (localapi.Services, error) {
	var sv localapi.Services
	out, err := a.CLI("services", "-o", "json")
	if err != nil {
		return sv, err
	}
	if err := json.Unmarshal([]byte(out), &sv); err != nil {
		return sv, fmt.Errorf("decode services: %w: %s", err, out)
	}
	return sv, nil
}

// WaitPeers waits until the agent has an overlay address and exactly n peers.
func (a *Agent) WaitPeers(n int, timeout time.Duration) localapi.Status {
	a.t.Helper()
	var st localapi.Status
	err := lab.Eventually(timeout, 200*time.Millisecond, func() error {
		if a.Proc.Exited() {
			return fmt.Errorf("agent exited: %v", a.Proc.ExitErr())
		}
		var err error
		st, err = a.Status()
		if err != nil {
			return err
		}
		if len(st.Self.Addresses) == 0 || len(st.Peers) != n {
			return fmt.Errorf("addresses %v, %d peers, want %d", st.Self.Addresses, len(st.Peers), n)
		}
		return nil
	})
	if err != nil {
		a.t.Fatalf("agent %s: %v", a.Name, err)
	}
	return st
}

// WaitConnected waits until the agent's stream to the coordinator is up.
func (a *Agent) WaitConnected(timeout time.Duration) error {
	return lab.Eventually(timeout, 250*time.Millisecond, func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		if !st.Self.Connected {
			return fmt.Errorf("%s not connected to the coordinator", a.Name)
		}
		return nil
	})
}

// OverlayIP returns the agent's first overlay address.
func (a *Agent) OverlayIP() netip.Addr {
	a.t.Helper()
	st, err := a.Status()
	if err != nil || len(st.Self.Addresses) == 0 {
		a.t.Fatalf("agent %s has no overlay address: %v", a.Name, err)
	}
	return netip.MustParseAddr(st.Self.Addresses[0])
}

// WGPeer is one peer line of `wg show IFACE dump`.
type WGPeer struct {
	PublicKey     string
	Endpoint      string
	AllowedIPs    string
	LastHandshake time.Time
	Rx, Tx        uint64
}

// WGShow runs the stock `wg show IFACE dump` inside the agent's namespace.
func (a *Agent) WGShow() (map[string]WGPeer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := a.Host.Exec(ctx, "wg", "show", a.Iface, "dump")
	if err != nil {
		return nil, err
	}
	peers := map[string]WGPeer{}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, line := range lines[1:] { // the first line is the interface
		f := strings.Split(line, "\t")
		if len(f) < 8 {
			return nil, fmt.Errorf("wg dump line %q: %d fields", line, len(f))
		}
		var p WGPeer
		p.PublicKey, p.Endpoint, p.AllowedIPs = f[0], f[2], f[3]
		var hs int64
		fmt.Sscan(f[4], &hs)
		if hs != 0 {
			p.LastHandshake = time.Unix(hs, 0)
		}
		fmt.Sscan(f[5], &p.Rx)
		fmt.Sscan(f[6], &p.Tx)
		peers[p.PublicKey] = p
	}
	return peers, nil
}
