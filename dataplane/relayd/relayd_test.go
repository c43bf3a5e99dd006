package relayd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/leaktest"
	"github.com/edgewire/edgewire/types/key"
)

const timeout = 10 * time.Second

// testConfig is a relay on loopback ports with a fresh ticket key, whose
// private half signs the test's tickets.
func testConfig(t *testing.T) (Config, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.STUNListen = "127.0.0.1:0"
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.TicketKey = base64.StdEncoding.EncodeToString(pub)
	return cfg, priv
}

// TestRunServesAndStops runs the daemon, connects a node with a ticket,
// asks the STUN server, then stops the daemon under the connected node:
// Run returns nil and nothing it started is left.
func TestRunServesAndStops(t *testing.T) {
	before := leaktest.Take()
	cfg, ticketKey := testConfig(t)
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	node, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	c, err := relay.NewClient(relay.ClientConfig{
		URL: "https://" + r.Addr().String() + "/relay", ServerKey: r.PublicKey(), PrivateKey: node,
		Ticket: relay.SignTicket(ticketKey, relay.Ticket{Node: node.Public(), Expires: time.Now().Add(10 * time.Minute)}),
	})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	defer ccancel()
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(cctx) }()
	pctx, pcancel := context.WithTimeout(context.Background(), timeout)
	defer pcancel()
	for { // connecting; Ping fails at once while down
		if _, err := c.Ping(pctx); err == nil {
			break
		}
		if pctx.Err() != nil {
			t.Fatalf("client never reached the relay: %v", c.LastError())
		}
		time.Sleep(20 * time.Millisecond)
	}

	if got, want := stunBinding(t, r.STUNAddr()), "127.0.0.1"; got != want {
		t.Fatalf("STUN mapped address: got %s, want %s", got, want)
	}
	if r.STUNAltAddr() == nil {
		t.Fatal("no second STUN port by default")
	}
	if got, want := stunBinding(t, r.STUNAltAddr()), "127.0.0.1"; got != want {
		t.Fatalf("STUN mapped address on the second port: got %s, want %s", got, want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: got %v, want nil", err)
		}
	case <-time.After(timeout):
		t.Fatal("Run did not return after its context ended")
	}
	if _, err := net.DialTimeout("tcp", r.Addr().String(), time.Second); err == nil {
		t.Error("relay listener still accepts after Run returned")
	}
	// The node notices its relay is gone.
	for deadline := time.Now().Add(timeout); c.Connected(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("client still connected after the relay stopped")
		}
	}
	ccancel()
	<-cdone
	if l := before.Leaked(timeout); l != "" {
		t.Fatalf("goroutines outlived Run: %s", l)
	}
}

// TestRunFailingPartStopsAll: a part that cannot run (metrics on a port in
// use) stops the daemon, names itself, and leaves nothing behind.
func TestRunFailingPartStopsAll(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	before := leaktest.Take()
	cfg, _ := testConfig(t)
	cfg.MetricsListen = busy.Addr().String()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.HasPrefix(err.Error(), "metrics: ") || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("Run: got %v, want metrics: ... address already in use", err)
		}
	case <-time.After(timeout):
		t.Fatal("Run did not return after a part failed")
	}
	if l := before.Leaked(timeout); l != "" {
		t.Fatalf("goroutines outlived Run: %s", l)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	short := filepath.Join(t.TempDir(), "mesh.key")
	if err := os.WriteFile(short, []byte("too short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	peerKey, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	peer := "https://relay-eu.example.com:8444/relay=" + peerKey.Public().String()
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"no data dir", func(c *Config) { c.DataDir = "" }, "--data-dir is required"},
		{"no ticket key", func(c *Config) { c.TicketKey = "" }, "--ticket-key is required"},
		{"ticket key not a key", func(c *Config) { c.TicketKey = "AAAA" }, "--ticket-key: want a base64 Ed25519 public key"},
		{"negative client rate", func(c *Config) { c.ClientRateMbit = -1 }, "--client-rate: "},
		{"no queue budget", func(c *Config) { c.QueueBudgetMiB = 0 }, "--queue-budget-mib 0: want 1 to 1048576"},
		{"client queue above the budget", func(c *Config) { c.QueueBudgetMiB, c.ClientQueueMiB = 2, 4 }, "--queue-budget-mib 2 is below --client-queue-mib 4"},
		{"no pending handshakes", func(c *Config) { c.MaxPendingHandshakes = 0 }, "--max-pending-handshakes 0: want at least 1"},
		{"no connections per address", func(c *Config) { c.MaxConnsPerIP = 0 }, "--max-conns-per-ip 0: want at least 1"},
		{"short mesh key", func(c *Config) { c.MeshKeyFile = short }, "want at least 32"},
		{"mesh peer without mesh key", func(c *Config) { c.MeshPeers = []string{peer} }, "--mesh-peer needs --mesh-key-file"},
		{"mesh peer not https", func(c *Config) { c.MeshPeers = []string{"http://a:1/relay=x"} }, "want https://host:port/relay=<base64 key>"},
		{"TLS key without certificate", func(c *Config) { c.TLSKey = "/nonexistent/key.pem" }, "--tls-cert and --tls-key go together"},
		{"TLS certificate missing", func(c *Config) { c.TLSCert, c.TLSKey = "/nonexistent/cert.pem", "/nonexistent/key.pem" }, "no such file"},
		{"STUN address invalid", func(c *Config) { c.STUNListen = "not-an-address" }, "STUN server: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := testConfig(t)
			tc.mod(&cfg)
			r, err := New(cfg)
			if err == nil {
				r.Run(canceled())
				t.Fatalf("New: got a relay, want an error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New: got %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestNewListenFailureClosesSTUN: when the HTTPS listener cannot be
// opened, the STUN socket New opened first is released.
func TestNewListenFailureClosesSTUN(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg, _ := testConfig(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	alt, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.STUNListen, cfg.STUNAlt = pc.LocalAddr().String(), alt.LocalAddr().String()
	pc.Close()
	alt.Close()
	cfg.Listen = busy.Addr().String()
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("New on a busy port: got %v, want address already in use", err)
	}
	// The STUN ports are free again.
	for _, a := range []string{cfg.STUNListen, cfg.STUNAlt} {
		pc, err = net.ListenPacket("udp", a)
		if err != nil {
			t.Fatalf("STUN port %s after a failed New: %v, want it released", a, err)
		}
		pc.Close()
	}
}

// TestNewSTUNAltInUse: a second STUN port in use fails New with the
// flag's name, and the first STUN port is released.
func TestNewSTUNAltInUse(t *testing.T) {
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg, _ := testConfig(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.STUNListen, cfg.STUNAlt = pc.LocalAddr().String(), busy.LocalAddr().String()
	pc.Close()
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "--stun-listen-alt") {
		t.Fatalf("New with the second STUN port in use: got %v, want an error naming --stun-listen-alt", err)
	}
	pc, err = net.ListenPacket("udp", cfg.STUNListen)
	if err != nil {
		t.Fatalf("STUN port after a failed New: %v, want it released", err)
	}
	pc.Close()
}

// TestLoadKeyIsStable: --print-key shows the key the relay then uses.
func TestLoadKeyIsStable(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.DataDir = filepath.Join(cfg.DataDir, "new", "dir")
	k, err := LoadKey(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Run(canceled())
	if got, want := r.PublicKey(), k.Public(); got != want {
		t.Fatalf("relay key: got %s, want the printed %s", got, want)
	}
	if fi, err := os.Stat(cfg.DataDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: got %v %v, want mode 0700", fi.Mode(), err)
	}
}

// TestServeStopsOnCancel: Serve (what the coordinator's embedded relay
// runs) returns nil when its context ends, with its listener closed.
func TestServeStopsOnCancel(t *testing.T) {
	before := leaktest.Take()
	cfg, _ := testConfig(t)
	cfg.STUNListen, cfg.MetricsListen = "", ""
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := Serve(ctx, r.srv, r.ln, r.cert); err != nil {
		t.Fatalf("Serve after its context ended: got %v, want nil", err)
	}
	if _, err := net.DialTimeout("tcp", r.Addr().String(), time.Second); err == nil {
		t.Error("listener still accepts after Serve returned")
	}
	if l := before.Leaked(timeout); l != "" {
		t.Fatalf("goroutines outlived Serve: %s", l)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// stunBinding asks the STUN server at addr for this socket's mapped
// address and returns its IP.
func stunBinding(t *testing.T, addr net.Addr) string {
	t.Helper()
	conn, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	buf := make([]byte, 1500)
	for range 20 { // UDP: a lost request is retried
		if _, err := conn.Write(req.Raw); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, err := conn.Read(buf)
		if err != nil {
			continue
		}
		resp := &stun.Message{Raw: buf[:n]}
		var xa stun.XORMappedAddress
		if err := resp.Decode(); err != nil {
			t.Fatalf("STUN response: %v", err)
		}
		if err := xa.GetFrom(resp); err != nil {
			t.Fatalf("STUN response: %v", err)
		}
		return xa.IP.String()
	}
	t.Fatal("no STUN response")
	return ""
}
