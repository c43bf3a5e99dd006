package coordinator

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/svcsource"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/leaktest"
	"github.com/edgewire/edgewire/internal/logging/logtest"
	"github.com/edgewire/edgewire/types/topoview"
)

const timeout = 10 * time.Second

// testConfig is a coordinator with every part on: loopback ports, a
// temporary data dir, an embedded relay (no relay map), metrics, the
// profile socket and a services file.
func testConfig(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	svcs := filepath.Join(dir, "services.json")
	if err := os.WriteFile(svcs, []byte(`{"services": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return Config{
		DataDir:       dir,
		Listen:        "127.0.0.1:0",
		Prefixes:      []netip.Prefix{netip.MustParsePrefix(DefaultPrefix)},
		STUNListen:    "127.0.0.1:0",
		STUNAlt:       stunserver.AltAuto,
		RelayListen:   "127.0.0.1:0",
		RelayID:       1,
		RelayName:     "test",
		TicketTTL:     10 * time.Minute,
		Services:      &svcsource.File{Path: svcs},
		MetricsListen: "127.0.0.1:0",
		PprofSocket:   filepath.Join(dir, "pprof.sock"),
		Logger:        logtest.New(t),
	}
}

// TestRunStopsCleanly runs the coordinator, creates a token over the
// admin socket, leaves a stream open in a handler (one that never ends on
// its own before the authentication timeout), and cancels: Run returns
// nil well before that timeout, removes its socket and leaves no
// goroutine behind.
func TestRunStopsCleanly(t *testing.T) {
	before := leaktest.Take()
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	sock := filepath.Join(cfg.DataDir, AdminSocket)
	conn := dialAdmin(t, sock, done)
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), timeout)
	defer ccancel()
	resp, err := api.NewAdminClient(conn).CreateToken(cctx, &api.CreateTokenRequest{TtlSeconds: 3600})
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if !strings.HasPrefix(resp.GetToken(), "ewt1.") {
		t.Fatalf("token: got %q, want ewt1.<id>.<secret>.<pin>", resp.GetToken())
	}
	// A join that never says Hello holds its handler until the server
	// stops it.
	if _, err := api.NewControlClient(conn).Join(cctx); err != nil {
		t.Fatalf("open Join stream: %v", err)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: got %v, want nil", err)
		}
	case <-time.After(timeout):
		t.Fatal("Run did not return after its context ended")
	}
	// The stream was cut after the grace, not ended by the server's own
	// authentication timeout (10 s).
	if d := time.Since(start); d > grpcGrace+3*time.Second {
		t.Errorf("stop took %v, want about the %v grace", d, grpcGrace)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("admin socket after Run: got %v, want it removed", err)
	}
	conn.Close()
	ccancel()
	if l := before.Leaked(timeout); l != "" {
		t.Fatalf("goroutines outlived Run: %s", l)
	}
}

// TestRunFailingPartStopsAll: a part that cannot run stops the
// coordinator with its name, and the parts already running stop with it.
func TestRunFailingPartStopsAll(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	before := leaktest.Take()
	cfg := testConfig(t)
	cfg.MetricsListen = busy.Addr().String()
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg) }()
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

// TestRunSetupFailureStartsNothing: a port in use found while opening
// the sockets ends Run before any part starts, with the sockets opened
// before it closed again.
func TestRunSetupFailureStartsNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	before := leaktest.Take()
	cfg := testConfig(t)
	cfg.Listen = busy.Addr().String()
	if err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Run: got %v, want listen ...: address already in use", err)
	}
	if l := before.Leaked(timeout); l != "" {
		t.Fatalf("goroutines outlived Run: %s", l)
	}
}

// TestRunSTUNAltInUse: the STUN server's second port is opened with the
// other sockets, so a port in use stops Run before anything serves and
// names the flag.
func TestRunSTUNAltInUse(t *testing.T) {
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	before := leaktest.Take()
	cfg := testConfig(t)
	cfg.STUNAlt = busy.LocalAddr().String()
	if err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "--stun-listen-alt") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Run: got %v, want STUN server (--stun-listen-alt): ... address already in use", err)
	}
	if l := before.Leaked(timeout); l != "" {
		t.Fatalf("goroutines outlived Run: %s", l)
	}
}

// dialAdmin connects to the admin socket once Run has opened it.
func dialAdmin(t *testing.T, sock string, done <-chan error) *grpc.ClientConn {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("Run returned before serving: %v", err)
		default:
		}
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("admin socket never appeared")
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// TestTopologyPage: the metrics listener serves the topology page with
// the running server's view, open from loopback.
func TestTopologyPage(t *testing.T) {
	cfg := testConfig(t)
	cfg.MetricsListen = freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var v topoview.View
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get("http://" + cfg.MetricsListen + "/topology.json")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if err := json.Unmarshal(b, &v); err != nil {
					t.Fatalf("/topology.json: %v in %q", err, b)
				}
				break
			}
			if resp.StatusCode != 503 {
				t.Fatalf("/topology.json: got %d %q, want 200 (or 503 while starting)", resp.StatusCode, b)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/topology.json not served after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(v.Relays) != 1 || v.Relays[0].Name != "test" || v.Relays[0].Stats == nil {
		t.Errorf("relays %+v: want the embedded relay \"test\" with its stats", v.Relays)
	}
	resp, err := http.Get("http://" + cfg.MetricsListen + "/topology")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `<svg id="topology"`) && !strings.Contains(string(b), `id="no-pairs"`) {
		t.Errorf("/topology: got %d %q, want the page", resp.StatusCode, b)
	}
}
