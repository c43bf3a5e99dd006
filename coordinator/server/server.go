// Package server implements the coordinator's gRPC services: Control
// (join, authenticated agent streams carrying the network map) and Admin
// (tokens and nodes). Durable state lives in a store.Store; the live view
// and its fan-out live in a netmap.Registry.
package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/nacl/box"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/coordinator/api"
	"github.com/edgewire/edgewire/coordinator/ipam"
	"github.com/edgewire/edgewire/coordinator/netmap"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/token"
	"github.com/edgewire/edgewire/dataplane/relay"
)

// Config configures a Server.
type Config struct {
	Store    store.Store
	Prefixes []netip.Prefix // overlay prefixes, at most one per address family
	CAPin    [32]byte       // pin embedded in the join tokens this server creates
	Logger   *slog.Logger
	Now      func() time.Time // clock; nil means time.Now
	// AuthTimeout bounds the Hello/AuthProof exchange on a new stream.
	AuthTimeout time.Duration
	// MaxEndpoints bounds how many endpoints a node may report.
	MaxEndpoints int
	// STUN lists the STUN servers advertised to agents.
	STUN []*api.StunServer
	// Relays is the relay map advertised to agents.
	Relays []*api.RelayRegion
	// TicketKey signs relay tickets; nil: no tickets (no relays).
	TicketKey ed25519.PrivateKey
	// TicketTTL is how long a relay ticket is valid; it is renewed at half.
	TicketTTL time.Duration
	// MapInterval is the least time between two publications of the
	// network map (default 250 ms), plus MapIntervalPerStream for every
	// open stream (default 100 µs: 1.25 s at 10,000 streams). Changes in
	// between coalesce into one delta, and all streams move in step so
	// they share its bytes.
	MapInterval          time.Duration
	MapIntervalPerStream time.Duration
	// OnDelete is called after a node is deleted (revocation at relays).
	OnDelete func(key store.NodeKey, until time.Time)
}

const (
	defaultAuthTimeout  = 10 * time.Second
	defaultMaxEndpoints = 16
	defaultTicketTTL    = 10 * time.Minute
	maxRoutes           = 64
)

// Server implements api.ControlServer and api.AdminServer.
type Server struct {
	api.UnimplementedControlServer
	api.UnimplementedAdminServer

	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	reg     *netmap.Registry
	pools   []*ipam.Allocator
	signals *signalRouter
	m       *metrics

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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = defaultAuthTimeout
	}
	if cfg.MaxEndpoints <= 0 {
		cfg.MaxEndpoints = defaultMaxEndpoints
	}
	if cfg.TicketTTL <= 0 {
		cfg.TicketTTL = defaultTicketTTL
	}
	if cfg.MapInterval == 0 {
		cfg.MapInterval = 250 * time.Millisecond
	}
	if cfg.MapIntervalPerStream == 0 {
		cfg.MapIntervalPerStream = 100 * time.Microsecond
	}
	s := &Server{cfg: cfg, log: cfg.Logger, now: cfg.Now, signals: newSignalRouter(), m: newMetrics()}
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
	for _, n := range nodes {
		for _, a := range n.Addresses {
			pool := s.pool(a)
			if pool == nil {
				// The prefix changed since the node joined; keep the node,
				// it keeps its address, but warn: routes may not cover it.
				s.log.Warn("node address outside every overlay prefix", "node", n.Name, "addr", a)
				continue
			}
			if err := pool.Reserve(a); err != nil {
				return nil, fmt.Errorf("node %s address %s: %w", n.Name, a, err)
			}
		}
	}
	s.reg = netmap.New(cfg.Prefixes)
	s.reg.SetInterval(cfg.MapInterval, cfg.MapIntervalPerStream)
	s.reg.SetSTUN(cfg.STUN)
	s.reg.SetRelays(cfg.Relays)
	s.reg.Load(nodes)
	return s, nil
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

func parseKey(b []byte) (store.NodeKey, error) {
	var k store.NodeKey
	if len(b) != len(k) {
		return k, fmt.Errorf("public key is %d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	if k == (store.NodeKey{}) {
		return k, errors.New("public key is all zeros")
	}
	return k, nil
}

func (s *Server) parseRoutes(in []string) ([]netip.Prefix, error) {
	if len(in) > maxRoutes {
		return nil, fmt.Errorf("%d routes advertised, at most %d allowed", len(in), maxRoutes)
	}
	var out []netip.Prefix
	for _, r := range in {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("route %s has host bits set (did you mean %s?)", p, p.Masked())
		}
		for _, pool := range s.pools {
			if pool.Prefix().Overlaps(p) {
				return nil, fmt.Errorf("route %s overlaps the overlay prefix %s", p, pool.Prefix())
			}
		}
		for _, q := range out {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("routes %s and %s overlap", q, p)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// Join registers a node with a join token. A rejected join changes nothing.
func (s *Server) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	tok, err := token.Parse(req.GetToken())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	key, err := parseKey(req.GetPublicKey())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	name := req.GetName()
	if name == "" {
		name = req.GetHostname()
	}
	if err := ValidName(name); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	routes, err := s.parseRoutes(req.GetRoutes())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	if len(routes) > 0 {
		s.regMu.Lock()
		defer s.regMu.Unlock()
	} else {
		s.regMu.RLock()
		defer s.regMu.RUnlock()
	}
	km := &s.keyMu[int(key[0])%len(s.keyMu)]
	km.Lock()
	defer km.Unlock()
	now := s.now()
	var (
		node  store.Node
		fresh []netip.Addr // allocated by this call, released if it fails
	)
	err = s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		st, err := tx.Token(tok.ID)
		if errors.Is(err, store.ErrNotFound) {
			return status.Error(codes.PermissionDenied, "unknown join token")
		}
		if err != nil {
			return err
		}
		if err := token.Check(st, tok.Secret, now); err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
		// Only a token holder learns whether its routes clash.
		if err := s.reg.CheckRoutes(name, routes); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if other, err := tx.NodeByName(name); err == nil && other.Key != key {
			return status.Errorf(codes.AlreadyExists, "node name %q is taken by another node; choose another with --name or delete the old node", name)
		}
		node, err = tx.Node(key)
		switch {
		case errors.Is(err, store.ErrNotFound):
			node = store.Node{Key: key, CreatedAt: now}
			// fn may run again (the store retries batches): allocate
			// once, all families or none.
			if fresh == nil {
				var got []netip.Addr
				for _, pool := range s.pools {
					a, err := pool.Allocate()
					if err != nil {
						for _, a := range got {
							s.pool(a).Release(a)
						}
						return status.Errorf(codes.ResourceExhausted, "allocate overlay address from %s: %v", pool.Prefix(), err)
					}
					got = append(got, a)
				}
				fresh = got
			}
			node.Addresses = slices.Clone(fresh)
		case err != nil:
			return err
		}
		node.Name = name
		node.Hostname = req.GetHostname()
		node.Routes = routes
		node.Tags = st.Tags
		node.TokenID = st.ID
		st.Uses++
		if err := tx.PutToken(st); err != nil {
			return err
		}
		return tx.PutNode(node)
	})
	if err != nil {
		for _, a := range fresh {
			s.pool(a).Release(a)
		}
		if _, ok := status.FromError(err); ok {
			s.m.joinsRefused.Add(1)
			s.log.Info("join refused", "name", name, "err", err)
			return nil, err
		}
		s.log.Error("join failed", "name", name, "err", err)
		return nil, status.Errorf(codes.Internal, "join: %v", err)
	}
	s.reg.Upsert(node)
	s.m.joins.Add(1)
	s.log.Info("node joined", "name", name, "key", node.Key, "addresses", node.Addresses, "token", tok.ID)
	self, _, _ := s.reg.Node(key)
	resp := &api.JoinResponse{Self: &api.Node{PublicKey: key[:], Name: self.Name, Hostname: self.Hostname}}
	for _, a := range self.Addresses {
		resp.Self.Addresses = append(resp.Self.Addresses, a.String())
	}
	for _, p := range s.pools {
		resp.OverlayPrefixes = append(resp.OverlayPrefixes, p.Prefix().String())
	}
	return resp, nil
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
	ctx := stream.Context()
	key, eps, err := s.authenticate(stream)
	if err != nil {
		return err
	}
	log := s.log.With("key", key)
	if err := s.reg.Connected(key, eps, s.now()); err != nil {
		return status.Error(codes.PermissionDenied, "node is not registered (deleted?); join again with a token")
	}
	sub := s.reg.Subscribe(key)
	inbox := s.signals.attach(key)
	s.m.streams.Add(1)
	defer func() {
		s.m.streams.Add(-1)
		s.signals.detach(key, inbox)
		sub.Close()
		now := s.now()
		s.reg.Disconnected(key, now)
		s.saveLastSeen(key, now)
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
				if err := s.reg.SetEndpoints(key, eps); err != nil {
					errc <- status.Error(codes.NotFound, "node deleted")
					return
				}
			case *api.ClientMessage_Signal:
				to, ok := validSignal(m.Signal, key)
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
				if !s.signals.forward(key, to, m.Signal.GetNonce(), m.Signal.GetSealed()) {
					s.m.sigDropped.Add(1)
					log.Debug("signal recipient not connected or busy", "to", to)
					continue
				}
				s.m.sigForwarded.Add(1)
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
	var renew <-chan time.Time
	sendTicket := func() error {
		if s.cfg.TicketKey == nil {
			return nil
		}
		exp := s.now().Add(s.cfg.TicketTTL)
		t := relay.SignTicket(s.cfg.TicketKey, relay.Ticket{Node: key, Expires: exp})
		renew = time.After(s.cfg.TicketTTL / 2)
		return stream.Send(&api.ServerMessage{Msg: &api.ServerMessage_RelayTicket{RelayTicket: &api.RelayTicket{Ticket: t, ExpiresUnix: exp.Unix()}}})
	}
	if err := sendTicket(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-renew:
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
		if !u.Oldest.IsZero() {
			s.m.fanout.Observe(s.now().Sub(u.Oldest).Seconds())
		}
	}
}

func (s *Server) authenticate(stream api.Control_ConnectServer) (store.NodeKey, []netip.AddrPort, error) {
	var key store.NodeKey
	type result struct {
		msg *api.ClientMessage
		err error
	}
	recv := func() (*api.ClientMessage, error) {
		ch := make(chan result, 1)
		go func() {
			m, err := stream.Recv()
			ch <- result{m, err}
		}()
		select {
		case r := <-ch:
			return r.msg, r.err
		case <-time.After(s.cfg.AuthTimeout):
			return nil, status.Error(codes.DeadlineExceeded, "authentication timed out")
		}
	}
	msg, err := recv()
	if err != nil {
		return key, nil, err
	}
	hello := msg.GetHello()
	if hello == nil {
		return key, nil, status.Error(codes.InvalidArgument, "first message must be Hello")
	}
	if hello.GetProtocolVersion() != api.ProtocolVersion_PROTOCOL_VERSION_1 {
		return key, nil, status.Errorf(codes.FailedPrecondition, "unsupported protocol version %d", hello.GetProtocolVersion())
	}
	key, err = parseKey(hello.GetPublicKey())
	if err != nil {
		return key, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	eps, err := s.parseEndpoints(hello.GetEndpoints())
	if err != nil {
		return key, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if _, _, ok := s.reg.Node(key); !ok {
		return key, nil, status.Error(codes.PermissionDenied, "node is not registered (deleted?); join again with a token")
	}
	var challenge [32]byte
	var nonce [24]byte
	if _, err := rand.Read(challenge[:]); err != nil {
		return key, nil, err
	}
	if _, err := rand.Read(nonce[:]); err != nil {
		return key, nil, err
	}
	ephPub, ephPriv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return key, nil, err
	}
	peer := [32]byte(key)
	sealed := box.Seal(nil, challenge[:], &nonce, &peer, ephPriv)
	if err := stream.Send(&api.ServerMessage{Msg: &api.ServerMessage_Challenge{Challenge: &api.Challenge{
		EphemeralPublicKey: ephPub[:], Nonce: nonce[:], Sealed: sealed,
	}}}); err != nil {
		return key, nil, err
	}
	msg, err = recv()
	if err != nil {
		return key, nil, err
	}
	proof := msg.GetProof().GetChallenge()
	if subtle.ConstantTimeCompare(proof, challenge[:]) != 1 {
		return key, nil, status.Error(codes.Unauthenticated, "node key proof failed")
	}
	return key, eps, nil
}

func (s *Server) saveLastSeen(key store.NodeKey, now time.Time) {
	// The stream context is gone by now; this write must not depend on it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		n, err := tx.Node(key)
		if err != nil {
			return err
		}
		n.LastSeen = now
		return tx.PutNode(n)
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("record last seen", "key", key, "err", err)
	}
}
