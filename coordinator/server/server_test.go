package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// TestMain fails the package if a goroutine started by the server or by
// these tests outlives the tests. (go.uber.org/goleak is not a dependency
// of the module, so this is a small stand-in limited to this package.)
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := checkLeaks(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func checkLeaks(grace time.Duration) error {
	const pkg = "github.com/edgewire/edgewire/coordinator/server."
	deadline := time.Now().Add(grace)
	for {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, pkg) && !strings.Contains(g, pkg+"TestMain") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const timeout = 5 * time.Second

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

type env struct {
	srv     *Server
	store   *store.Bolt
	clock   *clock.Fake // the server's; it moves only when a test moves it
	conn    *grpc.ClientConn
	control api.ControlClient
	admin   api.AdminClient
}

// newEnv starts a Server on a real bbolt store and a fake clock at t0 and
// serves it in process over bufconn. Every change is published at once
// (the interval is netmap's to test, and TestMapInterval's). mod may
// adjust the config; opts are grpc server options.
func newEnv(t *testing.T, mod func(*Config), opts ...grpc.ServerOption) *env {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	clk := clock.NewFake(t0)
	cfg := Config{
		Store:       st,
		Prefixes:    []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		CAPin:       [32]byte{0xca},
		Clock:       clk,
		MapInterval: -1,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	cc := serve(t, srv, opts...)
	return &env{srv: srv, store: st, clock: clk, conn: cc, control: api.NewControlClient(cc), admin: api.NewAdminClient(cc)}
}

// serve serves srv in process over bufconn until the test ends and
// returns a client connection to it.
func serve(t *testing.T, srv *Server, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.ForceServerCodecV2(Codec())}, opts...)...)
	srv.Register(gs)
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(lis)
	}()
	t.Cleanup(func() { gs.Stop(); <-served })
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// waitTimers waits until the server has n timers set on its clock: it
// has reached the wait a test is about to cut short by moving time.
func (e *env) waitTimers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for e.clock.Timers() != n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d timers on the server's clock, want %d", e.clock.Timers(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) createToken(t *testing.T, req *api.CreateTokenRequest) string {
	t.Helper()
	resp, err := e.admin.CreateToken(ctxT(t), req)
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	return resp.Token
}

// snapshot is the store's whole content.
type snapshot struct {
	Tokens []store.Token
	Nodes  []store.Node
}

func (e *env) snapshot(t *testing.T) snapshot {
	t.Helper()
	var s snapshot
	err := e.store.View(context.Background(), func(tx store.Tx) error {
		var err error
		if s.Tokens, err = tx.Tokens(); err != nil {
			return err
		}
		s.Nodes, err = tx.Nodes()
		return err
	})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return s
}

// agent is a node's key pair.
type agent struct {
	priv key.Private
	pub  key.Public
}

// agents are the test agents by public key, so a join request naming a
// key is proven with the matching private key (joinVia).
var agents sync.Map

func newAgent(t *testing.T) *agent {
	t.Helper()
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	a := agent{priv: priv, pub: priv.Public()}
	agents.Store(a.pub, &a)
	return &a
}

// joinVia runs the Join stream for req: Hello with req.PublicKey, the
// proof made with that key's test agent (a garbage proof for a key no
// test agent holds), then req.
func joinVia(ctx context.Context, cl api.ControlClient, req *api.JoinRequest) (*api.JoinResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, err := cl.Join(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: &api.Hello{PublicKey: req.PublicKey, ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1}}}); err != nil {
		return nil, err
	}
	m, err := c.Recv()
	if err != nil {
		return nil, err
	}
	proof := &api.AuthProof{Mac: make([]byte, 32)}
	if v, ok := agents.Load(key.Public(append(bytes.Clone(req.PublicKey), make([]byte, 32)...)[:32])); ok && len(req.PublicKey) == 32 {
		if proof, err = api.Prove(v.(*agent).priv, m.GetChallenge(), api.AuthJoin, nil, nil); err != nil {
			return nil, err
		}
	}
	if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Proof{Proof: proof}}); err != nil {
		return nil, err
	}
	if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Join{Join: req}}); err != nil {
		return nil, err
	}
	m, err = c.Recv()
	if err != nil {
		return nil, err
	}
	return m.GetJoined(), nil
}

func (e *env) joinReq(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	return joinVia(ctx, e.control, req)
}

func (a *agent) key() []byte { return bytes.Clone(a.pub[:]) }

func (e *env) join(t *testing.T, a *agent, name, tok string, routes ...string) *api.JoinResponse {
	t.Helper()
	resp, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: a.key(), Name: name, Hostname: name + "-host", Routes: routes})
	if err != nil {
		t.Fatalf("Join %s: %v", name, err)
	}
	return resp
}

func code(err error) codes.Code { return status.Code(err) }

// stream is an authenticated agent stream. A goroutine moves what the
// server sends into msgs until the stream ends, then reports in done.
type stream struct {
	c       api.Control_ConnectClient
	cancel  context.CancelFunc
	msgs    chan *api.ServerMessage
	done    chan error // the stream's final error, once
	version uint64     // version of the last map received
}

// handshake opens a stream, sends hello and answers the challenge with
// answer(challenge). It returns the stream after sending the proof.
func (e *env) handshake(t *testing.T, hello *api.Hello, answer func(*api.Challenge) *api.AuthProof) (api.Control_ConnectClient, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := e.control.Connect(ctx)
	if err != nil {
		cancel()
		t.Fatalf("Connect: %v", err)
	}
	if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: hello}}); err != nil {
		cancel()
		t.Fatalf("send Hello: %v", err)
	}
	msg, err := c.Recv()
	if err != nil {
		return &failedStream{Control_ConnectClient: c, err: err}, cancel
	}
	ch := msg.GetChallenge()
	if ch == nil {
		cancel()
		t.Fatalf("got %v after Hello, want a Challenge", msg)
	}
	if len(ch.EphemeralPublicKey) != 32 || len(ch.Nonce) != api.ChallengeNonceLen {
		cancel()
		t.Fatalf("got challenge with key %d, nonce %d bytes; want 32, %d", len(ch.EphemeralPublicKey), len(ch.Nonce), api.ChallengeNonceLen)
	}
	if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_Proof{Proof: answer(ch)}}); err != nil {
		cancel()
		t.Fatalf("send proof: %v", err)
	}
	return c, cancel
}

// failedStream reports an error that ended the stream before the
// challenge.
type failedStream struct {
	api.Control_ConnectClient
	err error
}

func (f *failedStream) Recv() (*api.ServerMessage, error) { return nil, f.err }

// prove answers a Connect challenge with a's private key: correctly if
// the stream is a's.
func (a *agent) prove(ch *api.Challenge) *api.AuthProof {
	p, err := api.Prove(a.priv, ch, api.AuthConnect, nil, nil)
	if err != nil {
		return &api.AuthProof{}
	}
	return p
}

func metadataCtx(ctx context.Context, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

func hello(a *agent, eps ...string) *api.Hello {
	return &api.Hello{PublicKey: a.key(), ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1, Endpoints: eps, Hostname: "h"}
}

// connect authenticates a and returns its stream; the stream is closed
// when the test ends.
func (e *env) connect(t *testing.T, a *agent, eps ...string) *stream {
	t.Helper()
	return e.connectHello(t, a, hello(a, eps...))
}

// connectHello is connect with the Hello given.
func (e *env) connectHello(t *testing.T, a *agent, h *api.Hello) *stream {
	t.Helper()
	c, cancel := e.handshake(t, h, a.prove)
	s := &stream{c: c, cancel: cancel, msgs: make(chan *api.ServerMessage, 256), done: make(chan error, 1)}
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		for {
			m, err := c.Recv()
			if err != nil {
				s.done <- err
				close(s.msgs)
				return
			}
			s.msgs <- m
		}
	}()
	t.Cleanup(func() {
		cancel()
		for range s.msgs {
		}
		<-pumped
	})
	return s
}

// next returns the next network map, checking that deltas chain.
func (s *stream) next(t *testing.T) *api.NetworkMap {
	t.Helper()
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatalf("stream ended while waiting for a map: %v", <-s.done)
			}
			nm := m.GetMap()
			if nm == nil {
				continue
			}
			if !nm.Full && nm.BaseVersion != s.version {
				t.Errorf("got delta from version %d, want from %d (last map received)", nm.BaseVersion, s.version)
			}
			if nm.Version <= s.version && !nm.Full {
				t.Errorf("got delta to version %d, want above %d", nm.Version, s.version)
			}
			s.version = nm.Version
			return nm
		case <-time.After(timeout):
			t.Fatalf("no map within %s", timeout)
		}
	}
}

// ticket returns the next relay ticket, skipping maps.
func (s *stream) ticket(t *testing.T) *api.RelayTicket {
	t.Helper()
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatalf("stream ended while waiting for a ticket: %v", <-s.done)
			}
			if rt := m.GetRelayTicket(); rt != nil {
				return rt
			}
		case <-time.After(timeout):
			t.Fatalf("no ticket within %s", timeout)
		}
	}
}

// waitFor returns the first map for which ok holds.
func (s *stream) waitFor(t *testing.T, what string, ok func(*api.NetworkMap) bool) *api.NetworkMap {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m := s.next(t); ok(m) {
			return m
		}
	}
	t.Fatalf("no map with %s within %s", what, timeout)
	return nil
}

// end waits for the stream to end and returns its error.
func (s *stream) end(t *testing.T) error {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-s.msgs:
			if !ok {
				return <-s.done
			}
		case <-deadline:
			t.Fatalf("stream did not end within %s", timeout)
		}
	}
}

func (s *stream) send(t *testing.T, m *api.ClientMessage) {
	t.Helper()
	if err := s.c.Send(m); err != nil {
		t.Fatalf("Send: %v", err)
	}
}

func peerByName(m *api.NetworkMap, name string) *api.Node {
	for _, p := range m.GetPeers() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func peerNames(m *api.NetworkMap) []string {
	var out []string
	for _, p := range m.GetPeers() {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

func TestJoin(t *testing.T) {
	// Every case starts from: node "taken" (100.64.0.1) joined with the
	// reusable token, node "used" (100.64.0.2) joined with the single-use
	// token, a revoked and an expiring token. The next free address is
	// 100.64.0.3.
	type fixture struct {
		reusable, single, revoked, expiring string
		taken                               *agent
	}
	replaceSecret := func(tok string) string {
		parts := strings.Split(tok, ".")
		parts[2] = strings.Repeat("0", 32)
		return strings.Join(parts, ".")
	}
	replaceID := func(tok string) string {
		parts := strings.Split(tok, ".")
		parts[1] = "ffffffff"
		return strings.Join(parts, ".")
	}
	manyRoutes := make([]string, maxRoutes+1)
	for i := range manyRoutes {
		manyRoutes[i] = fmt.Sprintf("10.%d.0.0/16", i)
	}
	fresh := func(f fixture, tok, name string, routes ...string) *api.JoinRequest {
		return &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: name, Hostname: "host", Routes: routes}
	}
	tests := []struct {
		name     string
		req      func(f fixture) *api.JoinRequest
		wantCode codes.Code
		wantAddr string // for accepted joins
		wantName string
		wantMsg  string // substring of a refusal's message
	}{
		{name: "good token", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "10.244.0.0/24") }, wantAddr: "100.64.0.3", wantName: "new"},
		{name: "name from hostname", req: func(f fixture) *api.JoinRequest {
			r := fresh(f, f.reusable, "")
			r.Hostname = "web-1"
			return r
		}, wantAddr: "100.64.0.3", wantName: "web-1"},
		{name: "token with whitespace", req: func(f fixture) *api.JoinRequest { return fresh(f, " "+f.reusable+"\n", "new") }, wantAddr: "100.64.0.3", wantName: "new"},
		{name: "re-join keeps address", req: func(f fixture) *api.JoinRequest {
			return &api.JoinRequest{Token: f.reusable, PublicKey: f.taken.key(), Name: "taken"}
		}, wantAddr: "100.64.0.1", wantName: "taken"},
		{name: "re-join with a new name", req: func(f fixture) *api.JoinRequest {
			return &api.JoinRequest{Token: f.reusable, PublicKey: f.taken.key(), Name: "renamed"}
		}, wantAddr: "100.64.0.1", wantName: "renamed"},

		{name: "malformed token", req: func(f fixture) *api.JoinRequest { return fresh(f, "ewt1.nope", "new") }, wantCode: codes.InvalidArgument, wantMsg: "malformed join token"},
		{name: "empty token", req: func(f fixture) *api.JoinRequest { return fresh(f, "", "new") }, wantCode: codes.InvalidArgument, wantMsg: "malformed"},
		{name: "unknown token id", req: func(f fixture) *api.JoinRequest { return fresh(f, replaceID(f.reusable), "new") }, wantCode: codes.PermissionDenied, wantMsg: "invalid join token"},
		{name: "wrong secret", req: func(f fixture) *api.JoinRequest { return fresh(f, replaceSecret(f.reusable), "new") }, wantCode: codes.PermissionDenied, wantMsg: "invalid join token"},
		{name: "wrong secret of a revoked token", req: func(f fixture) *api.JoinRequest { return fresh(f, replaceSecret(f.revoked), "new") }, wantCode: codes.PermissionDenied, wantMsg: "invalid join token"},
		{name: "revoked", req: func(f fixture) *api.JoinRequest { return fresh(f, f.revoked, "new") }, wantCode: codes.PermissionDenied, wantMsg: "revoked"},
		{name: "expired", req: func(f fixture) *api.JoinRequest { return fresh(f, f.expiring, "new") }, wantCode: codes.PermissionDenied, wantMsg: "expired"},
		{name: "used up", req: func(f fixture) *api.JoinRequest { return fresh(f, f.single, "new") }, wantCode: codes.PermissionDenied, wantMsg: "used up"},
		{name: "re-join with a used-up token", req: func(f fixture) *api.JoinRequest {
			return &api.JoinRequest{Token: f.single, PublicKey: f.taken.key(), Name: "taken"}
		}, wantCode: codes.PermissionDenied, wantMsg: "used up"},
		{name: "name taken by another key", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "taken") }, wantCode: codes.AlreadyExists, wantMsg: `"taken" is taken`},
		{name: "rename onto another node's name", req: func(f fixture) *api.JoinRequest {
			return &api.JoinRequest{Token: f.reusable, PublicKey: f.taken.key(), Name: "used"}
		}, wantCode: codes.AlreadyExists},
		{name: "upper-case name", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "Web1") }, wantCode: codes.InvalidArgument, wantMsg: "invalid node name"},
		{name: "name with dot", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "web.1") }, wantCode: codes.InvalidArgument, wantMsg: "invalid node name"},
		{name: "name with leading dash", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "-web") }, wantCode: codes.InvalidArgument, wantMsg: "invalid node name"},
		{name: "name too long", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, strings.Repeat("a", 64)) }, wantCode: codes.InvalidArgument, wantMsg: "invalid node name"},
		{name: "no name, bad hostname", req: func(f fixture) *api.JoinRequest {
			r := fresh(f, f.reusable, "")
			r.Hostname = "Web_1.local"
			return r
		}, wantCode: codes.InvalidArgument, wantMsg: "invalid node name"},
		{name: "no name, no hostname", req: func(f fixture) *api.JoinRequest {
			r := fresh(f, f.reusable, "")
			r.Hostname = ""
			return r
		}, wantCode: codes.InvalidArgument, wantMsg: "invalid node name"},
		{name: "unparsable route", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "10.0.0.0/33") }, wantCode: codes.InvalidArgument, wantMsg: "route"},
		{name: "route without length", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "10.0.0.0") }, wantCode: codes.InvalidArgument, wantMsg: "route"},
		{name: "unmasked route", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "10.1.2.3/16") }, wantCode: codes.InvalidArgument, wantMsg: "did you mean 10.1.0.0/16"},
		{name: "route inside the overlay", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "100.64.5.0/24") }, wantCode: codes.InvalidArgument, wantMsg: "overlaps the overlay prefix"},
		{name: "route around the overlay", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "100.0.0.0/8") }, wantCode: codes.InvalidArgument, wantMsg: "overlaps the overlay prefix"},
		{name: "default route", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "0.0.0.0/0") }, wantCode: codes.InvalidArgument, wantMsg: "special-purpose range"},
		{name: "routes overlap each other", req: func(f fixture) *api.JoinRequest {
			return fresh(f, f.reusable, "new", "192.168.0.0/24", "10.0.0.0/8", "10.1.0.0/16")
		}, wantCode: codes.InvalidArgument, wantMsg: "routes 10.0.0.0/8 and 10.1.0.0/16 overlap"},
		{name: "duplicate route", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", "10.0.0.0/8", "10.0.0.0/8") }, wantCode: codes.InvalidArgument, wantMsg: "overlap"},
		{name: "too many routes", req: func(f fixture) *api.JoinRequest { return fresh(f, f.reusable, "new", manyRoutes...) }, wantCode: codes.InvalidArgument, wantMsg: "at most 64"},
		{name: "short key", req: func(f fixture) *api.JoinRequest {
			r := fresh(f, f.reusable, "new")
			r.PublicKey = r.PublicKey[:31]
			return r
		}, wantCode: codes.InvalidArgument, wantMsg: "public key is 31 bytes, want 32"},
		{name: "no key", req: func(f fixture) *api.JoinRequest {
			r := fresh(f, f.reusable, "new")
			r.PublicKey = nil
			return r
		}, wantCode: codes.InvalidArgument, wantMsg: "public key is 0 bytes"},
		{name: "zero key", req: func(f fixture) *api.JoinRequest {
			r := fresh(f, f.reusable, "new")
			r.PublicKey = make([]byte, 32)
			return r
		}, wantCode: codes.InvalidArgument, wantMsg: "low-order"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			f := fixture{
				reusable: e.createToken(t, &api.CreateTokenRequest{Reusable: true, Tags: []string{"k8s"}}),
				single:   e.createToken(t, &api.CreateTokenRequest{}),
				revoked:  e.createToken(t, &api.CreateTokenRequest{Reusable: true}),
				expiring: e.createToken(t, &api.CreateTokenRequest{Reusable: true, TtlSeconds: 60}),
				taken:    newAgent(t),
			}
			if got := e.join(t, f.taken, "taken", f.reusable).Self.Addresses; !slices.Equal(got, []string{"100.64.0.1"}) {
				t.Fatalf("first join: got addresses %v, want [100.64.0.1]", got)
			}
			if got := e.join(t, newAgent(t), "used", f.single).Self.Addresses; !slices.Equal(got, []string{"100.64.0.2"}) {
				t.Fatalf("second join: got addresses %v, want [100.64.0.2]", got)
			}
			if _, err := e.admin.RevokeToken(ctxT(t), &api.RevokeTokenRequest{Id: f.revoked}); err != nil {
				t.Fatalf("RevokeToken: %v", err)
			}
			e.clock.Advance(time.Minute)

			before := e.snapshot(t)
			version := e.srv.Registry().Version()
			req := tt.req(f)
			resp, err := e.joinReq(ctxT(t), req)
			if got := code(err); got != tt.wantCode {
				t.Fatalf("got code %v (%v), want %v", got, err, tt.wantCode)
			}
			if tt.wantCode != codes.OK {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.wantMsg) {
					t.Errorf("got message %q, want it to contain %q", msg, tt.wantMsg)
				}
				if after := e.snapshot(t); !reflect.DeepEqual(after, before) {
					t.Errorf("refused join changed the store:\nbefore %+v\nafter  %+v", before, after)
				}
				if got := e.srv.Registry().Version(); got != version {
					t.Errorf("refused join moved the registry from version %d to %d", version, got)
				}
				// No address leaked: the next join gets the next address.
				got := e.join(t, newAgent(t), "after", f.reusable).Self.Addresses
				if want := []string{"100.64.0.3"}; !slices.Equal(got, want) {
					t.Errorf("join after the refusal: got addresses %v, want %v", got, want)
				}
				return
			}

			if got, want := resp.Self.Addresses, []string{tt.wantAddr}; !slices.Equal(got, want) {
				t.Errorf("got addresses %v, want %v", got, want)
			}
			if resp.Self.Name != tt.wantName || !bytes.Equal(resp.Self.PublicKey, req.PublicKey) {
				t.Errorf("got self %q %x, want %q %x", resp.Self.Name, resp.Self.PublicKey, tt.wantName, req.PublicKey)
			}
			if got, want := resp.OverlayPrefixes, []string{"100.64.0.0/10"}; !slices.Equal(got, want) {
				t.Errorf("got overlay prefixes %v, want %v", got, want)
			}
			after := e.snapshot(t)
			n, _, ok := e.srv.Registry().Node(key.Public(req.PublicKey))
			if !ok {
				t.Fatalf("joined node not in the registry")
			}
			if n.Name != tt.wantName || !slices.Equal(n.Tags, []string{"k8s"}) {
				t.Errorf("got registry node %q tags %v, want %q tags [k8s]", n.Name, n.Tags, tt.wantName)
			}
			var stored *store.Node
			for i := range after.Nodes {
				if after.Nodes[i].Key == key.Public(req.PublicKey) {
					stored = &after.Nodes[i]
				}
			}
			if stored == nil {
				t.Fatalf("joined node not in the store: %+v", after.Nodes)
			}
			if stored.Name != tt.wantName || stored.Addresses[0].String() != tt.wantAddr {
				t.Errorf("got stored node %q %v, want %q %s", stored.Name, stored.Addresses, tt.wantName, tt.wantAddr)
			}
			wantNodes := len(before.Nodes)
			if tt.wantAddr == "100.64.0.3" {
				wantNodes++
			}
			if len(after.Nodes) != wantNodes {
				t.Errorf("got %d nodes, want %d", len(after.Nodes), wantNodes)
			}
			for i, tok := range after.Tokens {
				want := before.Tokens[i].Uses
				if strings.Contains(f.reusable, "."+tok.ID+".") {
					want++
				}
				if tok.Uses != want {
					t.Errorf("token %s: got %d uses, want %d", tok.ID, tok.Uses, want)
				}
			}
		})
	}
}

func TestJoinDualStack(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Prefixes = append(c.Prefixes, netip.MustParsePrefix("fd7a:115c:a1e0::/48"))
	})
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	got := e.join(t, newAgent(t), "a", tok)
	if want := []string{"100.64.0.1", "fd7a:115c:a1e0::1"}; !slices.Equal(got.Self.Addresses, want) {
		t.Errorf("got addresses %v, want %v", got.Self.Addresses, want)
	}
	if _, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: "b", Routes: []string{"fd7a:115c:a1e0:1::/64"}}); code(err) != codes.InvalidArgument {
		t.Errorf("route inside the IPv6 overlay: got %v, want InvalidArgument", err)
	}
}

func TestJoinExhausted(t *testing.T) {
	tests := []struct {
		name     string
		prefixes []string
		joins    int // that succeed
	}{
		{"IPv4", []string{"100.64.0.0/30"}, 2},
		// The IPv4 address is allocated before the IPv6 pool runs dry
		// and must be given back.
		{"IPv6 runs out first", []string{"100.64.0.0/10", "fd7a:115c:a1e0::/126"}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				c.Prefixes = nil
				for _, p := range tt.prefixes {
					c.Prefixes = append(c.Prefixes, netip.MustParsePrefix(p))
				}
			})
			tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
			for i := 0; i < tt.joins; i++ {
				e.join(t, newAgent(t), fmt.Sprint("n", i), tok)
			}
			before := e.snapshot(t)
			var inUse []int
			for _, p := range e.srv.pools {
				inUse = append(inUse, p.InUse())
			}
			_, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: "last"})
			if code(err) != codes.ResourceExhausted {
				t.Fatalf("got %v, want ResourceExhausted", err)
			}
			if after := e.snapshot(t); !reflect.DeepEqual(after, before) {
				t.Errorf("refused join changed the store")
			}
			for i, p := range e.srv.pools {
				if got := p.InUse(); got != inUse[i] {
					t.Errorf("pool %s: got %d addresses in use, want %d", p.Prefix(), got, inUse[i])
				}
			}
		})
	}
}

// A restarted server reserves the stored addresses and keeps serving them.
func TestRestartKeepsAddresses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	prefixes := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}
	a, b := newAgent(t), newAgent(t)
	func() {
		st, err := store.OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		srv, err := New(context.Background(), Config{Store: st, Prefixes: prefixes})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.CreateToken(context.Background(), &api.CreateTokenRequest{Reusable: true})
		if err != nil {
			t.Fatal(err)
		}
		cl := api.NewControlClient(serve(t, srv))
		for i, ag := range []*agent{a, b} {
			if _, err := joinVia(ctxT(t), cl, &api.JoinRequest{Token: resp.Token, PublicKey: ag.key(), Name: fmt.Sprint("n", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}()
	st, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := New(context.Background(), Config{Store: st, Prefixes: prefixes})
	if err != nil {
		t.Fatalf("New after restart: %v", err)
	}
	if got := len(srv.Registry().Nodes()); got != 2 {
		t.Errorf("got %d nodes after restart, want 2", got)
	}
	resp, err := srv.CreateToken(context.Background(), &api.CreateTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	j, err := joinVia(ctxT(t), api.NewControlClient(serve(t, srv)), &api.JoinRequest{Token: resp.Token, PublicKey: newAgent(t).key(), Name: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"100.64.0.3"}; !slices.Equal(j.Self.Addresses, want) {
		t.Errorf("got addresses %v after restart, want %v", j.Self.Addresses, want)
	}
}

func TestNewConfig(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no store", Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}}, "no store"},
		{"no prefix", Config{Store: st}, "no overlay prefix"},
		{"two IPv4 prefixes", Config{Store: st, Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("10.0.0.0/8")}}, "one prefix per address family"},
		{"unmasked prefix", Config{Store: st, Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/10")}}, "host bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestConnectRefused(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, a, "a", tok)
	stranger := newAgent(t)
	garbage := func(*api.Challenge) *api.AuthProof { return &api.AuthProof{Mac: bytes.Repeat([]byte{7}, 32)} }
	// A proof made for Join does not open a Connect stream.
	joinProof := func(ch *api.Challenge) *api.AuthProof {
		p, _ := api.Prove(a.priv, ch, api.AuthJoin, nil, nil)
		return p
	}
	// Nor one bound to another TLS session.
	otherSession := func(ch *api.Challenge) *api.AuthProof {
		p, _ := api.Prove(a.priv, ch, api.AuthConnect, bytes.Repeat([]byte{1}, 32), nil)
		return p
	}
	tooMany := make([]string, defaultMaxEndpoints+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("192.0.2.%d:51820", i+1)
	}

	tests := []struct {
		name     string
		hello    *api.Hello
		answer   func(*api.Challenge) *api.AuthProof
		wantCode codes.Code
	}{
		{"garbage proof", hello(a), garbage, codes.Unauthenticated},
		{"empty proof", hello(a), func(*api.Challenge) *api.AuthProof { return nil }, codes.Unauthenticated},
		{"echoes the nonce", hello(a), func(ch *api.Challenge) *api.AuthProof { return &api.AuthProof{Mac: ch.Nonce} }, codes.Unauthenticated},
		{"proof made for Join", hello(a), joinProof, codes.Unauthenticated},
		{"proof bound to another TLS session", hello(a), otherSession, codes.Unauthenticated},
		{"opened by another key", hello(a), stranger.prove, codes.Unauthenticated},
		{"unregistered key", hello(stranger), stranger.prove, codes.PermissionDenied},
		{"bad key", &api.Hello{PublicKey: []byte{1, 2, 3}, ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1}, nil, codes.InvalidArgument},
		// A key of small order needs no private key to prove: whoever
		// sends one is refused before any challenge.
		{"low-order key", &api.Hello{PublicKey: lowOrderKey(), ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1}, nil, codes.InvalidArgument},
		{"hostname too long", &api.Hello{PublicKey: a.key(), ProtocolVersion: api.ProtocolVersion_PROTOCOL_VERSION_1, Hostname: strings.Repeat("h", maxHostname+1)}, nil, codes.InvalidArgument},
		{"no protocol version", &api.Hello{PublicKey: a.key()}, nil, codes.FailedPrecondition},
		{"endpoint without port", hello(a, "192.0.2.1"), nil, codes.InvalidArgument},
		{"endpoint port 0", hello(a, "192.0.2.1:0"), nil, codes.InvalidArgument},
		{"unspecified endpoint", hello(a, "0.0.0.0:51820"), nil, codes.InvalidArgument},
		{"hostname endpoint", hello(a, "example.com:51820"), nil, codes.InvalidArgument},
		{"one bad endpoint among good", hello(a, "192.0.2.1:51820", "[::]:51820"), nil, codes.InvalidArgument},
		{"too many endpoints", hello(a, tooMany...), nil, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answer := tt.answer
			if answer == nil {
				answer = func(*api.Challenge) *api.AuthProof {
					t.Errorf("got a challenge, want the Hello refused")
					return nil
				}
			}
			c, cancel := e.handshake(t, tt.hello, answer)
			defer cancel()
			m, err := c.Recv()
			for err == nil {
				if m.GetMap() != nil {
					t.Fatalf("got a network map, want the stream refused with %v", tt.wantCode)
				}
				m, err = c.Recv()
			}
			if got := code(err); got != tt.wantCode {
				t.Errorf("got %v, want %v", err, tt.wantCode)
			}
			if _, online, _ := e.srv.Registry().Node(key.Public(a.pub)); online {
				t.Errorf("node online after a refused stream")
			}
		})
	}

	t.Run("first message not Hello", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := e.control.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Send(&api.ClientMessage{Msg: &api.ClientMessage_MapRequest{MapRequest: &api.MapRequest{}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Recv(); code(err) != codes.InvalidArgument {
			t.Errorf("got %v, want InvalidArgument", err)
		}
	})
	// The authentication timeout runs on the server's clock: the
	// tests wait until the server waits, then move time past it.
	t.Run("silent client times out", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := e.control.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		e.waitTimers(t, 1)
		e.clock.Advance(e.srv.cfg.AuthTimeout)
		if _, err := c.Recv(); code(err) != codes.DeadlineExceeded {
			t.Errorf("got %v, want DeadlineExceeded from the server's auth timeout", err)
		}
	})
	t.Run("no proof times out", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c2, err := e.control.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c2.Send(&api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: hello(a)}}); err != nil {
			t.Fatal(err)
		}
		if m, err := c2.Recv(); err != nil || m.GetChallenge() == nil {
			t.Fatalf("got %v, %v; want a challenge", m, err)
		}
		e.waitTimers(t, 1) // the wait for the proof
		e.clock.Advance(e.srv.cfg.AuthTimeout)
		if _, err := c2.Recv(); code(err) != codes.DeadlineExceeded {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
	})
}

func TestConnectMapFlow(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true, Routes: []string{"10.244.0.0/16"}})
	a, b, c := newAgent(t), newAgent(t), newAgent(t)
	e.join(t, a, "a", tok)
	e.join(t, b, "b", tok, "10.244.2.0/24")
	e.join(t, c, "c", tok)

	sa := e.connect(t, a, "192.0.2.1:51820")
	m := sa.next(t)
	if !m.Full {
		t.Fatalf("first map: got Full=false, want a full map")
	}
	// Peers list every node, self included: the list is shared by all
	// streams, and agents skip their own key.
	if got, want := peerNames(m), []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("got peers %v, want %v", got, want)
	}
	if m.Self.GetName() != "a" || !m.Self.Online || !slices.Equal(m.Self.Endpoints, []string{"192.0.2.1:51820"}) {
		t.Errorf("got self %v, want a, online, endpoints [192.0.2.1:51820]", m.Self)
	}
	if pb := peerByName(m, "b"); pb.Online || !slices.Equal(pb.Routes, []string{"10.244.2.0/24"}) || !slices.Equal(pb.Addresses, []string{"100.64.0.2"}) {
		t.Errorf("got peer b %v, want offline with route 10.244.2.0/24 and address 100.64.0.2", pb)
	}
	if got, want := m.OverlayPrefixes, []string{"100.64.0.0/10"}; !slices.Equal(got, want) {
		t.Errorf("got overlay prefixes %v, want %v", got, want)
	}

	t.Run("join reaches connected node as delta", func(t *testing.T) {
		d := newAgent(t)
		e.join(t, d, "d", tok)
		// The first map may have been labelled with an older published
		// version than its content, so a delta may repeat a, b and c.
		m := sa.waitFor(t, "d", func(m *api.NetworkMap) bool { return peerByName(m, "d") != nil })
		if m.Full {
			t.Fatalf("got a full map, want a delta")
		}
	})

	sb := e.connect(t, b, "198.51.100.2:41641")
	sb.next(t)
	t.Run("peer connect reaches connected node", func(t *testing.T) {
		m := sa.waitFor(t, "b online", func(m *api.NetworkMap) bool { return peerByName(m, "b").GetOnline() })
		if m.Full {
			t.Errorf("got a full map, want a delta")
		}
		if got, want := peerByName(m, "b").Endpoints, []string{"198.51.100.2:41641"}; !slices.Equal(got, want) {
			t.Errorf("got endpoints %v, want %v", got, want)
		}
	})

	t.Run("endpoint update reaches the other node", func(t *testing.T) {
		sb.send(t, &api.ClientMessage{Msg: &api.ClientMessage_Endpoints{Endpoints: &api.EndpointUpdate{
			Endpoints: []string{"198.51.100.2:41641", "[2001:db8::2]:41641"},
		}}})
		m := sa.waitFor(t, "b's new endpoints", func(m *api.NetworkMap) bool { return len(peerByName(m, "b").GetEndpoints()) == 2 })
		if m.Full {
			t.Errorf("got a full map, want a delta")
		}
		if got, want := peerByName(m, "b").Endpoints, []string{"198.51.100.2:41641", "[2001:db8::2]:41641"}; !slices.Equal(got, want) {
			t.Errorf("got endpoints %v, want %v", got, want)
		}
		// b's own stream sees itself change.
		mb := sb.waitFor(t, "self endpoints", func(m *api.NetworkMap) bool { return len(m.GetSelf().GetEndpoints()) == 2 })
		if mb.Full {
			t.Errorf("b: got a full map, want a delta")
		}
	})

	t.Run("map request gives full map", func(t *testing.T) {
		sa.send(t, &api.ClientMessage{Msg: &api.ClientMessage_MapRequest{MapRequest: &api.MapRequest{}}})
		m := sa.waitFor(t, "a full map", func(m *api.NetworkMap) bool { return m.Full })
		if got, want := peerNames(m), []string{"a", "b", "c", "d"}; !slices.Equal(got, want) {
			t.Errorf("got peers %v, want %v", got, want)
		}
		if m.Version != e.srv.Registry().Version() {
			t.Errorf("got version %d, want %d", m.Version, e.srv.Registry().Version())
		}
	})

	t.Run("disconnect reaches the other node", func(t *testing.T) {
		sc := e.connect(t, c)
		sc.next(t)
		sa.waitFor(t, "c online", func(m *api.NetworkMap) bool { return peerByName(m, "c").GetOnline() })
		e.clock.Advance(time.Hour)
		sc.cancel()
		m := sa.waitFor(t, "c offline", func(m *api.NetworkMap) bool {
			p := peerByName(m, "c")
			return p != nil && !p.Online
		})
		// Maps leave last-seen to admins: every node would pay for it.
		if got := peerByName(m, "c").LastSeenUnixMs; got != 0 {
			t.Errorf("got last seen %d in a map entry, want none", got)
		}
		nodes, err := e.admin.ListNodes(ctxT(t), &api.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes.GetNodes() {
			if n.GetName() == "c" && n.GetLastSeenUnixMs() != t0.Add(time.Hour).UnixMilli() {
				t.Errorf("ListNodes: got c last seen %d, want %d", n.GetLastSeenUnixMs(), t0.Add(time.Hour).UnixMilli())
			}
		}
		// Last-seen is persisted.
		deadline := time.Now().Add(timeout)
		for {
			var n store.Node
			err := e.store.View(context.Background(), func(tx store.Tx) error {
				var err error
				n, err = tx.Node(key.Public(c.pub))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if n.LastSeen.Equal(t0.Add(time.Hour)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("got stored last seen %v, want %v", n.LastSeen, t0.Add(time.Hour))
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("delete node", func(t *testing.T) {
		if _, err := e.admin.DeleteNode(ctxT(t), &api.DeleteNodeRequest{Name: "b"}); err != nil {
			t.Fatalf("DeleteNode: %v", err)
		}
		m := sa.waitFor(t, "b removed", func(m *api.NetworkMap) bool { return len(m.Removed) > 0 })
		if m.Full {
			t.Errorf("got a full map, want a delta")
		}
		if len(m.Removed) != 1 || !bytes.Equal(m.Removed[0], b.pub[:]) {
			t.Errorf("got removed %x, want [%x]", m.Removed, b.pub)
		}
		if err := sb.end(t); code(err) != codes.NotFound {
			t.Errorf("deleted node's stream: got %v, want NotFound", err)
		}
		if _, _, ok := e.srv.Registry().Node(key.Public(b.pub)); ok {
			t.Errorf("deleted node still in the registry")
		}
		// The deleted node cannot reconnect.
		c, cancel := e.handshake(t, hello(b), b.prove)
		defer cancel()
		if _, err := c.Recv(); code(err) != codes.PermissionDenied {
			t.Errorf("reconnect of a deleted node: got %v, want PermissionDenied", err)
		}
		if _, err := e.admin.DeleteNode(ctxT(t), &api.DeleteNodeRequest{Name: "b"}); code(err) != codes.NotFound {
			t.Errorf("second DeleteNode: got %v, want NotFound", err)
		}
	})

	t.Run("bad endpoint update ends the stream", func(t *testing.T) {
		sd := e.connect(t, c)
		sd.next(t)
		sd.send(t, &api.ClientMessage{Msg: &api.ClientMessage_Endpoints{Endpoints: &api.EndpointUpdate{Endpoints: []string{"nope"}}}})
		if err := sd.end(t); code(err) != codes.InvalidArgument {
			t.Errorf("got %v, want InvalidArgument", err)
		}
	})
}

// A burst of joins reaches a connected node as a chain of deltas (the
// stream helper checks each base version) that together list every node.
// That the burst is coalesced is shown in package netmap, where timing is
// under the test's control.
func TestConnectBurstArrivesComplete(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, a, "a", tok)
	sa := e.connect(t, a)
	sa.next(t)
	const n = 50
	for i := 0; i < n; i++ {
		if _, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tok, PublicKey: newAgent(t).key(), Name: fmt.Sprintf("n%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	maps := 0
	for len(seen) < n {
		m := sa.next(t)
		maps++
		for _, p := range m.Peers {
			seen[p.Name] = true
		}
	}
	if maps > n {
		t.Errorf("got %d maps for %d joins, want at most one per join", maps, n)
	}
	// A delta may carry an entry newer than its version (entries are read
	// when first marshalled); the next one brings the version up.
	for deadline := time.Now().Add(timeout); sa.version < e.srv.Registry().Version() && time.Now().Before(deadline); {
		sa.next(t)
	}
	if m := sa.version; m != e.srv.Registry().Version() {
		t.Errorf("got last version %d, want %d", m, e.srv.Registry().Version())
	}
}

// The map's publication interval (MapInterval, plus MapIntervalPerStream
// for every stream) runs on the server's clock: with a burst of one,
// changes right after a publication are held until the interval has
// passed and arrive together; a change after an idle interval goes out
// at once.
func TestMapInterval(t *testing.T) {
	const interval, perStream = time.Second, time.Millisecond
	e := newEnv(t, func(c *Config) { c.MapInterval, c.MapIntervalPerStream, c.MapBurst = interval, perStream, 1 })
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, a, "a", tok) // published at once: nothing was before
	sa := e.connect(t, a)  // a online: held, the join was just published
	// The first map is built when it is sent: it has a online already,
	// although the publication of that is held.
	if m := sa.next(t); !m.Full || !peerByName(m, "a").GetOnline() {
		t.Fatalf("first map: full=%v, a online=%v; want a full map with a online", m.Full, peerByName(m, "a").GetOnline())
	}
	// held moves the clock to a nanosecond before the held publication is
	// due, checks that it is still pending, then moves the last nanosecond.
	held := func(what string, wait time.Duration) {
		t.Helper()
		e.clock.Advance(wait - time.Nanosecond)
		if n := e.clock.Timers(); n != 1 {
			t.Fatalf("%s: got %d timers a nanosecond before the interval ends, want the publication's", what, n)
		}
		e.clock.Advance(time.Nanosecond)
	}

	e.join(t, newAgent(t), "b", tok)
	held("b joined", interval) // scheduled before a's stream subscribed
	m := sa.waitFor(t, "b", func(m *api.NetworkMap) bool { return peerByName(m, "b") != nil })
	if m.Full {
		t.Error("got a full map, want a delta with b")
	}

	e.join(t, newAgent(t), "c", tok)
	held("c joined", interval+perStream) // one stream now
	sa.waitFor(t, "c", func(m *api.NetworkMap) bool { return peerByName(m, "c") != nil })

	e.clock.Advance(2 * interval)
	e.join(t, newAgent(t), "d", tok)
	sa.waitFor(t, "d, at once", func(m *api.NetworkMap) bool { return peerByName(m, "d") != nil })
}

// By default the few changes of one event go out as they happen: a
// node's join and connection and the next two joins are published at
// once (a burst of four), the fifth change waits for the interval.
func TestMapBurst(t *testing.T) {
	const interval = time.Second
	e := newEnv(t, func(c *Config) { c.MapInterval = interval })
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, a, "a", tok)
	sa := e.connect(t, a)
	if m := sa.next(t); !m.Full || !peerByName(m, "a").GetOnline() {
		t.Fatalf("first map: full=%v, a online=%v; want a full map with a online", m.Full, peerByName(m, "a").GetOnline())
	}
	for _, name := range []string{"b", "c"} {
		e.join(t, newAgent(t), name, tok)
		sa.waitFor(t, name+", at once", func(m *api.NetworkMap) bool { return peerByName(m, name) != nil })
	}
	e.join(t, newAgent(t), "d", tok)
	if n := e.clock.Timers(); n != 1 {
		t.Fatalf("after the fifth change: got %d timers, want the held publication's", n)
	}
	e.clock.Advance(interval)
	sa.waitFor(t, "d, an interval later", func(m *api.NetworkMap) bool { return peerByName(m, "d") != nil })
}

// Relay tickets are renewed at half their lifetime on the server's
// clock, each valid for a whole lifetime from when it was signed.
func TestTicketRenewal(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 10 * time.Minute
	e := newEnv(t, func(c *Config) { c.TicketKey, c.TicketTTL = priv, ttl })
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, a, "a", tok)
	sa := e.connect(t, a)
	for i := range 3 {
		if i > 0 {
			e.clock.Advance(ttl/2 - time.Nanosecond)
			if n := e.clock.Timers(); n != 1 {
				t.Fatalf("renewal %d: got %d timers a nanosecond before it is due, want the renewal's", i, n)
			}
			e.clock.Advance(time.Nanosecond)
		}
		rt := sa.ticket(t)
		want := t0.Add(time.Duration(i) * ttl / 2).Add(ttl)
		tk, err := relay.VerifyTicket(pub, rt.GetTicket(), e.clock.Now())
		if err != nil {
			t.Fatalf("ticket %d: %v", i, err)
		}
		if tk.Node != a.pub || !tk.Expires.Equal(want) || rt.GetExpiresUnix() != want.Unix() {
			t.Errorf("ticket %d: got node %v expiring %v (announced %d), want %v expiring %v", i, tk.Node, tk.Expires.UTC(), rt.GetExpiresUnix(), a.pub, want)
		}
	}
}

func TestAdminTokens(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	r1, err := e.admin.CreateToken(ctx, &api.CreateTokenRequest{TtlSeconds: 3600, Tags: []string{"k8s", "edge"}})
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	r2, err := e.admin.CreateToken(ctx, &api.CreateTokenRequest{Reusable: true})
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	r3, err := e.admin.CreateToken(ctx, &api.CreateTokenRequest{Uses: 5})
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if !strings.HasPrefix(r1.Token, "ewt1."+r1.Info.Id+".") {
		t.Errorf("got token %q, want it to start with ewt1.%s.", r1.Token, r1.Info.Id)
	}
	if !strings.HasSuffix(r1.Token, "."+jointoken.FormatPin([32]byte{0xca})) {
		t.Errorf("got token %q, want it to end with the configured CA pin", r1.Token)
	}
	wantInfo := map[string]*api.TokenInfo{
		r1.Info.Id: {Id: r1.Info.Id, CreatedUnix: t0.Unix(), ExpiresUnix: t0.Add(time.Hour).Unix(), MaxUses: 1, Tags: []string{"k8s", "edge"}},
		r2.Info.Id: {Id: r2.Info.Id, CreatedUnix: t0.Unix(), Reusable: true},
		r3.Info.Id: {Id: r3.Info.Id, CreatedUnix: t0.Unix(), MaxUses: 5},
	}
	list := func() map[string]*api.TokenInfo {
		t.Helper()
		resp, err := e.admin.ListTokens(ctx, &api.ListTokensRequest{})
		if err != nil {
			t.Fatalf("ListTokens: %v", err)
		}
		out := map[string]*api.TokenInfo{}
		for _, ti := range resp.Tokens {
			out[ti.Id] = ti
		}
		return out
	}
	got := list()
	if len(got) != len(wantInfo) {
		t.Fatalf("got %d tokens, want %d", len(got), len(wantInfo))
	}
	for id, want := range wantInfo {
		g := got[id]
		if g == nil || g.CreatedUnix != want.CreatedUnix || g.ExpiresUnix != want.ExpiresUnix || g.Reusable != want.Reusable ||
			g.MaxUses != want.MaxUses || g.Uses != 0 || g.Revoked || !slices.Equal(g.Tags, want.Tags) {
			t.Errorf("token %s: got %v, want %v", id, g, want)
		}
	}

	// Revoke by id and by whole token.
	if _, err := e.admin.RevokeToken(ctx, &api.RevokeTokenRequest{Id: r1.Info.Id}); err != nil {
		t.Fatalf("RevokeToken by id: %v", err)
	}
	if _, err := e.admin.RevokeToken(ctx, &api.RevokeTokenRequest{Id: r2.Token}); err != nil {
		t.Fatalf("RevokeToken by token: %v", err)
	}
	got = list()
	for id, want := range map[string]bool{r1.Info.Id: true, r2.Info.Id: true, r3.Info.Id: false} {
		if got[id].GetRevoked() != want {
			t.Errorf("token %s: got revoked=%v, want %v", id, got[id].GetRevoked(), want)
		}
	}
	if _, err := e.joinReq(ctx, &api.JoinRequest{Token: r2.Token, PublicKey: newAgent(t).key(), Name: "x"}); code(err) != codes.PermissionDenied {
		t.Errorf("join with a revoked token: got %v, want PermissionDenied", err)
	}
	// Joining counts a use.
	e.join(t, newAgent(t), "y", r3.Token)
	if got := list()[r3.Info.Id].GetUses(); got != 1 {
		t.Errorf("got %d uses, want 1", got)
	}

	for _, id := range []string{"ffffffff", "", "ewt1.ffffffff." + strings.Repeat("0", 32) + "." + jointoken.FormatPin([32]byte{0xca})} {
		if _, err := e.admin.RevokeToken(ctx, &api.RevokeTokenRequest{Id: id}); code(err) != codes.NotFound {
			t.Errorf("RevokeToken(%q): got %v, want NotFound", id, err)
		}
	}
}

func TestCreateTokenInvalid(t *testing.T) {
	tags := make([]string, maxTokenTags+1)
	for i := range tags {
		tags[i] = fmt.Sprint("t", i)
	}
	tests := []struct {
		name string
		req  *api.CreateTokenRequest
	}{
		{"reusable with uses", &api.CreateTokenRequest{Reusable: true, Uses: 3}},
		{"negative uses", &api.CreateTokenRequest{Uses: -1}},
		{"negative ttl", &api.CreateTokenRequest{TtlSeconds: -5}},
		{"ttl overflowing a duration", &api.CreateTokenRequest{TtlSeconds: 1 << 62}},
		{"ttl wrapping to a short positive duration", &api.CreateTokenRequest{TtlSeconds: 18446744074}},
		{"ttl just past the largest duration", &api.CreateTokenRequest{TtlSeconds: maxTokenTTLSeconds + 1}},
		{"bad tag", &api.CreateTokenRequest{Tags: []string{"Not OK"}}},
		{"too many tags", &api.CreateTokenRequest{Tags: tags}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			resp, err := e.admin.CreateToken(ctxT(t), tt.req)
			if code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, %v; want InvalidArgument", resp, err)
			}
			if got := e.snapshot(t).Tokens; len(got) != 0 {
				t.Errorf("got %d stored tokens after a refusal, want 0", len(got))
			}
		})
	}
}

func TestListNodes(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, newAgent(t), "zeta", tok)
	e.join(t, a, "alpha", tok)
	e.connect(t, a).next(t)
	resp, err := e.admin.ListNodes(ctxT(t), &api.ListNodesRequest{})
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	var got []string
	for _, n := range resp.Nodes {
		got = append(got, fmt.Sprintf("%s online=%v", n.Name, n.Online))
	}
	if want := []string{"alpha online=true", "zeta online=false"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestAgentVersion: the version an agent reports in Hello reaches its
// peers' maps and ListNodes, follows an upgrade, stays while the node is
// offline, and one the coordinator cannot show is recorded as none
// without refusing the node.
func TestAgentVersion(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a, b := newAgent(t), newAgent(t)
	e.join(t, a, "a", tok)
	e.join(t, b, "b", tok)
	withVersion := func(ag *agent, v string) *api.Hello {
		h := hello(ag, "192.0.2.9:51820")
		h.Version = v
		return h
	}
	listed := func(t *testing.T, name string) string {
		t.Helper()
		resp, err := e.admin.ListNodes(ctxT(t), &api.ListNodesRequest{})
		if err != nil {
			t.Fatalf("ListNodes: %v", err)
		}
		for _, n := range resp.GetNodes() {
			if n.GetName() == name {
				return n.GetVersion()
			}
		}
		t.Fatalf("ListNodes: no node %s", name)
		return ""
	}

	sa := e.connectHello(t, a, withVersion(a, "v1.4.0-3-g1a2b3c4"))
	if m := sa.next(t); m.GetSelf().GetVersion() != "v1.4.0-3-g1a2b3c4" {
		t.Errorf("self: got version %q, want v1.4.0-3-g1a2b3c4", m.GetSelf().GetVersion())
	}
	if got := listed(t, "a"); got != "v1.4.0-3-g1a2b3c4" {
		t.Errorf("ListNodes a: got version %q, want v1.4.0-3-g1a2b3c4", got)
	}
	if got := listed(t, "b"); got != "" {
		t.Errorf("ListNodes b (never connected): got version %q, want none", got)
	}

	for _, tc := range []struct {
		name, sent, want string
	}{
		{"reported", "v1.4.0", "v1.4.0"},
		{"upgraded", "v1.5.0", "v1.5.0"},
		{"longest", strings.Repeat("v", api.MaxVersionLen), strings.Repeat("v", api.MaxVersionLen)},
		{"too long", strings.Repeat("v", api.MaxVersionLen+1), ""},
		{"escape sequence", "v1\x1b[2J", ""},
		{"newline", "v1\nlevel=ERROR", ""},
		{"space", "v1 beta", ""},
		{"not ASCII", "v1.0-é", ""},
		{"none", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb := e.connectHello(t, b, withVersion(b, tc.sent))
			if m := sb.next(t); m.GetSelf().GetVersion() != tc.want {
				t.Errorf("self: got version %q, want %q", m.GetSelf().GetVersion(), tc.want)
			}
			sa.waitFor(t, "b's version", func(m *api.NetworkMap) bool {
				pb := peerByName(m, "b")
				return pb.GetOnline() && pb.GetVersion() == tc.want
			})
			if got := listed(t, "b"); got != tc.want {
				t.Errorf("ListNodes: got version %q, want %q", got, tc.want)
			}
			sb.cancel()
			sa.waitFor(t, "b offline", func(m *api.NetworkMap) bool { return peerByName(m, "b") != nil && !peerByName(m, "b").GetOnline() })
			if got := listed(t, "b"); got != tc.want {
				t.Errorf("ListNodes after b left: got version %q, want %q (the last reported)", got, tc.want)
			}
		})
	}
}

func TestAdminAuth(t *testing.T) {
	adminTok, err := NewAdminToken()
	if err != nil {
		t.Fatal(err)
	}
	unary, streamI := AdminAuth(AdminTokenHash(adminTok))
	e := newEnv(t, nil, grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(streamI))

	tests := []struct {
		name     string
		md       []string // key, value pairs
		wantCode codes.Code
	}{
		{"no metadata", nil, codes.Unauthenticated},
		{"wrong token", []string{"authorization", "Bearer ewadm1.00"}, codes.Unauthenticated},
		{"right token without Bearer", []string{"authorization", adminTok}, codes.Unauthenticated},
		{"lower-case bearer", []string{"authorization", "bearer " + adminTok}, codes.Unauthenticated},
		{"token in another header", []string{"x-admin", "Bearer " + adminTok}, codes.Unauthenticated},
		{"right token", []string{"authorization", "Bearer " + adminTok}, codes.OK},
		{"right token among wrong ones", []string{"authorization", "Bearer nope", "authorization", "Bearer " + adminTok}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			if tt.md != nil {
				ctx = metadataCtx(ctx, tt.md...)
			}
			_, err := e.admin.ListTokens(ctx, &api.ListTokensRequest{})
			if got := code(err); got != tt.wantCode {
				t.Errorf("ListTokens: got %v, want %v", err, tt.wantCode)
			}
			_, err = e.admin.CreateToken(ctx, &api.CreateTokenRequest{})
			if got := code(err); got != tt.wantCode {
				t.Errorf("CreateToken: got %v, want %v", err, tt.wantCode)
			}
		})
	}

	t.Run("control methods pass without a token", func(t *testing.T) {
		// The handler runs and refuses for its own reason.
		_, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: "bad"})
		if code(err) != codes.InvalidArgument {
			t.Errorf("Join: got %v, want InvalidArgument from the handler", err)
		}
		c, cancel := e.handshake(t, hello(newAgent(t)), newAgent(t).prove)
		defer cancel()
		if _, err := c.Recv(); code(err) != codes.PermissionDenied {
			t.Errorf("Connect: got %v, want PermissionDenied from the handler", err)
		}
	})
	t.Run("control methods work end to end", func(t *testing.T) {
		resp, err := e.admin.CreateToken(metadataCtx(ctxT(t), "authorization", "Bearer "+adminTok), &api.CreateTokenRequest{})
		if err != nil {
			t.Fatalf("CreateToken: %v", err)
		}
		a := newAgent(t)
		e.join(t, a, "a", resp.Token)
		if m := e.connect(t, a).next(t); !m.Full {
			t.Errorf("got Full=false, want a full map")
		}
	})
}

func TestAdminToken(t *testing.T) {
	a, err := NewAdminToken()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewAdminToken()
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Errorf("got the same admin token twice: %q", a)
	}
	if !strings.HasPrefix(a, "ewadm1.") || len(a) != len("ewadm1.")+48 {
		t.Errorf("got %q, want ewadm1. and 48 hex chars", a)
	}
	if AdminTokenHash(a) == AdminTokenHash(b) {
		t.Errorf("two tokens hash alike")
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"web-1", true},
		{"0", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"-a", false},
		{"a-", false},
		{"A", false},
		{"a.b", false},
		{"a_b", false},
		{"a b", false},
		{"é", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.name), func(t *testing.T) {
			if err := ValidName(tt.name); (err == nil) != tt.ok {
				t.Errorf("got %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// lowOrderKey is a Curve25519 point of order 8 (from the list libsodium
// blocks): X25519 with it gives all zeros for every private key.
func lowOrderKey() []byte {
	return []byte{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00}
}
