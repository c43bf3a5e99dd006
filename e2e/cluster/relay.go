package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/lab"
)

// RelayPort is the HTTPS port of every relay in the lab: the default of
// edgewire-relay and of the coordinator's embedded relay.
const RelayPort = 8444

// RelayKey returns the base64 public key of the relay key kept in dataDir
// (relay.key), creating the key when it is missing, by running
// `edgewire-relay --data-dir dataDir --print-key` inside h's namespace. The
// coordinator keeps its embedded relay's key in the same file of its own
// data dir, so this serves both: before a first start it fixes the key a
// relay will use, afterwards it reads the key in use.
func RelayKey(t testing.TB, h *lab.Host, dataDir string) string {
	t.Helper()
	bin := Bin(t, "edgewire-relay") // may build: not inside the command's timeout
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Exec(ctx, bin, "--data-dir", dataDir, "--print-key")
	if err != nil {
		t.Fatalf("relay key in %s: %v", dataDir, err)
	}
	return strings.TrimSpace(out)
}

// RelayURL is the mesh URL of a relay listening on RelayPort at ip.
func RelayURL(ip netip.Addr) string {
	return fmt.Sprintf("https://%s/relay", netip.AddrPortFrom(ip, RelayPort))
}

// RelayMeshPeer is the --mesh-peer value naming the coordinator's
// embedded relay (it must be running, or have run, so its key exists).
func (c *Coordinator) RelayMeshPeer() string {
	c.t.Helper()
	return RelayURL(c.Host.IP()) + "=" + RelayKey(c.t, c.Host, c.DataDir)
}

// TicketKeyFile is the coordinator's relay-ticket public key file, which
// standalone relays take as --ticket-key.
func (c *Coordinator) TicketKeyFile() string { return filepath.Join(c.DataDir, "ticket.key.pub") }

// Relay is a running edgewire-relay.
type Relay struct {
	Host    *lab.Host
	DataDir string
	Key     string // base64 public key
	Proc    *lab.Process
	t       testing.TB
	args    []string
}

// RelayOptions tune StartRelay.
type RelayOptions struct {
	TicketKey   string   // --ticket-key: the coordinator's TicketKeyFile, or base64
	MeshKeyFile string   // --mesh-key-file
	MeshPeers   []string // --mesh-peer values
	Extra       []string // more flags
}

// NewRelay fixes the key and flags of a relay on h without starting it,
// so its key can go into the coordinator's relay map first.
func NewRelay(t testing.TB, l *lab.Lab, h *lab.Host) *Relay {
	t.Helper()
	r := &Relay{Host: h, DataDir: filepath.Join(l.Dir(), "relay-"+h.Name()), t: t}
	r.Key = RelayKey(t, h, r.DataDir)
	return r
}

// StartWith starts r with opts and waits until it accepts connections.
func (r *Relay) StartWith(opts RelayOptions) {
	r.t.Helper()
	r.args = []string{"--data-dir", r.DataDir, "--listen", fmt.Sprintf(":%d", RelayPort), "--log-level", "debug"}
	if opts.TicketKey != "" {
		r.args = append(r.args, "--ticket-key", opts.TicketKey)
	}
	if opts.MeshKeyFile != "" {
		r.args = append(r.args, "--mesh-key-file", opts.MeshKeyFile)
	}
	for _, p := range opts.MeshPeers {
		r.args = append(r.args, "--mesh-peer", p)
	}
	r.args = append(r.args, opts.Extra...)
	r.Start()
}

// Start (re)starts the relay with the flags of the last StartWith and
// waits up to 10s until its port accepts TCP connections.
func (r *Relay) Start() {
	r.t.Helper()
	p, err := r.Host.Start("relay", nil, append([]string{Bin(r.t, "edgewire-relay")}, r.args...)...)
	if err != nil {
		r.t.Fatal(err)
	}
	r.Proc = p
	addr := netip.AddrPortFrom(r.Host.IP(), RelayPort).String()
	err = lab.Eventually(10*time.Second, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("relay exited: %v\n%s", p.ExitErr(), p.Log())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := r.Host.DialTCP(ctx, addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		r.t.Fatalf("relay on %s did not come up: %v", r.Host.Name(), err)
	}
}

// URL is the relay's mesh URL.
func (r *Relay) URL() string { return RelayURL(r.Host.IP()) }

// MeshPeer is the --mesh-peer value naming this relay.
func (r *Relay) MeshPeer() string { return r.URL() + "=" + r.Key }
