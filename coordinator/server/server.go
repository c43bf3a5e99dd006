// Package server implements the coordinator's gRPC services: Control
// (join, authenticated agent streams carrying the network map) and Admin
// (tokens and nodes). Durable state lives in a store.Store; the live view
// and its fan-out live in a netmap.Registry.
package server

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"github.com/edgewire/edgewire/coordinator/topology"
	"github.com/edgewire/edgewire/types/topoview"
	"io"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/ipam"
	"github.com/edgewire/edgewire/coordinator/netmap"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/types/key"
)

// Config configures a Server.
type Config struct {
	Store    store.Store
	Prefixes []netip.Prefix // overlay prefixes, at most one per address family
	CAPin    [32]byte       // pin embedded in the join tokens this server creates
	Logger   *slog.Logger
	// Clock tells the time (token and ticket expiry, last seen, the
	// failure limits) and times what waits (the authentication timeout,
	// ticket renewals, the map's publication interval); nil: clock.Real.
	Clock clock.Clock
	// AuthTimeout bounds the Hello/AuthProof exchange on a new stream.
	AuthTimeout time.Duration
	// MaxEndpoints bounds how many endpoints a node may report.
	MaxEndpoints int
	// STUN lists the STUN servers advertised to agents.
	STUN []*api.StunServer
	// Relays is the relay map advertised to agents.
	Relays []*api.RelayRegion
	// RelayStats returns the counters of a relay region the coordinator
	// runs (its embedded relay) for the topology view; nil, or nil for
	// a region: not known here.
	RelayStats func(region uint32) *topoview.RelayStats
	// TicketKey signs relay tickets; nil: no tickets (no relays).
	TicketKey ed25519.PrivateKey
	// TicketTTL is how long a relay ticket is valid; it is renewed at half.
	TicketTTL time.Duration
	// MapInterval is the least time between two publications of the
	// network map (default 250 ms), plus MapIntervalPerStream for every
	// open stream (default 100 µs: 1.25 s at 10,000 streams). Changes in
	// between coalesce into one delta, and all streams move in step so
	// they share its bytes. After a quiet spell up to MapBurst
	// publications (default 4) go out at once, so the few changes of one
	// event (a node joins, connects, reports its endpoints) reach peers
	// as they happen rather than an interval apart; a stream of changes
	// (a fleet joining) still gets one publication per interval.
	// MapInterval < 0 publishes every change at once, whatever the
	// number of streams.
	MapInterval          time.Duration
	MapIntervalPerStream time.Duration
	MapBurst             int
	// OnDelete is called after a node is deleted (revocation at relays).
	OnDelete func(nk key.Public, until time.Time)
	// RoutePolicy is what advertised routes and pod CIDRs must pass
	// (minimum lengths, addresses they must not cover: the coordinator's,
	// the relays', the STUN servers'); special-purpose ranges and the
	// overlay are always refused.
	RoutePolicy routeguard.Policy
	// Kube verifies Kubernetes service account tokens in joins; nil:
	// joins that present one are refused.
	Kube KubeVerifier
	// FailureRate and FailureBurst bound failed joins and authentications
	// per source address and per token ID (defaults 1/s, burst 20;
	// FailureRate < 0: no limit).
	FailureRate  rate.Limit
	FailureBurst int
	// PresenceInterval is how often the fleet's presence is saved, if the
	// store keeps it (store.PresenceKeeper; default 5 s); saves happen
	// when it changed, and at least every 30 s. PresenceGrace is how long
	// nodes the previous coordinator saved as online stay online without
	// connecting (default 30 s); a save older than PresenceMaxAge
	// (default 2 min) is not used.
	PresenceInterval time.Duration
	PresenceGrace    time.Duration
	PresenceMaxAge   time.Duration
}

// KubeVerifier tells which Kubernetes Node a service account token was
// issued for. Implementations are safe for concurrent use.
type KubeVerifier interface {
	// VerifyNode returns the name of the Node the token's pod runs on,
	// or an error if the token is not a valid, pod-bound token of the
	// edgewire agent's service account.
	VerifyNode(ctx context.Context, token string) (string, error)
}

const (
	defaultAuthTimeout  = 10 * time.Second
	defaultMaxEndpoints = 16
	defaultTicketTTL    = 10 * time.Minute
	maxRoutes           = 64
	maxHostname         = 253      // a DNS name
	maxTokenLen         = 256      // a join token is ~100 bytes
	maxKubeToken        = 16 << 10 // a service account JWT
)

// Server implements api.ControlServer and api.AdminServer.
type Server struct {
	api.UnimplementedControlServer
	api.UnimplementedAdminServer

	cfg     Config
	life    context.Context // New's: ends when the server stops
	topo    *topology.Store // agents' path reports (memory only)
	log     *slog.Logger
	clk     clock.Clock
	reg     *netmap.Registry
	pools   []*ipam.Allocator
	signals *signalRouter
	m       *metrics
	fails   *failureLimiter
	policy  routeguard.Policy // cfg.RoutePolicy with the overlay

	revMu     sync.Mutex               // guards revoked, revIssued
	revoked   map[key.Public]time.Time // deleted nodes relays must refuse, until
	revIssued time.Time                // issue time of the last revocation list

	streamsMu sync.Mutex                 // guards streams
	streams   map[key.Public]*nodeStream // the one live stream per node key

	// regMu orders registry-changing operations against each other so
	// the store and the registry change in one order. Joins without routes
	// share it (they run concurrently, so the store can commit a burst of
	// them in one transaction; addresses come from thread-safe pools and
	// the store checks names); joins with routes and deletes hold it
	// alone, since route clashes are checked against the registry.
	regMu sync.RWMutex
	// keyMu serialises joins of one node key (striped by key), so its
	// store commit and registry update cannot be reordered by another.
	keyMu [64]sync.Mutex
}

var (
	_ api.ControlServer = (*Server)(nil)
	_ api.AdminServer   = (*Server)(nil)
)

// New validates cfg, loads the registry from the store and returns a server.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: no store")
	}
	if len(cfg.Prefixes) == 0 {
		return nil, errors.New("server: no overlay prefix")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = defaultAuthTimeout
	}
	if cfg.MaxEndpoints <= 0 {
		cfg.MaxEndpoints = defaultMaxEndpoints
	}
	if cfg.TicketTTL <= 0 {
		cfg.TicketTTL = defaultTicketTTL
	}
	if cfg.MapInterval < 0 {
		cfg.MapInterval, cfg.MapIntervalPerStream = 0, 0 // every change at once
	} else {
		if cfg.MapInterval == 0 {
			cfg.MapInterval = 250 * time.Millisecond
		}
		if cfg.MapIntervalPerStream == 0 {
			cfg.MapIntervalPerStream = 100 * time.Microsecond
		}
		if cfg.MapBurst <= 0 {
			cfg.MapBurst = 4
		}
	}
	if err := cfg.RoutePolicy.Validate(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	switch {
	case cfg.FailureRate == 0:
		cfg.FailureRate = defaultFailureRate
	case cfg.FailureRate < 0:
		cfg.FailureRate = 0
	}
	if cfg.FailureBurst <= 0 {
		cfg.FailureBurst = defaultFailureBurst
	}
	cfg.PresenceInterval = cmp.Or(cfg.PresenceInterval, defaultPresenceInterval)
	cfg.PresenceGrace = cmp.Or(cfg.PresenceGrace, defaultPresenceGrace)
	cfg.PresenceMaxAge = cmp.Or(cfg.PresenceMaxAge, defaultPresenceMaxAge)
	s := &Server{cfg: cfg, life: ctx, log: cfg.Logger, clk: cfg.Clock, signals: newSignalRouter(), m: newMetrics(),
		fails: newFailureLimiter(cfg.FailureRate, cfg.FailureBurst, cfg.Clock), streams: map[key.Public]*nodeStream{}, revoked: map[key.Public]time.Time{}}
	s.policy = cfg.RoutePolicy
	s.policy.Overlay = cfg.Prefixes
	families := map[bool]bool{}
	for _, p := range cfg.Prefixes {
		if families[p.Addr().Is4()] {
			return nil, fmt.Errorf("overlay prefix %s: only one prefix per address family", p)
		}
		families[p.Addr().Is4()] = true
		a, err := ipam.New(p)
		if err != nil {
			return nil, fmt.Errorf("overlay prefix %s: %w", p, err)
		}
		s.pools = append(s.pools, a)
	}
	var nodes []store.Node
	err := cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		nodes, err = tx.Nodes()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load nodes: %w", err)
	}
	loaded := nodes[:0]
	for _, n := range nodes {
		if s.reserveAll(n) {
			loaded = append(loaded, n)
		}
	}
	nodes = loaded
	for i, n := range nodes {
		// Routes approved before routes needed approval, or before this
		// policy, are checked again: one that the policy refuses now is
		// not routed (it stays advertised, for an admin to see).
		var keep []netip.Prefix
		for _, r := range n.Routes {
			if err := s.policy.Check(r); err != nil {
				s.log.Warn("not routing a stored route the route policy refuses", "node", n.Name, "err", err)
				if !slices.Contains(n.AdvertisedRoutes, r) {
					nodes[i].AdvertisedRoutes = append(nodes[i].AdvertisedRoutes, r)
				}
				continue
			}
			keep = append(keep, r)
		}
		nodes[i].Routes = keep
	}
	s.reg = netmap.New(cfg.Prefixes)
	s.topo = topology.New()
	s.reg.SetClock(cfg.Clock)
	s.reg.SetInterval(cfg.MapInterval, cfg.MapIntervalPerStream, cfg.MapBurst)
	s.reg.SetSTUN(cfg.STUN)
	s.reg.SetRelays(cfg.Relays)
	s.reg.SetRoutePolicy(cfg.RoutePolicy)
	s.reg.Load(nodes)
	s.carryPresence(ctx)
	return s, nil
}

// storeError is the status of a failed store operation: Unavailable,
// saying so, when the backend cannot be reached (a replica that lost the
// Kubernetes API server serves its streams but refuses changes), Internal
// otherwise.
func storeError(what string, err error) error {
	if errors.Is(err, store.ErrUnavailable) {
		return status.Errorf(codes.Unavailable, "%s: the coordinator cannot reach its store, so it refuses changes for now (established nodes are unaffected); try again later: %v", what, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

// reserveAll reserves a stored node's addresses in the pools. A node
// with an address another stored node holds (a store edited by hand) is
// reported and not loaded: two nodes must never share an address, and
// the first by name keeps it.
func (s *Server) reserveAll(n store.Node) bool {
	var got []netip.Addr
	for _, a := range n.Addresses {
		pool := s.pool(a)
		if pool == nil {
			// The prefix changed since the node joined; keep the node,
			// it keeps its address, but warn: routes may not cover it.
			s.log.Warn("node address outside every overlay prefix", "node", n.Name, "addr", a)
			continue
		}
		if err := pool.Reserve(a); err != nil {
			s.log.Error("stored node not loaded: its overlay address is another node's; delete one of them", "node", n.Name, "key", n.Key, "addr", a, "err", err)
			s.m.storeRejects.Add(1)
			for _, a := range got {
				s.pool(a).Release(a)
			}
			return false
		}
		got = append(got, a)
	}
	return true
}

// Registry exposes the live view (for tests and metrics).
func (s *Server) Registry() *netmap.Registry { return s.reg }

// Register adds the Control and Admin services to gs, which must have been
// created with grpc.ForceServerCodecV2(Codec()).
func (s *Server) Register(gs *grpc.Server) {
	api.RegisterControlServer(gs, s)
	api.RegisterAdminServer(gs, s)
}

func (s *Server) pool(a netip.Addr) *ipam.Allocator {
	for _, p := range s.pools {
		if p.Prefix().Contains(a) {
			return p
		}
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether name is usable as a node name: a lower-case
// DNS label, since nodes are reachable as <name>.<mesh-domain>.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid node name %q: want a lower-case DNS label (a-z, 0-9, '-', at most 63 characters, no leading or trailing '-')", name)
	}
	return nil
}

func parseKey(b []byte) (key.Public, error) {
	var k key.Public
	if len(b) != len(k) {
		return k, fmt.Errorf("public key is %d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	// A key of small order (all zeros among them) needs no private key
	// to answer a challenge: whoever sends one proves nothing.
	if err := dhkey.CheckPublic(k); err != nil {
		return k, fmt.Errorf("public key is not usable: %w", err)
	}
	return k, nil
}

func (s *Server) parseEndpoints(in []string) ([]netip.AddrPort, error) {
	if len(in) > s.cfg.MaxEndpoints {
		return nil, fmt.Errorf("%d endpoints reported, at most %d allowed", len(in), s.cfg.MaxEndpoints)
	}
	out := make([]netip.AddrPort, 0, len(in))
	for _, e := range in {
		ap, err := netip.ParseAddrPort(e)
		if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
			return nil, fmt.Errorf("bad endpoint %q", e)
		}
		out = append(out, ap)
	}
	return out, nil
}

// Connect serves one agent stream: key-possession handshake, then the
// network map, until the agent goes away or its node is deleted.
func (s *Server) Connect(stream api.Control_ConnectServer) error {
	nk, hello, err := s.authenticate(stream, api.AuthConnect)
	if err != nil {
		return err
	}
	eps, err := s.parseEndpoints(hello.GetEndpoints())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	// One stream per node key: a new one replaces the old (an agent that
	// reconnects before the coordinator noticed its old connection die),
	// so nobody holding a key can multiply its streams.
	ctx, done := s.claimStream(stream.Context(), nk)
	defer done()
	log := s.log.With("key", nk)
	ver := hello.GetVersion()
	if !api.ValidVersion(ver) {
		// Only shown to people: not worth refusing the node for. It is
		// recorded as none, and the log says why.
		log.Warn("dropping the agent version the node reported: want printable ASCII without spaces, not too long",
			"version", quotePrefix(ver, 2*api.MaxVersionLen), "max_len", api.MaxVersionLen)
		ver = ""
	}
	if err := s.reg.Connected(nk, eps, ver, s.clk.Now()); err != nil {
		return status.Error(codes.PermissionDenied, "node is not registered (deleted?); join again with a token")
	}
	if n, _, ok := s.reg.Node(nk); ok {
		log = log.With("name", n.Name) // as "node joined" names it
	}
	if tok := hello.GetKubernetesToken(); tok != "" {
		s.bindKubeNode(ctx, nk, tok)
	}
	var held *netmap.Held
	if d, b := hello.GetMapDigest(), hello.GetMapBuckets(); len(d) == netmap.DigestSize || len(b) > 0 {
		held = &netmap.Held{Buckets: b}
		if len(d) == netmap.DigestSize {
			held.Digest = d
		}
	}
	sub := s.reg.Subscribe(nk, held)
	inbox := s.signals.attach(nk)
	s.m.streams.Add(1)
	defer func() {
		s.m.streams.Add(-1)
		s.signals.detach(nk, inbox)
		sub.Close()
		if s.life.Err() != nil {
			// The coordinator is stopping, not the node: presence stays
			// as it is for the last save (KeepPresence), which the next
			// coordinator starts from, and a fleet's worth of last-seen
			// writes is spared.
			return
		}
		now := s.clk.Now()
		s.reg.Disconnected(nk, now)
		s.saveLastSeen(nk, now)
	}()
	log.Debug("stream authenticated", "endpoints", eps)

	// The receive side runs in its own goroutine; it reports through
	// resync and errc and ends when the stream does.
	resync := make(chan struct{}, 1)
	errc := make(chan error, 1)
	limiter := newSignalLimiter()
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			switch m := msg.Msg.(type) {
			case *api.ClientMessage_Endpoints:
				eps, err := s.parseEndpoints(m.Endpoints.GetEndpoints())
				if err != nil {
					errc <- status.Error(codes.InvalidArgument, err.Error())
					return
				}
				if err := s.reg.SetEndpoints(nk, eps); err != nil {
					errc <- status.Error(codes.NotFound, "node deleted")
					return
				}
			case *api.ClientMessage_Signal:
				to, ok := validSignal(m.Signal, nk)
				if !ok {
					s.m.sigDropped.Add(1)
					log.Debug("dropping malformed signal")
					continue
				}
				if !limiter.Allow() {
					s.m.sigDropped.Add(1)
					log.Debug("dropping signal over rate limit")
					continue
				}
				if !s.signals.forward(nk, to, m.Signal.GetNonce(), m.Signal.GetSealed()) {
					if _, _, known := s.reg.Node(to); known && s.signals.hold(nk, to, m.Signal.GetNonce(), m.Signal.GetSealed()) {
						s.m.sigHeld.Add(1)
						log.Debug("signal held for a recipient not connected yet", "to", to)
						continue
					}
					s.m.sigDropped.Add(1)
					log.Debug("signal recipient not connected or busy", "to", to)
					continue
				}
				s.m.sigForwarded.Add(1)
			case *api.ClientMessage_Paths:
				if err := s.pathReport(nk, m.Paths); err != nil {
					log.Debug("dropping path report", "err", err)
				}
			case *api.ClientMessage_MapRequest:
				select {
				case resync <- struct{}{}:
				default:
				}
			default:
				log.Debug("ignoring unexpected client message", "type", fmt.Sprintf("%T", m))
			}
		}
	}()

	// Relay tickets: one now, renewed at half their lifetime.
	var renew clock.Timer
	var renewC <-chan time.Time // nil without tickets: never ready
	if s.cfg.TicketKey != nil {
		renew = s.clk.NewTimer(s.cfg.TicketTTL / 2)
		defer renew.Stop()
		renewC = renew.C()
	}
	sendTicket := func() error {
		if s.cfg.TicketKey == nil {
			return nil
		}
		exp := s.clk.Now().Add(s.cfg.TicketTTL)
		t := relay.SignTicket(s.cfg.TicketKey, relay.Ticket{Node: nk, Expires: exp})
		return stream.Send(&api.ServerMessage{Msg: &api.ServerMessage_RelayTicket{RelayTicket: &api.RelayTicket{Ticket: t, ExpiresUnix: exp.Unix()}}})
	}
	if err := sendTicket(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), errReplaced) {
				log.Debug("stream replaced by a newer one of the same node")
				return status.Error(codes.Aborted, errReplaced.Error())
			}
			return ctx.Err()
		case <-renewC:
			renew.Reset(s.cfg.TicketTTL / 2)
			if err := sendTicket(); err != nil {
				return err
			}
			continue
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-resync:
			sub.Resync()
		case <-sub.C():
			// The registry publishes at most once per MapInterval, so
			// under a burst (a thousand joins) each stream sends a few
			// large deltas instead of one per change.
		case sig := <-inbox:
			if err := stream.Send(&api.ServerMessage{Msg: &api.ServerMessage_Signal{Signal: sig}}); err != nil {
				return err
			}
			continue
		}
		u, err := sub.Next()
		if errors.Is(err, netmap.ErrUnknownNode) {
			log.Info("closing stream of deleted node")
			return status.Error(codes.NotFound, "node was deleted; join again with a token")
		}
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if u == nil {
			continue
		}
		if err := stream.SendMsg(newEncodedMap(u)); err != nil {
			return err
		}
		switch {
		case u.Current:
			s.m.currentMaps.Add(1)
		case u.Patch:
			s.m.patchMaps.Add(1)
		case u.Full:
			s.m.fullMaps.Add(1)
		}
		if !u.Oldest.IsZero() {
			s.m.fanout.Observe(s.clk.Now().Sub(u.Oldest).Seconds())
		}
	}
}

// authenticate runs the key proof that opens Join and Connect streams:
// Hello, Challenge, AuthProof (see edgewire.proto). It returns the proven
// key and the Hello. For Connect the key must be registered. A failure is
// charged to the caller's address.
func (s *Server) authenticate(stream api.Control_ConnectServer, method string) (key.Public, *api.Hello, error) {
	ctx := stream.Context()
	src := source(ctx)
	if !s.fails.allow(src) {
		return key.Public{}, nil, status.Error(codes.ResourceExhausted, "too many failed attempts from this address; wait and retry")
	}
	nk, hello, err := s.prove(stream, method)
	if err != nil && status.Code(err) != codes.Canceled && status.Code(err) != codes.Unavailable {
		s.fails.fail(src)
	}
	return nk, hello, err
}

func (s *Server) prove(stream api.Control_ConnectServer, method string) (key.Public, *api.Hello, error) {
	var nk key.Public
	msg, err := s.recv(stream)
	if err != nil {
		return nk, nil, err
	}
	hello := msg.GetHello()
	if nk, err = s.checkHello(hello, method); err != nil {
		return nk, nil, err
	}
	bind, err := binding(stream.Context())
	if err != nil {
		return nk, nil, status.Error(codes.Internal, err.Error())
	}
	ch, ephPriv, err := api.NewChallenge()
	if err != nil {
		return nk, nil, status.Error(codes.Internal, err.Error())
	}
	if err := stream.Send(&api.ServerMessage{Msg: &api.ServerMessage_Challenge{Challenge: ch}}); err != nil {
		return nk, nil, err
	}
	msg, err = s.recv(stream)
	if err != nil {
		return nk, nil, err
	}
	if !api.CheckProof(ephPriv, nk, ch, method, bind, msg.GetProof()) {
		return nk, nil, status.Error(codes.Unauthenticated, "node key proof failed")
	}
	return nk, hello, nil
}

// quotePrefix quotes at most n bytes of s, for logging what a peer sent.
func quotePrefix(s string, n int) string {
	if len(s) > n {
		return strconv.Quote(s[:n]) + "..."
	}
	return strconv.Quote(s)
}

// checkHello checks a stream's first message before any challenge is
// made for it: form, bounds, and for Connect that the key is registered.
func (s *Server) checkHello(hello *api.Hello, method string) (key.Public, error) {
	if hello == nil {
		return key.Public{}, status.Error(codes.InvalidArgument, "first message must be Hello")
	}
	if hello.GetProtocolVersion() != api.ProtocolVersion_PROTOCOL_VERSION_1 {
		return key.Public{}, status.Errorf(codes.FailedPrecondition, "unsupported protocol version %d", hello.GetProtocolVersion())
	}
	nk, err := parseKey(hello.GetPublicKey())
	if err != nil {
		return nk, status.Error(codes.InvalidArgument, err.Error())
	}
	if len(hello.GetHostname()) > maxHostname || len(hello.GetKubernetesToken()) > maxKubeToken {
		return nk, status.Error(codes.InvalidArgument, "hello: hostname or Kubernetes token too long")
	}
	if method == api.AuthConnect {
		if _, err := s.parseEndpoints(hello.GetEndpoints()); err != nil {
			return nk, status.Error(codes.InvalidArgument, err.Error())
		}
		if _, _, ok := s.reg.Node(nk); !ok {
			return nk, status.Error(codes.PermissionDenied, "node is not registered (deleted?); join again with a token")
		}
	}
	return nk, nil
}

// recv receives one message within the authentication timeout.
func (s *Server) recv(stream api.Control_ConnectServer) (*api.ClientMessage, error) {
	type result struct {
		msg *api.ClientMessage
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	t := s.clk.NewTimer(s.cfg.AuthTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.msg, r.err
	case <-t.C():
		return nil, status.Error(codes.DeadlineExceeded, "authentication timed out")
	}
}

// errReplaced ends a stream that a newer one of the same node replaced.
var errReplaced = errors.New("replaced by a newer stream of the same node")

// nodeStream is a live stream in Server.streams.
type nodeStream struct {
	cancel context.CancelCauseFunc
}

// claimStream makes the calling stream its node's only one: an older
// stream of key is cancelled with errReplaced. The returned context ends
// with the stream or when a newer one replaces it; call done when the
// stream ends.
func (s *Server) claimStream(parent context.Context, nk key.Public) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	me := &nodeStream{cancel: cancel}
	s.streamsMu.Lock()
	old := s.streams[nk]
	s.streams[nk] = me
	s.streamsMu.Unlock()
	if old != nil {
		old.cancel(errReplaced)
	}
	return ctx, func() {
		s.streamsMu.Lock()
		if s.streams[nk] == me {
			delete(s.streams, nk)
		}
		s.streamsMu.Unlock()
		cancel(nil)
	}
}

func (s *Server) saveLastSeen(nk key.Public, now time.Time) {
	// The stream context is gone by now; this write must not depend on it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		n, err := tx.Node(nk)
		if err != nil {
			return err
		}
		n.LastSeen = now
		return tx.PutNode(n)
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("record last seen", "key", nk, "err", err)
	}
}
