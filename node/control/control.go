// Package control is the agent's side of the coordinator protocol: joining
// with a token, and one long-lived authenticated stream that receives the
// network map and reports the node's endpoints. The stream reconnects with
// exponential backoff and jitter for as long as the agent runs.
package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// ErrRefused marks a join or update the coordinator refused (bad token,
// name taken, bad routes): retrying the same request will not help.
var ErrRefused = errors.New("refused")

// JoinRequest is what Join needs.
type JoinRequest struct {
	Coordinator string // host:port
	ServerName  string // TLS name; empty: jointoken.ServerName
	Token       string
	PrivateKey  key.Private
	Name        string
	Hostname    string
	Routes      []netip.Prefix
	// KubernetesToken is a projected service account token proving which
	// Kubernetes Node the agent runs on (DaemonSet agents); empty: none.
	KubernetesToken string
	// Dial connects to the coordinator (nil: a plain TCP dial); the agent
	// marks the socket so overlay routes cannot capture it.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Addrs splits a coordinator address: host:port, or several of them
// separated by commas (coordinator replicas; whichever answers serves).
func Addrs(s string) ([]string, error) {
	var out []string
	for _, hp := range strings.Split(s, ",") {
		hp = strings.TrimSpace(hp)
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("coordinator address %q: want host:port (several separated by commas)", hp)
		}
		if !slices.Contains(out, hp) {
			out = append(out, hp)
		}
	}
	return out, nil
}

// Target returns the gRPC target and options that reach a coordinator
// address (Addrs). Several addresses are tried in order (pick_first):
// standby replicas do not listen, so a connection lands on the leader.
func Target(s string) (string, []grpc.DialOption, error) {
	addrs, err := Addrs(s)
	if err != nil {
		return "", nil, err
	}
	if len(addrs) == 1 {
		return addrs[0], nil, nil
	}
	r := manual.NewBuilderWithScheme("edgewire")
	var st resolver.State
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(st)
	return "edgewire:///coordinators", []grpc.DialOption{grpc.WithResolvers(r)}, nil
}

// Join registers the node and returns its enrolment (with the pinned CA).
func Join(ctx context.Context, req JoinRequest) (identity.Enrolment, *api.JoinResponse, error) {
	tok, err := jointoken.Parse(req.Token)
	if err != nil {
		return identity.Enrolment{}, nil, err
	}
	if req.ServerName == "" {
		req.ServerName = jointoken.ServerName
	}
	var ca *x509.Certificate
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(jointoken.PinnedConfig(tok.CAPin, req.ServerName, &ca)))}
	if req.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(req.Dial))
	}
	target, topts, err := Target(req.Coordinator)
	if err != nil {
		return identity.Enrolment{}, nil, err
	}
	conn, err := grpc.NewClient(target, append(opts, topts...)...)
	if err != nil {
		return identity.Enrolment{}, nil, fmt.Errorf("connect to %s: %w", req.Coordinator, err)
	}
	defer conn.Close()
	jr := &api.JoinRequest{Token: req.Token, Name: req.Name, Hostname: req.Hostname, KubernetesToken: req.KubernetesToken, Routes: RouteStrings(req.Routes)}
	resp, err := join(ctx, api.NewControlClient(conn), req.PrivateKey, req.Hostname, jr)
	if err != nil {
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Internal:
			return identity.Enrolment{}, nil, fmt.Errorf("join %s: %s", req.Coordinator, describe(err))
		}
		return identity.Enrolment{}, nil, fmt.Errorf("join %w by %s: %s", ErrRefused, req.Coordinator, describe(err))
	}
	if ca == nil {
		return identity.Enrolment{}, nil, errors.New("join: TLS handshake did not pin a CA")
	}
	e := identity.Enrolment{
		Coordinator: req.Coordinator,
		ServerName:  req.ServerName,
		CAPEM:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})),
		Name:        resp.GetSelf().GetName(),
		Advertised:  RouteStrings(req.Routes),
	}
	return e, resp, nil
}

// RouteStrings is routes in CIDR notation, never nil (an enrolment tells
// "no routes" from "not known" by it).
func RouteStrings(routes []netip.Prefix) []string {
	out := make([]string, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.String())
	}
	return out
}

// join runs the Join stream: the key proof, then the request.
func join(ctx context.Context, cl api.ControlClient, priv key.Private, hostname string, jr *api.JoinRequest) (*api.JoinResponse, error) {
	return oneShot(ctx, cl.Join, priv, api.AuthJoin, hostname, &api.ClientMessage{Msg: &api.ClientMessage_Join{Join: jr}})
}

// oneShot runs a Join or Update stream: open it, prove the node key for
// method, send req and read the JoinResponse that ends it.
func oneShot(ctx context.Context, open func(context.Context, ...grpc.CallOption) (api.Control_JoinClient, error), priv key.Private,
	method, hostname string, req *api.ClientMessage) (*api.JoinResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := open(ctx)
	if err != nil {
		return nil, err
	}
	node, err := dhkey.NewLocal(priv)
	if err != nil {
		return nil, err
	}
	if err := Authenticate(stream, node, method, &api.Hello{Hostname: hostname}, nil); err != nil {
		return nil, err
	}
	if err := stream.Send(req); err != nil {
		return nil, err
	}
	msg, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	resp := msg.GetJoined()
	if resp == nil {
		return nil, status.Errorf(codes.Internal, "coordinator answered the %s with no JoinResponse", method)
	}
	return resp, nil
}

// Authenticate opens a Join, Update or Connect stream (method
// api.AuthJoin, api.AuthUpdate or api.AuthConnect): it sends hello (public key and protocol version
// filled in) and answers the coordinator's challenge with the node key,
// bound to the stream's TLS session. refuse reports keys a challenge must
// not use (known node and relay keys); nil: only the node's own.
func Authenticate(stream api.Control_ConnectClient, node *dhkey.Local, method string, hello *api.Hello, refuse func(key.Public) bool) error {
	pub := node.Public()
	hello.PublicKey, hello.ProtocolVersion = pub[:], api.ProtocolVersion_PROTOCOL_VERSION_1
	if err := stream.Send(&api.ClientMessage{Msg: &api.ClientMessage_Hello{Hello: hello}}); err != nil {
		return err
	}
	msg, err := stream.Recv()
	if err != nil {
		return err
	}
	ch := msg.GetChallenge()
	if ch == nil {
		return errors.New("coordinator sent no challenge")
	}
	var bind []byte
	if p, ok := peer.FromContext(stream.Context()); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if bind, err = api.Binding(&ti.State); err != nil {
				return err
			}
		}
	}
	proof, err := api.ProveWith(node, ch, method, bind, refuse)
	if err != nil {
		return fmt.Errorf("coordinator's challenge: %w", err)
	}
	return stream.Send(&api.ClientMessage{Msg: &api.ClientMessage_Proof{Proof: proof}})
}

// describe turns a gRPC error into the server's message.
func describe(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}

// Config configures a Client.
type Config struct {
	Enrolment  identity.Enrolment
	PrivateKey key.Private
	Hostname   string
	// Version is the agent's version (buildinfo), sent in every Hello so
	// the coordinator can show it in the map and in `nodes list`.
	Version string
	Logger  *slog.Logger
	// OnMap is called, from the client's goroutine, with every map
	// message. It returns an error to ask for a full map (a version gap).
	OnMap func(*api.NetworkMap) error
	// OnSignal is called, from the client's goroutine, with every sealed
	// signal another node sent. It must not block.
	OnSignal func(*api.Signal)
	// OnTicket is called with every relay ticket the coordinator sends.
	OnTicket func(*api.RelayTicket)
	// OnConnected, if set, is called each time a stream is up (its first
	// map applied): after an outage, what waited for the coordinator can
	// go on.
	OnConnected func()
	// KnownKey reports node and relay keys from the network map: a
	// challenge using one is refused (a genuine one uses a fresh key).
	KnownKey func(key.Public) bool
	// KubernetesToken returns the agent's current service account token
	// (read afresh: the kubelet rotates it) or "" for none.
	KubernetesToken func() string
	// HeldMap returns what the agent can say of the map it holds: the
	// coordinator's digest of it and its own bucket sums
	// (mapstate.State.Digest and Buckets), sent when a stream opens so a
	// coordinator with the same map, or nearly, need not send it whole;
	// nil: never sent.
	HeldMap func() (digest, buckets []byte)
	// MinBackoff and MaxBackoff bound the reconnect delay.
	MinBackoff, MaxBackoff time.Duration
	// Dial connects to the coordinator (nil: a plain TCP dial).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Clock times the reconnect backoff (nil: clock.Real). gRPC's
	// keepalives stay on real time.
	Clock clock.Clock
}

// healthySession: a stream that lasted longer than this was healthy, so
// the next reconnect starts again from MinBackoff.
const healthySession = 30 * time.Second

// failoverWindow: after an established stream ends, reconnects stay at
// MinBackoff this long before backing off: a standby replica takes over
// within its lease (6 s by default) and a restarted coordinator is back
// in seconds, and an agent that had doubled its way to 8 s by then would
// come back seconds after it could have. A stream that keeps ending opens
// one window per healthySession at most.
const failoverWindow = 10 * time.Second

// Client keeps the stream to the coordinator.
type Client struct {
	cfg   Config
	node  *dhkey.Local // cfg.PrivateKey, prepared for the key proof
	log   *slog.Logger
	clock clock.Clock
	tls   *tls.Config
	kick  chan struct{}    // endpoints changed; capacity 1
	sigs  chan *api.Signal // outgoing signals while connected
	// paths holds the latest path report not sent yet; capacity 1 (a
	// newer report replaces it).
	paths chan *api.PathReport

	mu        sync.Mutex // guards endpoints, connected
	endpoints []netip.AddrPort
	connected bool
}

// New validates cfg and returns a client; Run starts it.
func New(cfg Config) (*Client, error) {
	if cfg.OnMap == nil {
		return nil, errors.New("control: OnMap is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = 30 * time.Second
	}
	tc, err := jointoken.ClientConfig([]byte(cfg.Enrolment.CAPEM), cfg.Enrolment.ServerName)
	if err != nil {
		return nil, fmt.Errorf("control: enrolment CA: %w", err)
	}
	node, err := dhkey.NewLocal(cfg.PrivateKey) // prepared once: every session proves the key
	if err != nil {
		return nil, fmt.Errorf("control: node key: %w", err)
	}
	return &Client{cfg: cfg, node: node, log: cfg.Logger, clock: clock.Or(cfg.Clock), tls: tc, kick: make(chan struct{}, 1), sigs: make(chan *api.Signal, signalQueue), paths: make(chan *api.PathReport, 1)}, nil
}

// SetEndpoints sets the endpoints reported to the coordinator.
func (c *Client) SetEndpoints(eps []netip.AddrPort) {
	c.mu.Lock()
	same := slices.Equal(c.endpoints, eps)
	c.endpoints = slices.Clone(eps)
	c.mu.Unlock()
	if !same {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// SendPathReport queues the node's path report for the coordinator,
// replacing one not sent yet. It never blocks; it returns false when no
// stream is up (the caller reports again when one is: OnConnected).
func (c *Client) SendPathReport(r *api.PathReport) bool {
	if !c.Connected() {
		return false
	}
	select {
	case <-c.paths: // an older one, not sent: drop it
	default:
	}
	select {
	case c.paths <- r:
		return true
	default: // another report got in first (one reporter: never)
		return false
	}
}

// signalQueue bounds signals waiting for the stream.
const signalQueue = 256

// SendSignal queues a sealed signal for the coordinator to forward. It
// never blocks; it returns false when no stream is up or the queue is full.
func (c *Client) SendSignal(s *api.Signal) bool {
	if !c.Connected() {
		return false
	}
	select {
	case c.sigs <- s:
		return true
	default:
		return false
	}
}

// Connected reports whether a stream is up and authenticated.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.connected = v
	c.mu.Unlock()
}

func (c *Client) endpointStrings() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.endpoints))
	for i, e := range c.endpoints {
		out[i] = e.String()
	}
	return out
}

// Window is the HTTP/2 flow-control window of the stream connection,
// per stream and per connection. A stream's first message is the full
// map, about 130 bytes a node (1.3 MB at 10,000): with gRPC's 64 KiB
// default the receiver sends a window update for about every 16 KiB
// frame, which costs the coordinator a frame to read and a wait for it
// (a round trip on a WAN) and the agent a write, per frame. With 1 MiB
// it is one per 256 KiB. Only data in flight uses it; the agent reads
// its stream at once.
const Window = 1 << 20

// Run keeps a stream up until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(c.tls)),
		grpc.WithInitialWindowSize(Window), grpc.WithInitialConnWindowSize(Window),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 15 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// gRPC keeps a reconnect backoff of its own (up to 120 s by
		// default) and fails RPCs with the cached error meanwhile: a
		// second backoff hidden under ours. Cap it at ours, and reset it
		// before every attempt (below), so each attempt really dials.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: c.cfg.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: c.cfg.MaxBackoff},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if c.cfg.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(c.cfg.Dial))
	}
	target, topts, err := Target(c.cfg.Enrolment.Coordinator)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	conn, err := grpc.NewClient(target, append(opts, topts...)...)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	defer conn.Close()
	cl := api.NewControlClient(conn)
	bo := backoffPolicy{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff, cur: c.cfg.MinBackoff}
	for {
		start := c.clock.Now()
		conn.ResetConnectBackoff()
		err := c.session(ctx, cl)
		established := c.Connected()
		c.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		bo.ended(start, c.clock.Now(), established)
		backoff := bo.cur
		lvl := slog.LevelWarn
		if code := status.Code(err); code == codes.NotFound || code == codes.PermissionDenied || code == codes.Unauthenticated {
			lvl = slog.LevelError
		}
		// Jitter in [backoff/2, backoff): reconnect storms after a
		// coordinator restart spread out instead of arriving in lockstep.
		wait := backoff/2 + rand.N(backoff-backoff/2)
		c.log.Log(ctx, lvl, "coordinator stream ended; reconnecting", "err", describe(err), "in", wait.Round(time.Millisecond))
		t := c.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		bo.waited(c.clock.Now())
	}
}

// backoffPolicy is the reconnect backoff: doubling from min to max,
// starting over after a healthy session, and held at min through the
// failover window after an established stream ends.
type backoffPolicy struct {
	min, max, cur time.Duration
	window        time.Time // when the last failover window opened
}

// ended notes a session from start to now; established: it got a map.
func (b *backoffPolicy) ended(start, now time.Time, established bool) {
	if now.Sub(start) > healthySession {
		b.cur = b.min // the session was healthy; start over
	}
	if established && (b.window.IsZero() || now.Sub(b.window) > healthySession) {
		b.cur = b.min
		b.window = now
	}
}

// waited notes that a wait under cur ended at now.
func (b *backoffPolicy) waited(now time.Time) {
	if b.window.IsZero() || now.Sub(b.window) >= failoverWindow {
		b.cur = min(b.cur*2, b.max)
	}
}

func (c *Client) session(ctx context.Context, cl api.ControlClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cl.Connect(ctx)
	if err != nil {
		return err
	}
	hello := &api.Hello{Endpoints: c.endpointStrings(), Hostname: c.cfg.Hostname, Version: c.cfg.Version}
	if c.cfg.KubernetesToken != nil {
		hello.KubernetesToken = c.cfg.KubernetesToken()
	}
	if c.cfg.HeldMap != nil {
		hello.MapDigest, hello.MapBuckets = c.cfg.HeldMap()
	}
	if err := Authenticate(stream, c.node, api.AuthConnect, hello, c.cfg.KnownKey); err != nil {
		return err
	}

	// Sends happen only on this goroutine's helper below; the receive
	// loop asks it for a full map through resync.
	resync := make(chan struct{}, 1)
	sendErr := make(chan error, 1)
	go func() {
		sent := c.endpointStrings()
		for {
			var msg *api.ClientMessage
			select {
			case <-ctx.Done():
				return
			case <-resync:
				msg = &api.ClientMessage{Msg: &api.ClientMessage_MapRequest{MapRequest: &api.MapRequest{}}}
			case sig := <-c.sigs:
				msg = &api.ClientMessage{Msg: &api.ClientMessage_Signal{Signal: sig}}
			case r := <-c.paths:
				msg = &api.ClientMessage{Msg: &api.ClientMessage_Paths{Paths: r}}
			case <-c.kick:
				eps := c.endpointStrings()
				if slices.Equal(eps, sent) {
					continue
				}
				sent = eps
				msg = &api.ClientMessage{Msg: &api.ClientMessage_Endpoints{Endpoints: &api.EndpointUpdate{Endpoints: eps}}}
			}
			if err := stream.Send(msg); err != nil {
				sendErr <- err
				return
			}
		}
	}()
	first := true
	for {
		msg, err := stream.Recv()
		if err != nil {
			select {
			case e := <-sendErr:
				return e
			default:
			}
			return err
		}
		if t := msg.GetRelayTicket(); t != nil {
			if c.cfg.OnTicket != nil {
				c.cfg.OnTicket(t)
			}
			continue
		}
		if sig := msg.GetSignal(); sig != nil {
			if c.cfg.OnSignal != nil {
				c.cfg.OnSignal(sig)
			}
			continue
		}
		m := msg.GetMap()
		if m == nil {
			continue
		}
		if first {
			c.setConnected(true)
			c.log.Info("connected to coordinator", "addr", c.cfg.Enrolment.Coordinator, "version", m.GetVersion())
			first = false
			if c.cfg.OnConnected != nil {
				c.cfg.OnConnected()
			}
		}
		if err := c.cfg.OnMap(m); err != nil {
			c.log.Warn("network map not applied; asking for a full map", "err", err)
			select {
			case resync <- struct{}{}:
			default:
			}
		}
	}
}
