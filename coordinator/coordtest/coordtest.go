// Package coordtest runs a real coordinator in process for tests of what
// talks to one (agents, the CLI): the gRPC services on a loopback TLS
// port with a CA of its own (join tokens pin it), a bbolt store in the
// test's temporary directory, a STUN server, and a relay (relaytest) in
// its relay map whose tickets it signs. Everything stops when the test
// ends.
package coordtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/pki"
	"github.com/edgewire/edgewire/coordinator/server"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/dataplane/relay/relaytest"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/logging/logtest"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// Options tune Start.
type Options struct {
	// TicketTTL of the relay tickets (0: the server's default).
	TicketTTL time.Duration
	// Mod may change the server's Config before it starts.
	Mod func(*server.Config)
}

// Coordinator is a running in-process coordinator.
type Coordinator struct {
	Addr   string // host:port of the TLS gRPC listener agents dial
	Server *server.Server
	Store  *store.Bolt
	Relay  *relaytest.Relay
	STUN   *stunserver.Server

	t    testing.TB
	stop func()
}

// Start runs a coordinator until the test ends (or Stop).
func Start(t testing.TB, opts Options) *Coordinator {
	t.Helper()
	dir := t.TempDir()
	id, err := pki.LoadOrCreate(filepath.Join(dir, "pki"), nil, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "edgewire.db"))
	if err != nil {
		t.Fatal(err)
	}
	stunSrv, err := stunserver.Listen("127.0.0.1:0", nil)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ticketPub, ticketPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rl := relaytest.Start(t, ticketPub)
	host, port, _ := net.SplitHostPort(rl.Addr)
	stunPort := uint32(stunSrv.Addr().(*net.UDPAddr).Port)
	cfg := server.Config{
		Store:     st,
		Prefixes:  []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		CAPin:     jointoken.PinCert(id.CA),
		STUN:      []*api.StunServer{{Port: stunPort}},
		Relays:    []*api.RelayRegion{{Id: 1, Name: "test", Host: host, Port: mustPort(port), Key: rl.Key[:], StunPort: stunPort}},
		TicketKey: ticketPriv,
		TicketTTL: opts.TicketTTL,
		// A shorter publication interval keeps tests quick.
		MapInterval: 20 * time.Millisecond,
		OnDelete:    func(k key.Public, until time.Time) { rl.Server.Revoke(k, until) },
		Logger:      logtest.New(t),
	}
	if opts.Mod != nil {
		opts.Mod(&cfg)
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{id.Cert}, MinVersion: tls.VersionTLS13})),
		grpc.ForceServerCodecV2(server.Codec()),
	)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { gs.Serve(ln) })
	wg.Go(func() { stunSrv.Serve() })
	c := &Coordinator{Addr: ln.Addr().String(), Server: srv, Store: st, Relay: rl, STUN: stunSrv, t: t}
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			gs.Stop()
			stunSrv.Close()
			wg.Wait()
			st.Close()
		})
	}
	t.Cleanup(c.stop)
	return c
}

func mustPort(s string) uint32 {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		panic(err)
	}
	return uint32(p)
}

// Stop stops the coordinator (not its relay): agents lose their streams.
func (c *Coordinator) Stop() { c.stop() }

// Token creates a join token.
func (c *Coordinator) Token(req *api.CreateTokenRequest) string {
	c.t.Helper()
	resp, err := c.Server.CreateToken(context.Background(), req)
	if err != nil {
		c.t.Fatalf("coordtest: create token: %v", err)
	}
	return resp.GetToken()
}

// DeleteNode deletes the node name.
func (c *Coordinator) DeleteNode(name string) {
	c.t.Helper()
	if _, err := c.Server.DeleteNode(context.Background(), &api.DeleteNodeRequest{Name: name}); err != nil {
		c.t.Fatalf("coordtest: delete node %s: %v", name, err)
	}
}
